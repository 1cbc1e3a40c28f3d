"""`download-file`: fetch a URL (presigned S3 URLs included) to a path on the device.

One implementation serves two doors: the Python plugin (`{"operation": "download-file",
"url", "path", "sha256"?, "maxBytes"?}`) and the `download-file.sh` script that the
AWS-Download-File managed template calls (`python -m handlers.download_file URL PATH [SHA256]`).

It resumes: bytes already fetched are kept in `PATH.part` and the rest is asked for with a
Range request, after a dropped connection (retried with backoff) or after an agent restart (the
plugin is resumable). The file appears at PATH only complete and, when a sha256 is given,
verified: it is written to the side and renamed into place. TLS certificates are verified.
Presigned URLs carry credentials, so a URL is only ever shown without its query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jobs_agent_handlers.api import JobContext, JobFailed, JobRejected

DEFAULT_MAX_BYTES = 4 * 1024**3
CHUNK = 256 * 1024
ATTEMPTS = 6
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
READ_TIMEOUT = 60.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

Progress = Callable[[float | None, str], None]


def display_url(url: str) -> str:
    """The URL without query and fragment: presigned credentials never reach a log."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    path: Path
    sha256: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_values(
        cls, url: Any, path: Any, sha256: Any = None, max_bytes: Any = None
    ) -> DownloadRequest:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise JobRejected(f"url: expected an http:// or https:// URL, got {url!r:.80}")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise JobRejected(f"path: expected an absolute file path, got {path!r}")
        if sha256 in (None, ""):
            sha256 = None
        elif not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise JobRejected("sha256: expected 64 hexadecimal digits")
        limit = DEFAULT_MAX_BYTES
        if max_bytes is not None:
            if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
                raise JobRejected(f"maxBytes: expected a positive integer, got {max_bytes!r}")
            limit = max_bytes
        return cls(url, Path(path), sha256.lower() if sha256 else None, limit)

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")


class _Retry(Exception):
    pass


def _open(url: str, offset: int, context: ssl.SSLContext) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "jobs-agent"})  # noqa: S310
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    response: http.client.HTTPResponse = urllib.request.urlopen(  # noqa: S310 - http(s) only
        request, timeout=READ_TIMEOUT, context=context
    )
    return response


def download(
    request: DownloadRequest,
    *,
    progress: Progress,
    stop: threading.Event,
    context: ssl.SSLContext | None = None,
) -> int:
    """Blocking download with resume and retries; returns the size. Raises JobFailed."""
    context = context or ssl.create_default_context()
    shown = display_url(request.url)
    if not request.path.parent.is_dir():
        raise JobFailed(f"directory {request.path.parent} does not exist")
    delay = BACKOFF_FIRST
    last_error = ""
    for attempt in range(1, ATTEMPTS + 1):
        if stop.is_set():
            raise JobFailed("cancelled")
        try:
            total = _attempt(request, progress, stop, context)
            break
        except _Retry as exc:
            last_error = str(exc)
            if attempt == ATTEMPTS:
                raise JobFailed(
                    f"download of {shown} failed after {ATTEMPTS} attempts: {last_error}"
                ) from None
            progress(None, f"retrying in {delay:g} s: {last_error}")
            if stop.wait(delay):
                raise JobFailed("cancelled") from None
            delay = min(delay * 2, BACKOFF_MAX)
    if request.sha256 is not None:
        digest = hashlib.sha256()
        with open(request.part, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != request.sha256:
            request.part.unlink(missing_ok=True)
            raise JobFailed(
                f"sha256 mismatch for {shown}: expected {request.sha256}, got {digest.hexdigest()}"
            )
    os.replace(request.part, request.path)
    directory = os.open(request.path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return total


def _attempt(
    request: DownloadRequest, progress: Progress, stop: threading.Event, context: ssl.SSLContext
) -> int:
    offset = request.part.stat().st_size if request.part.exists() else 0
    try:
        response = _open(request.url, offset, context)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            request.part.unlink(missing_ok=True)
            raise _Retry("the server refused the resume range; starting over") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retry(f"HTTP {exc.code}") from None
        raise JobFailed(f"download of {display_url(request.url)}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", None), ssl.SSLCertVerificationError):
            raise JobFailed(f"TLS certificate of {display_url(request.url)}: {exc}") from None
        raise _Retry(str(getattr(exc, "reason", exc))) from None
    with response:
        if response.status == 206 and offset:
            mode = "ab"
        else:
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if total is not None and total > request.max_bytes:
            raise JobFailed(f"the file is {total} bytes, more than maxBytes {request.max_bytes}")
        received = offset
        try:
            with open(request.part, mode) as handle:
                while True:
                    if stop.is_set():
                        raise JobFailed("cancelled")
                    block = response.read(CHUNK)
                    if not block:
                        break
                    received += len(block)
                    if received > request.max_bytes:
                        raise JobFailed(f"the download exceeds maxBytes {request.max_bytes}")
                    handle.write(block)
                    percent = 100.0 * received / total if total else None
                    progress(percent, f"{received} bytes")
                handle.flush()
                os.fsync(handle.fileno())
        except (http.client.HTTPException, OSError) as exc:
            raise _Retry(f"connection lost after {received} bytes ({type(exc).__name__})") from None
        if total is not None and received < total:
            raise _Retry(f"connection closed after {received} of {total} bytes")
    return received


class DownloadFileHandler:
    """The `download-file` plugin. Resumable: a restart continues from `PATH.part`."""

    name = "download-file"
    resumable = True

    async def run(self, ctx: JobContext) -> Mapping[str, Any]:
        doc = ctx.document
        request = DownloadRequest.from_values(
            doc.get("url"), doc.get("path"), doc.get("sha256"), doc.get("maxBytes")
        )
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def progress(percent: float | None, message: str) -> None:
            loop.call_soon_threadsafe(lambda: ctx.progress(percent, message))

        async def watch_cancel() -> None:
            await ctx.cancelled.wait()
            stop.set()

        watcher = asyncio.create_task(watch_cancel())
        worker = asyncio.ensure_future(
            asyncio.to_thread(download, request, progress=progress, stop=stop)
        )
        try:
            size = await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            watcher.cancel()
        return {"path": str(request.path), "bytes": str(size)}


def main(argv: list[str] | None = None) -> int:
    """`python -m handlers.download_file URL PATH [SHA256]` (used by download-file.sh)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m handlers.download_file URL PATH [SHA256]", file=sys.stderr)
        return int(os.environ.get("JOBS_AGENT_EXIT_REJECTED", "90"))
    fd = os.environ.get("JOBS_AGENT_PROGRESS_FD")
    pipe = None
    if fd and fd.isdigit():
        try:
            pipe = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8")
        except OSError:
            pipe = None

    def progress(percent: float | None, message: str) -> None:
        if pipe is not None and percent is not None:
            with contextlib.suppress(OSError):
                pipe.write(json.dumps({"percent": round(percent, 1), "message": message}) + "\n")

    if args[0].startswith("env:"):
        # The agent passes presigned URLs in the environment, never in argv (visible in ps).
        args = [os.environ.get(args[0][4:], ""), *args[1:]]
    try:
        request = DownloadRequest.from_values(*args)
        size = download(request, progress=progress, stop=threading.Event())
    except JobRejected as exc:
        print(exc.reason, file=sys.stderr)
        return int(os.environ.get("JOBS_AGENT_EXIT_REJECTED", "90"))
    except JobFailed as exc:
        print(exc.reason, file=sys.stderr)
        return 1
    print(f"downloaded {display_url(request.url)} to {request.path} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
