"""`download-file`: fetch a URL (presigned S3 URLs included) to a path on the device.

One implementation serves two doors: the Python plugin (`{"operation": "download-file",
"url", "path", "sha256"?, "maxBytes"?}`) and the `download-file.sh` script that the
AWS-Download-File managed template calls (`python -m jobs_agent_handlers.download_file URL PATH
[SHA256]`; the agent passes a presigned URL as `env:JOBS_AGENT_URL_<n>`, never in argv). The
plugin also takes a `stream` instead of the `url`: an AWS IoT stream fetched in blocks over the
agent's MQTT connection (stream_download.py), under the same partial-file rules (partfile.py).

What it guarantees against the file server and the other accounts of the device:
* **https only**; `http://` only where the operator allowed it (`jobs.allow_http_downloads`);
  redirects are followed (at most 5) only to a URL the same rule allows, never to `ftp:` or
  `file:`. TLS certificates are verified.
* **A timeout on every socket operation** (connect, handshake, each read): a silent server
  cannot hold a download forever, and a trickling one cannot hold it past its job's limit:
  **cancellation ends it within a second** (the connection is shut down from outside), so a
  cancelled, timed-out or stopping job never leaves a download running behind it.
* **Resumes only what this download wrote.** Bytes fetched so far stay in `PATH.part`, next to
  a sidecar `PATH.part.json` naming the URL (without its query: credentials are never written
  down), the expected sha256 and the server's validator (ETag or Last-Modified). A later attempt
  (a dropped connection, an agent restart: the plugin is resumable) continues with `Range` and
  `If-Range` only when the sidecar matches this request; the server answers 200 with the whole
  file if the object changed since. A `.part` without a matching sidecar is someone else's (an
  earlier job, another URL) and is discarded.
* **No path a user could change is followed.** The target's directory is opened once without
  following symlinks; the `.part`, the sidecar and the final rename all work relative to that
  descriptor with `O_NOFOLLOW`, and a `.part` that is not a plain file of the agent's user with
  one link is never reused.
* The file appears at PATH only complete and, when a sha256 is given, verified.
* **Outlives its presigned URL.** On a 403, or before starting with a URL whose `X-Amz-Date` +
  `X-Amz-Expires` has passed, the plugin asks its context for the job document again
  (`RefreshesDocument`: the agent fetches and checks it; the handler never talks to the
  service) and continues with the new URL from the bytes it has. A new URL refused at once is
  not asked for again; the agent bounds the renewals (`jobs.max_document_refreshes`). The
  script door does the same through the script protocol: `{"refreshUrls": true}` on its progress
  pipe, the agent's answer (its `JOBS_AGENT_URL_<n>` from the document fetched again) on its
  reply pipe (`JOBS_AGENT_REPLY_FD`), so the script never reaches the service either.
"""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import os
import re
import select
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from jobs_agent.datamodel import model
from jobs_agent_handlers import partfile
from jobs_agent_handlers.api import JobContext, JobFailed, JobRejected, RefreshesDocument
from jobs_agent_handlers.http_get import Cancelled, HttpGet, Refused, Retry, display_url
from jobs_agent_handlers.stream_download import run_stream_download

DEFAULT_MAX_BYTES = partfile.DEFAULT_MAX_BYTES
CHUNK = 256 * 1024
ATTEMPTS = 6
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
CANCEL_WITHIN = 1.0
"""A cancelled download has stopped touching the file and the network within this long."""

Progress = Callable[[float | None, str], None]
EXPIRY_MARGIN = 5.0
"""A presigned URL this close to its expiry counts as expired (a request takes a moment)."""


class Expired(Exception):
    """The server refused the URL (403): a presigned URL past its `X-Amz-Expires`, usually."""


def url_expired(url: str, now: float) -> bool:
    """Has this presigned S3 URL's `X-Amz-Date` + `X-Amz-Expires` passed? False for a URL that
    does not say (only the server knows; a 403 then tells)."""
    query = dict(parse_qsl(urlsplit(url).query))
    date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
    if not expires.isdigit():
        return False
    try:
        signed = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return False
    return now >= signed + int(expires) - EXPIRY_MARGIN


def resource_url(url: str) -> str:
    """What a sidecar records: the URL without credentials (userinfo, query, fragment)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _schemes(allow_http: bool) -> tuple[str, ...]:
    return ("https", "http") if allow_http else ("https",)


@model
class DownloadRequest:
    url: str
    path: Path
    sha256: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_http: bool = False

    @classmethod
    def from_values(
        cls,
        url: Any,
        path: Any,
        sha256: Any = None,
        max_bytes: Any = None,
        *,
        allow_http: bool = False,
    ) -> DownloadRequest:
        if not isinstance(url, str) or urlsplit(url).scheme not in _schemes(allow_http):
            expected = (
                "an http:// or https:// URL"
                if allow_http
                else "an https:// URL (http:// only with jobs.allow_http_downloads)"
            )
            raise JobRejected(f"url: expected {expected}, got {display_url(str(url))!r:.80}")
        target = partfile.Target.from_values(path, sha256, max_bytes)
        return cls(url, target.path, target.sha256, target.max_bytes, allow_http)

    @property
    def part(self) -> str:
        return self.path.name + ".part"

    @property
    def sidecar(self) -> str:
        return self.path.name + ".part.json"


@model(frozen=False)
class _Resume:
    offset: int
    validator: str


class Download:
    """One download, run by `run()` in a thread; `cancel()` (any thread) ends it promptly."""

    def __init__(
        self,
        request: DownloadRequest,
        progress: Progress,
        context: ssl.SSLContext | None = None,
        refresh: Callable[[threading.Event], str] | None = None,
    ) -> None:
        """`refresh(stop)` (blocking, from the download's thread; raises `Cancelled` once
        `stop` is set): the URL of the job document fetched again, for a URL that expired (403,
        or its `X-Amz-Date` + `X-Amz-Expires` passed)."""
        self.request = request
        self.progress = progress
        self._refresh = refresh
        self._fresh = False
        """True from a renewal until bytes arrive: a fresh URL refused again is not retried."""
        self.renewals = 0
        self._stop = threading.Event()
        self._http = HttpGet(
            context or ssl.create_default_context(), _schemes(request.allow_http), self._stop
        )
        self._dir_fd = -1

    # -- control ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop: the loop sees the flag within one read, and a blocked read returns at once
        because its connection is shut down under it."""
        self._http.cancel()

    def _check(self) -> None:
        self._http.check()

    # -- the whole download -------------------------------------------------------------------
    def run(self) -> int:
        """Blocking: download with resume and retries; returns the size. Raises JobFailed."""
        request = self.request
        shown = display_url(request.url)
        try:
            self._dir_fd = partfile.open_target_directory(request.path.parent)
            total = self._attempts(shown)
            self._verify(shown)
            self._check()
            partfile.complete(self._dir_fd, request.part, request.path.name, request.sidecar)
            return total
        except Cancelled:
            raise JobFailed("cancelled") from None
        except Refused as exc:
            raise JobFailed(str(exc)) from None
        except OSError as exc:  # the target's file system (full, or changed under us)
            raise JobFailed(f"download to {request.path}: {exc.strerror or exc}") from None
        finally:
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    def _attempts(self, shown: str) -> int:
        delay = BACKOFF_FIRST
        failures = 0
        if self._refresh is not None and url_expired(self.request.url, time.time()):
            self._renew("the presigned URL has expired")  # a resumed download's old URL
        while True:
            self._check()
            try:
                return self._attempt()
            except Expired as exc:
                if self._refresh is None:
                    raise JobFailed(f"download of {shown}: {exc}") from None
                if self._fresh:
                    raise JobFailed(
                        f"download of {shown}: {exc}, with a freshly signed URL"
                    ) from None
                self._renew(str(exc))
            except Retry as exc:
                failures += 1
                if failures == ATTEMPTS:
                    raise JobFailed(
                        f"download of {shown} failed after {ATTEMPTS} attempts: {exc}"
                    ) from None
                self.progress(None, f"retrying in {delay:g} s: {exc}")
                if self._stop.wait(delay):
                    raise Cancelled from None
                delay = min(delay * 2, BACKOFF_MAX)

    def _renew(self, why: str) -> None:
        """Continue with the URL of the job document fetched again (`RefreshesDocument`): the
        same resource (the sidecar is keyed by the URL without its query), newly signed."""
        assert self._refresh is not None
        self.progress(None, f"{why}: asking for a fresh URL")
        url = self._refresh(self._stop)
        if resource_url(url) != resource_url(self.request.url):
            raise JobFailed(
                f"the job document fetched again names another URL ({display_url(url)})"
            )
        self.request = dataclasses.replace(self.request, url=url)
        self._fresh = True
        self.renewals += 1

    def _verify(self, shown: str) -> None:
        expected = self.request.sha256
        if expected is None:
            return
        actual = partfile.sha256_of(self._dir_fd, self.request.part, self._check)
        if actual != expected:
            self._discard()
            raise JobFailed(f"sha256 mismatch for {shown}: expected {expected}, got {actual}")

    # -- the partial file and its sidecar -----------------------------------------------------
    def _discard(self) -> None:
        partfile.discard(self._dir_fd, self.request.part, self.request.sidecar)

    def _resume_point(self) -> _Resume | None:
        """Where to continue, if `.part` is this download's own; else None (start over)."""
        request = self.request
        sidecar = partfile.read_sidecar(self._dir_fd, request.sidecar)
        wanted = {
            "version": partfile.SIDECAR_VERSION,
            "url": resource_url(request.url),
            "sha256": request.sha256,
        }
        if sidecar is None or any(sidecar.get(k) != v for k, v in wanted.items()):
            return None  # written for another URL or another file
        validator = sidecar.get("validator")
        if not isinstance(validator, str) or not validator:
            return None
        size = partfile.own_size(self._dir_fd, request.part)
        return _Resume(size, validator) if size and size <= request.max_bytes else None

    def _write_sidecar(self, validator: str | None) -> None:
        request = self.request
        data = {
            "version": partfile.SIDECAR_VERSION,
            "url": resource_url(request.url),
            "sha256": request.sha256,
            "validator": validator,
        }
        partfile.write_sidecar(self._dir_fd, request.sidecar, data)

    def _open_part(self, append: bool) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if append:
            fd = os.open(self.request.part, flags | os.O_APPEND, dir_fd=self._dir_fd)
            if partfile.is_own_file(fd):
                return fd
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.request.part, dir_fd=self._dir_fd)
        return os.open(
            self.request.part, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._dir_fd
        )

    # -- one attempt --------------------------------------------------------------------------
    def _attempt(self) -> int:
        resume = self._resume_point()
        if resume is None:
            self._discard()
        headers = {"User-Agent": "jobs-agent", "Accept-Encoding": "identity"}
        if resume is not None:
            headers["Range"] = f"bytes={resume.offset}-"
            headers["If-Range"] = resume.validator
        response, connection = self._http.open(self.request.url, headers)
        try:
            return self._receive(response, resume)
        finally:
            self._http.close(connection)

    def _receive(self, response: http.client.HTTPResponse, resume: _Resume | None) -> int:
        request = self.request
        shown = display_url(request.url)
        if response.status == 416 and resume is not None:
            self._discard()
            raise Retry("the server refused the resume range; starting over")
        if response.status >= 500 or response.status in (408, 429):
            raise Retry(f"HTTP {response.status}")
        if response.status == 403:
            raise Expired("HTTP 403 (the presigned URL expired or was refused)")
        if response.status not in (200, 206):
            raise JobFailed(f"download of {shown}: HTTP {response.status}")
        offset = 0
        if response.status == 206 and resume is not None:
            content_range = response.getheader("Content-Range") or ""
            match = re.match(r"bytes (\d+)-", content_range)
            if match is None or int(match.group(1)) != resume.offset:
                self._discard()
                raise Retry(f"the server resumed at the wrong place ({content_range!r})")
            offset = resume.offset
        elif response.status == 206:
            raise Retry("the server sent a partial answer to a full request")
        else:
            # A whole file: a first attempt, or the object changed since the part was written.
            validator = response.getheader("ETag") or ""
            if validator.startswith("W/"):
                validator = ""  # If-Range needs a strong validator
            self._write_sidecar(validator or response.getheader("Last-Modified"))
        length = response.getheader("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if total is not None and total > request.max_bytes:
            raise JobFailed(f"the file is {total} bytes, more than maxBytes {request.max_bytes}")
        received = offset
        fd = self._open_part(append=offset > 0)
        try:
            while True:
                self._check()
                try:
                    block = response.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    self._check()
                    raise Retry(
                        f"connection lost after {received} bytes ({type(exc).__name__})"
                    ) from None
                if not block:
                    break
                received += len(block)
                self._fresh = False
                if received > request.max_bytes:
                    raise JobFailed(f"the download exceeds maxBytes {request.max_bytes}")
                _write_all(fd, block)
                self.progress(100.0 * received / total if total else None, f"{received} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._check()
        if total is not None and received < total:
            raise Retry(f"connection closed after {received} of {total} bytes")
        return received


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def download(
    request: DownloadRequest,
    *,
    progress: Progress,
    stop: threading.Event | None = None,
    context: ssl.SSLContext | None = None,
    refresh: Callable[[threading.Event], str] | None = None,
) -> int:
    """Blocking download (see `Download`, also for `refresh`); a set `stop` cancels it.
    Raises JobFailed."""
    job = Download(request, progress, context, refresh)
    if stop is None:
        return job.run()
    watcher_done = threading.Event()

    def watch() -> None:
        while not watcher_done.is_set():
            if stop.wait(0.25):
                job.cancel()
                return

    watcher = threading.Thread(target=watch, name="download-cancel", daemon=True)
    watcher.start()
    try:
        return job.run()
    finally:
        watcher_done.set()


class DownloadFileHandler:
    """The `download-file` plugin. Resumable: a restart continues from `PATH.part`."""

    name = "download-file"
    resumable = True

    def __init__(self, *, allow_http: bool = False, request_timeout: float = 30.0) -> None:
        self.allow_http = allow_http
        self.request_timeout = request_timeout
        """How long a stream request may go unanswered before it is asked again
        (`jobs.request_timeout_seconds`, as for the Jobs requests)."""

    async def run(self, ctx: JobContext) -> Mapping[str, Any]:
        doc = ctx.document
        if doc.get("stream") is not None:
            return await run_stream_download(ctx, self.request_timeout)
        request = DownloadRequest.from_values(
            doc.get("url"),
            doc.get("path"),
            doc.get("sha256"),
            doc.get("maxBytes"),
            allow_http=self.allow_http,
        )
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[int] = loop.create_future()

        def progress(percent: float | None, message: str) -> None:
            loop.call_soon_threadsafe(lambda: ctx.progress(percent, message))

        job = Download(request, progress, refresh=_url_refresher(ctx, request, loop))

        def work() -> None:
            try:
                size: int | BaseException = job.run()
            except BaseException as exc:  # handed over to the event loop as the outcome
                size = exc
            loop.call_soon_threadsafe(_settle, finished, size)

        # A thread of its own, not the loop's executor: should anything in it ever block
        # (a DNS lookup cannot be interrupted), it must not keep the agent from exiting.
        threading.Thread(target=work, name="download-file", daemon=True).start()
        cancelled = asyncio.ensure_future(ctx.cancelled.wait())
        waiters: set[asyncio.Future[Any]] = {finished, cancelled}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.cancel()
            await _wait_briefly(finished)
            raise
        finally:
            cancelled.cancel()
        if not finished.done():
            job.cancel()
            await _wait_briefly(finished)
            raise JobFailed("cancelled")
        size = finished.result()
        result = {"path": str(request.path), "bytes": str(size)}
        if job.renewals:
            result["urlRenewals"] = str(job.renewals)
        return result


def _url_refresher(
    ctx: JobContext, request: DownloadRequest, loop: asyncio.AbstractEventLoop
) -> Callable[[threading.Event], str] | None:
    """For the download's thread: the `url` of the job document fetched again (through the
    context: the engine asks the service), or None where the context cannot."""
    if not isinstance(ctx, RefreshesDocument):
        return None
    refreshing = ctx

    def refresh(stop: threading.Event) -> str:
        future = asyncio.run_coroutine_threadsafe(refreshing.refresh_document(), loop)
        while True:
            if stop.is_set():
                future.cancel()
                raise Cancelled
            try:
                document = future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                continue
            fresh = DownloadRequest.from_values(
                document.get("url"),
                document.get("path"),
                document.get("sha256"),
                document.get("maxBytes"),
                allow_http=request.allow_http,
            )
            if (fresh.path, fresh.sha256, fresh.max_bytes) != (
                request.path,
                request.sha256,
                request.max_bytes,
            ):
                raise JobFailed("the job document fetched again names another file")
            return fresh.url

    return refresh


def _settle(future: asyncio.Future[int], value: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


async def _wait_briefly(finished: asyncio.Future[int]) -> None:
    """After a cancel: give the download thread its second to let go of the file."""
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(finished), timeout=CANCEL_WITHIN)
    if finished.done() and not finished.cancelled():
        finished.exception()  # retrieved: the cancellation is the outcome now


REPLY_LINE_MAX = 64 * 1024


class ReplyRefresher:
    """The script door's `refresh`: asks the agent on the progress pipe and reads its answer on
    the reply pipe (docs/handlers.md, script protocol). `variable` is the `JOBS_AGENT_URL_<n>`
    this download's URL came in."""

    def __init__(self, pipe: Any, reply_fd: int, variable: str) -> None:
        self._pipe = pipe
        self._reply_fd = reply_fd
        self._variable = variable
        self._buffer = b""

    def __call__(self, stop: threading.Event) -> str:
        try:
            self._pipe.write(json.dumps({"refreshUrls": True}) + "\n")
            self._pipe.flush()
        except OSError as exc:
            raise JobFailed(f"cannot ask the agent for a fresh URL: {exc}") from None
        answer = self._read_line(stop)
        try:
            reply = json.loads(answer)
        except ValueError:
            raise JobFailed("the agent's answer to refreshUrls is not JSON") from None
        if not isinstance(reply, dict) or reply.get("refreshed") is not True:
            reason = reply.get("reason") if isinstance(reply, dict) else None
            raise JobFailed(f"no fresh URL: {reason or 'the agent did not say why'}")
        environment = reply.get("environment")
        url = environment.get(self._variable) if isinstance(environment, dict) else None
        if not isinstance(url, str):
            raise JobFailed(f"the agent's fresh URLs do not include {self._variable}")
        return url

    def _read_line(self, stop: threading.Event) -> str:
        while b"\n" not in self._buffer:
            if stop.is_set():
                raise Cancelled
            ready, _w, _x = select.select([self._reply_fd], [], [], 0.25)
            if not ready:
                continue
            chunk = os.read(self._reply_fd, 65536)
            if not chunk:
                raise JobFailed("the agent closed the reply pipe before answering refreshUrls")
            self._buffer += chunk
            if len(self._buffer) > REPLY_LINE_MAX:
                raise JobFailed("the agent's answer to refreshUrls is too long")
        line, _nl, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")


def _reply_refresher(pipe: Any, variable: str | None) -> ReplyRefresher | None:
    """For a URL that came in `JOBS_AGENT_URL_<n>`, with a reply pipe: the way to renew it."""
    reply = os.environ.get("JOBS_AGENT_REPLY_FD", "")
    if pipe is None or variable is None or not reply.isdigit():
        return None
    return ReplyRefresher(pipe, int(reply), variable)


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs_agent_handlers.download_file URL PATH [SHA256]` (download-file.sh)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(
            "usage: python -m jobs_agent_handlers.download_file URL PATH [SHA256]", file=sys.stderr
        )
        return int(os.environ.get("JOBS_AGENT_EXIT_REJECTED", "90"))
    variable = None
    if args[0].startswith("env:"):
        # The agent passes presigned URLs in the environment, never in argv (visible in ps).
        variable = args[0][4:]
        args = [os.environ.get(variable, ""), *args[1:]]
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

    allow_http = os.environ.get("JOBS_AGENT_ALLOW_HTTP_DOWNLOADS") == "1"
    try:
        request = DownloadRequest.from_values(*args, allow_http=allow_http)
        size = download(request, progress=progress, refresh=_reply_refresher(pipe, variable))
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
