"""A real local HTTP server standing in for S3 behind presigned URLs (AWS itself cannot run here).

It serves its objects only to a URL whose query carries the SigV4 fields the emulator's presigned
URLs carry (`agent/emulator/presign.py`), refuses one whose `X-Amz-Date` + `X-Amz-Expires` has
passed with 403 "Request has expired" as S3 does, and honours `Range` with `If-Range` on the
object's ETag. A test makes a signature expire in the middle of a transfer: `cut_after` bytes
into a response, the signature in use is marked expired and the connection is dropped (or held
until `release` is set, `held` telling the test it is there), so that the next request with it
is refused, as it would be once its time had run out.
"""

from __future__ import annotations

import calendar
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>"
)


@dataclass
class Seen:
    path: str
    signature: str | None
    range: str | None
    status: int


@dataclass
class Plan:
    """What the next successful response with a signature does after `cut_after` bytes."""

    cut_after: int
    hold: bool = False


class StandInServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, bytes] = {}
        self.seen: list[Seen] = []
        self.expired: set[str] = set()
        self.plans: list[Plan] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self.refuse_all = False
        """Every signature counts as expired (a bucket policy that refuses the device, say)."""
        self.lock = threading.Lock()

    def put(self, path: str, data: bytes) -> str:
        """Store an object; returns the URL to put in a presigned-URL placeholder."""
        self.objects[path] = data
        return f"http://127.0.0.1:{self.server_port}{path}"

    def etag(self, path: str) -> str:
        return '"' + hashlib.md5(self.objects[path], usedforsecurity=False).hexdigest() + '"'

    def signatures(self) -> list[str]:
        """The distinct signatures requests came with, in order."""
        out: list[str] = []
        for entry in self.seen:
            if entry.signature and entry.signature not in out:
                out.append(entry.signature)
        return out


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _refuse(self, status: int, body: bytes, seen: Seen) -> None:
        seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        signature = query.get("X-Amz-Signature")
        seen = Seen(parts.path, signature, self.headers.get("Range"), 0)
        with self.server.lock:
            self.server.seen.append(seen)
            expired = self.server.refuse_all or signature in self.server.expired
        data = self.server.objects.get(parts.path)
        if data is None:
            self._refuse(404, b"<Error><Code>NoSuchKey</Code></Error>", seen)
            return
        if signature is None or _past_expiry(query) or expired:
            self._refuse(403, EXPIRED_BODY, seen)
            return
        etag = self.server.etag(parts.path)
        header = seen.range
        if header and self.headers.get("If-Range") != etag:
            header = None
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        body = data[start:]
        seen.status = 206 if header else 200
        self.send_response(seen.status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        with self.server.lock:
            plan = self.server.plans.pop(0) if self.server.plans else None
        if plan is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[: plan.cut_after])
        self.wfile.flush()
        with self.server.lock:
            self.server.expired.add(signature)  # its time runs out mid-transfer
        if plan.hold:
            self.server.held.set()
            self.server.release.wait(30)
        self.connection.shutdown(2)


def _past_expiry(query: dict[str, str]) -> bool:
    date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
    if not expires.isdigit():
        return True
    try:
        signed = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return True
    return time.time() > signed + int(expires)


@contextmanager
def s3_standin() -> Iterator[StandInServer]:
    server = StandInServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@dataclass
class Payload:
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()
