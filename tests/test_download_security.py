"""The download handler against hostile or unlucky file servers, with real local HTTP(S)
servers: stale partial files, objects that changed, redirects to other schemes, a server that
trickles one byte at a time (cancellation, time limit, and the agent's own SIGTERM)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import shutil
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.emulator.embedded import Emulator
from jobs_agent_handlers.api import Outcome
from tests.fixtures.broker import Mosquitto
from tests.fixtures.certs import CertPaths
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
)

V1 = b"version one " * 20000
V2 = b"VERSION TWO " * 20000
THING = "gw-download"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    etag = '"v2"'
    body = V2
    requests: list[dict[str, str | None]]
    trickling: threading.Event
    client_gone: threading.Event
    base_url = ""


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(
            {
                "path": self.path,
                "range": self.headers.get("Range"),
                "if-range": self.headers.get("If-Range"),
            }
        )
        if self.path.startswith("/redirect-"):
            target = {
                "/redirect-ftp": "ftp://127.0.0.1/firmware.bin",
                "/redirect-http": f"http://127.0.0.1:{srv.server_port}/file",
                "/redirect-file": "file:///etc/shadow",
                "/redirect-ok": "/file",
            }[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/trickle":
            self._trickle()
            return
        header = self.headers.get("Range")
        if header and self.headers.get("If-Range") != srv.etag:
            header = None  # the object changed since the part was written: send it whole
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        body = srv.body[start:]
        self.send_response(206 if header else 200)
        self.send_header("ETag", srv.etag)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(srv.body) - 1}/{len(srv.body)}")
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x")
                self.wfile.flush()
                self.server.trickling.set()
                time.sleep(0.2)  # the trickle itself: one byte every 0.2 s
        except OSError:
            self.server.client_gone.set()


def _serve(tls: ssl.SSLContext | None) -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.requests = []
    srv.trickling = threading.Event()
    srv.client_gone = threading.Event()
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    scheme = "https" if tls else "http"
    srv.base_url = f"{scheme}://127.0.0.1:{srv.server_port}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def http_server() -> Iterator[Server]:
    yield from _serve(None)


@pytest.fixture
def https_server(broker_certs: CertPaths, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(broker_certs.server_cert, broker_certs.server_key)
    monkeypatch.setenv("SSL_CERT_FILE", str(broker_certs.ca))  # the handler trusts the test CA
    yield from _serve(context)


def _run(
    tmp_path: Path, document: dict[str, Any], *, allow_http: bool = True
) -> tuple[Dispatcher, LocalJobContext, Callable[[], Any]]:
    dispatcher = Dispatcher(
        AgentConfig(
            thing_name="gw",
            state_dir=tmp_path / "state",
            jobs=JobsConfig(handler_dir=tmp_path, allow_http_downloads=allow_http),
        )
    )
    (tmp_path / "s").mkdir(exist_ok=True)
    ctx = LocalJobContext(document=document, scratch_dir=tmp_path / "s", state_dir=tmp_path)
    return dispatcher, ctx, lambda: dispatcher.run(dispatcher.resolve(document), ctx)


async def download(
    tmp_path: Path, url: str, target: Path, *, allow_http: bool = True, **extra: Any
) -> Outcome:
    document = {"operation": "download-file", "url": url, "path": str(target), **extra}
    _dispatcher, _ctx, run = _run(tmp_path, document, allow_http=allow_http)
    outcome: Outcome = await run()
    return outcome


async def test_a_stale_part_of_another_download_is_not_resumed(
    tmp_path: Path, http_server: Server
) -> None:
    target = tmp_path / "app.bin"
    (tmp_path / "app.bin.part").write_bytes(V1[: len(V1) // 3])  # an earlier job's leftover
    outcome = await download(tmp_path, f"{http_server.base_url}/file", target)
    assert outcome.status == "SUCCEEDED", outcome
    assert target.read_bytes() == V2
    assert [r["range"] for r in http_server.requests] == [None]

    # A part with a sidecar, but written for another URL: not resumed either.
    (tmp_path / "app.bin.part").write_bytes(V2[:1000])
    (tmp_path / "app.bin.part.json").write_text(
        json.dumps(
            {"version": 1, "url": "https://elsewhere/x", "sha256": None, "validator": '"v2"'}
        )
    )
    outcome = await download(tmp_path, f"{http_server.base_url}/file", target)
    assert outcome.status == "SUCCEEDED", outcome
    assert target.read_bytes() == V2
    assert [r["range"] for r in http_server.requests] == [None, None]
    assert not (tmp_path / "app.bin.part").exists()
    assert not (tmp_path / "app.bin.part.json").exists()


async def test_only_the_same_version_of_the_object_is_resumed(
    tmp_path: Path, http_server: Server
) -> None:
    target = tmp_path / "app.bin"
    url = f"{http_server.base_url}/file"
    digest = hashlib.sha256(V2).hexdigest()

    def leftover(body: bytes, etag: str) -> None:
        """What an interrupted earlier attempt of this very download leaves behind."""
        (tmp_path / "app.bin.part").write_bytes(body[:5000])
        sidecar = {"version": 1, "url": url, "sha256": digest, "validator": etag}
        (tmp_path / "app.bin.part.json").write_text(json.dumps(sidecar))

    leftover(V2, '"v2"')
    outcome = await download(tmp_path, url + "?X-Amz-Signature=fresh", target, sha256=digest)
    assert outcome.status == "SUCCEEDED", outcome
    assert http_server.requests[-1]["range"] == "bytes=5000-"
    assert http_server.requests[-1]["if-range"] == '"v2"'
    assert target.read_bytes() == V2

    leftover(V1, '"v1"')  # the object was replaced since the part was written
    outcome = await download(tmp_path, url, target, sha256=digest)
    assert outcome.status == "SUCCEEDED", outcome
    assert http_server.requests[-1]["if-range"] == '"v1"'  # asked; the server sent it whole
    assert target.read_bytes() == V2


async def test_http_only_where_the_operator_allows_it(tmp_path: Path, http_server: Server) -> None:
    outcome = await download(
        tmp_path, f"{http_server.base_url}/file", tmp_path / "f", allow_http=False
    )
    assert outcome.status == "REJECTED"
    assert outcome.details["reason"] == (
        "url: expected an https:// URL (http:// only with jobs.allow_http_downloads), got"
        f" '{http_server.base_url.replace(':' + str(http_server.server_port), '')}/file'"
    )
    assert http_server.requests == []


async def test_redirects_go_to_https_only(tmp_path: Path, https_server: Server) -> None:
    base = https_server.base_url
    target = tmp_path / "f"
    for path, scheme in (("ftp", "ftp"), ("file", "file"), ("http", "http")):
        outcome = await download(tmp_path, f"{base}/redirect-{path}", target, allow_http=False)
        assert outcome == Outcome.failed(
            f"download of https://127.0.0.1/redirect-{path}: redirected to a {scheme}: URL;"
            " only https:// are followed"
        )
    outcome = await download(tmp_path, f"{base}/redirect-ok", target, allow_http=False)
    assert outcome.status == "SUCCEEDED", outcome
    assert target.read_bytes() == V2


async def _trickling(http_server: Server) -> None:
    await asyncio.to_thread(http_server.trickling.wait, 10)
    assert http_server.trickling.is_set()


async def test_a_cancelled_download_lets_go_of_a_trickling_server(
    tmp_path: Path, http_server: Server
) -> None:
    document = {
        "operation": "download-file",
        "url": f"{http_server.base_url}/trickle",
        "path": str(tmp_path / "t"),
    }
    _d, ctx, run = _run(tmp_path, document)
    task = asyncio.create_task(run())
    await _trickling(http_server)
    ctx.cancelled.set()
    outcome = await asyncio.wait_for(task, timeout=10)
    assert outcome == Outcome.failed("cancelled")
    assert await asyncio.to_thread(http_server.client_gone.wait, 5)


async def test_a_timed_out_download_lets_go_of_a_trickling_server(
    tmp_path: Path, http_server: Server
) -> None:
    outcome = await asyncio.wait_for(
        download(tmp_path, f"{http_server.base_url}/trickle", tmp_path / "t", timeout=1),
        timeout=10,
    )
    assert outcome == Outcome.failed("timed out after 1 s")
    assert await asyncio.to_thread(http_server.client_gone.wait, 5)


async def test_the_agent_stops_on_sigterm_while_a_download_trickles(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, http_server: Server
) -> None:
    (tmp_path / "handlers").mkdir(mode=0o755)
    config = agent_config(
        tmp_path, mosquitto.port, thing=THING, allow_http_downloads=True, stop_timeout_seconds=1
    )
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job(
            "slow",
            [THING],
            {
                "operation": "download-file",
                "url": f"{http_server.base_url}/trickle",
                "path": str(tmp_path / "t"),
            },
        )
        await _trickling(http_server)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=20) == 0
        assert http_server.client_gone.is_set() or await asyncio.to_thread(
            http_server.client_gone.wait, 5
        )
        # The resumable download was suspended, not failed: it continues after a restart.
        assert str(emulator.service.execution("slow", THING).status) == "IN_PROGRESS"
    finally:
        agent.kill()


async def test_the_download_template_gets_its_presigned_url_from_the_environment(
    tmp_path: Path, http_server: Server
) -> None:
    """AWS-Download-File through our download-file.sh: the URL is not in argv, and the script
    finds it in the environment."""
    target = tmp_path / "fw.bin"
    url = f"{http_server.base_url}/file?X-Amz-Signature=" + "ab" * 32
    document = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "Download-File",
                    "type": "runHandler",
                    "input": {"handler": "download-file.sh", "args": [url, str(target)]},
                }
            }
        ],
    }
    _d, _ctx, run = _run(tmp_path, document)
    outcome = await run()
    assert outcome.status == "SUCCEEDED", outcome
    assert target.read_bytes() == V2


RACER = r"""
import os, sys
directory, victim, stop = sys.argv[1:4]
print("racing", flush=True)
while not os.path.exists(stop):
    for name in ("app.bin.part", "app.bin.part.json", "app.bin.part.json.tmp"):
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except OSError:
            pass
        try:
            os.symlink(victim, path)
        except OSError:
            pass
"""


async def test_a_user_owning_the_target_directory_cannot_redirect_the_download(
    tmp_path: Path, http_server: Server
) -> None:
    """The target directory belongs to another account, which keeps planting symlinks to a
    file of root's where the download writes its part and sidecar. Root never writes through
    them: the victim is untouched whatever happens to the downloads."""
    from tests.helpers.users import public_dir, run_as, throwaway_user

    with throwaway_user() as user:
        base = public_dir("ja-dl-")
        try:
            theirs = base / "theirs"
            theirs.mkdir(mode=0o755)
            os.chown(theirs, user.pw_uid, user.pw_gid)
            victim = base / "victim"
            victim.write_bytes(b"root's file\n")
            stop = base / "stop"
            racer = run_as(user, RACER, str(theirs), str(victim), str(stop))
            statuses = []
            try:
                assert racer.stdout is not None
                assert racer.stdout.readline() == b"racing\n"
                for _ in range(15):
                    outcome = await download(
                        tmp_path, f"{http_server.base_url}/file", theirs / "app.bin"
                    )
                    statuses.append(outcome.status)
            finally:
                stop.touch()
                racer.communicate(timeout=30)
            assert victim.read_bytes() == b"root's file\n"
            assert os.stat(victim).st_uid == 0
            assert set(statuses) <= {"SUCCEEDED", "FAILED"}
        finally:
            shutil.rmtree(base)
