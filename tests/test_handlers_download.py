"""The download-file handler against a real local HTTP server (stdlib, in a thread) that drops
the connection midway and supports Range requests."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent_handlers.api import Outcome

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
ETAG = f'"{hashlib.md5(PAYLOAD).hexdigest()}"'


class Server(http.server.ThreadingHTTPServer):
    drops_left = 1
    requests: list[str | None]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        self.server.requests.append(header)
        if header and self.headers.get("If-Range") != ETAG:
            header = None  # If-Range: resume only the same version of the object
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        self.send_header("ETag", ETAG)  # as S3 does
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if self.server.drops_left > 0:
            self.server.drops_left -= 1
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection midway
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


async def download(tmp_path: Path, document: dict[str, Any]) -> tuple[Outcome, LocalJobContext]:
    # These tests use a plain-HTTP server; the handler fetches https:// only unless allowed.
    d = Dispatcher(
        AgentConfig(
            thing_name="gw", jobs=JobsConfig(handler_dir=tmp_path, allow_http_downloads=True)
        )
    )
    (tmp_path / "s").mkdir(exist_ok=True)
    ctx = LocalJobContext(document=document, scratch_dir=tmp_path / "s", state_dir=tmp_path)
    return await d.run(d.resolve(document), ctx), ctx


async def test_resumes_with_range_after_a_dropped_connection(
    tmp_path: Path, server: Server
) -> None:
    target = tmp_path / "app.bin"
    url = f"http://127.0.0.1:{server.server_port}/app.bin?X-Amz-Signature=secret"
    outcome, ctx = await download(
        tmp_path,
        {
            "operation": "download-file",
            "url": url,
            "path": str(target),
            "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        },
    )
    assert outcome == Outcome("SUCCEEDED", {"path": str(target), "bytes": str(len(PAYLOAD))})
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "app.bin.part").exists()
    assert server.requests[0] is None
    assert server.requests[1] is not None and server.requests[1].startswith("bytes=")
    assert int(server.requests[1].split("=")[1].rstrip("-")) > 0
    assert any(p == 100.0 for p, _, _ in ctx.progress_events)
    assert all("secret" not in (m or "") for _, m, _ in ctx.progress_events)


async def test_sha256_mismatch_fails_and_leaves_nothing(tmp_path: Path, server: Server) -> None:
    server.drops_left = 0
    target = tmp_path / "app.bin"
    outcome, _ = await download(
        tmp_path,
        {
            "operation": "download-file",
            "url": f"http://127.0.0.1:{server.server_port}/a",
            "path": str(target),
            "sha256": "0" * 64,
        },
    )
    assert outcome.status == "FAILED"
    assert outcome.details["reason"].startswith(
        f"sha256 mismatch for http://127.0.0.1/a: expected {'0' * 64}, got "
    )
    assert not target.exists() and not (tmp_path / "app.bin.part").exists()


async def test_size_limit_and_bad_scheme(tmp_path: Path, server: Server) -> None:
    server.drops_left = 0
    url = f"http://127.0.0.1:{server.server_port}/a"
    too_big, _ = await download(
        tmp_path,
        {"operation": "download-file", "url": url, "path": str(tmp_path / "x"), "maxBytes": 1000},
    )
    assert too_big == Outcome.failed(f"the file is {len(PAYLOAD)} bytes, more than maxBytes 1000")
    scheme, _ = await download(
        tmp_path, {"operation": "download-file", "url": "file:///etc/passwd", "path": "/tmp/p"}
    )
    assert scheme.status == "REJECTED"
    assert scheme.details["reason"].startswith("url: expected an http:// or https:// URL")
