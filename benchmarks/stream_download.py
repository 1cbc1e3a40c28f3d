"""stream-download: `download-file` of one file from an AWS IoT stream, JSON and CBOR.

A real `jobs-agent run` process (paho) downloads a file that the emulator (in this process, on
its own broker transport) serves as a stream through mosquitto, in the agent's default blocks
(16 KiB, 8 per request, 4 requests outstanding). Figures: throughput (file size over job
created -> SUCCEEDED, the sha256 check included) and the agent's CPU per MiB.

Peer: the same agent downloading the same file over HTTP from a local server (stdlib, in a
thread of this process), the sha256 check included: the path a device takes when it can reach
S3.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import AgentProcess, Measure, Session, cpu_seconds, emulator, new_id
from jobs_agent.emulator.streams import parse_files
from tests.helpers.streams import ROLE

NAME = "stream-download"
HELP = "download-file from a stream (JSON, CBOR) through mosquitto, beside the same file by HTTP"
MIB = 1024 * 1024
KINDS = ("http", "json", "cbor")


def _serve(content: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("ETag", '"bench"')
            self.end_headers()
            self.wfile.write(content)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _document(kind: str, target: Path, content: bytes, port: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operation": "download-file",
        "path": str(target),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    if kind == "http":
        doc["url"] = f"http://127.0.0.1:{port}/fw.bin"
    else:
        doc["stream"] = {"streamId": "bench", "fileId": 0, "format": kind}
    return doc


async def run(session: Session, quick: bool) -> list[Measure]:
    size = (8 if quick else 32) * MIB
    repeats = 1 if quick else 2
    content = os.urandom(size)
    broker = session.broker()
    directory = session.directory("stream-download")
    (directory / "out").mkdir()
    server = _serve(content)
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    served: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        async with emulator(broker) as emu:
            # A file below the emulator's S3 directory, as `sim serve --s3-dir` serves it: its
            # ETag is computed once, not for every GetStream (as for an object put in memory).
            (directory / "s3" / "bench").mkdir(parents=True)
            (directory / "s3" / "bench" / "fw.bin").write_bytes(content)
            emu.service.s3_root = directory / "s3"
            location = {"bucket": "bench", "key": "fw.bin"}
            emu.service.streams.create(
                "bench", parse_files([{"fileId": 0, "s3Location": location}]), ROLE
            )
            agent = AgentProcess(
                broker, directory, new_id("stream"), jobs={"allow_http_downloads": True}
            )
            await agent.start()
            try:
                for index in range(repeats):
                    for kind in KINDS:
                        target = directory / "out" / f"{kind}-{index}.bin"
                        doc = _document(kind, target, content, server.server_address[1])
                        mine = time.process_time()
                        used, elapsed = await _download(emu, agent, f"{kind}-{index}", doc)
                        served[kind].append(time.process_time() - mine)
                        seconds[kind].append(elapsed)
                        cpu[kind].append(used)
                        target.unlink()
            finally:
                await agent.stop()
    finally:
        server.shutdown()
        server.server_close()
    return _measures(size, seconds, cpu, served, repeats)


async def _download(
    emu: Any, agent: AgentProcess, job_id: str, doc: dict[str, Any]
) -> tuple[float, float]:
    """(agent CPU seconds, wall seconds) from CreateJob to SUCCEEDED."""
    before = cpu_seconds(agent.pid)
    started = time.monotonic()
    emu.service.create_job(job_id, [agent.thing], doc)

    def ended() -> bool:
        execution = emu.service._executions.get((job_id, agent.thing))
        return bool(execution) and execution[-1].status.value not in ("QUEUED", "IN_PROGRESS")

    await emu.service.wait_for(ended, timeout=300)
    elapsed = time.monotonic() - started
    execution = emu.service.execution(job_id, agent.thing)
    if str(execution.status) != "SUCCEEDED":
        raise RuntimeError(f"{job_id}: {execution.status} {dict(execution.status_details)}")
    await asyncio.sleep(0)
    return cpu_seconds(agent.pid) - before, elapsed


def _measures(
    size: int,
    seconds: dict[str, list[float]],
    cpu: dict[str, list[float]],
    served: dict[str, list[float]],
    repeats: int,
) -> list[Measure]:
    mib = size / MIB
    rate = {kind: mib / statistics.median(seconds[kind]) for kind in KINDS}
    per_mib = {kind: statistics.median(cpu[kind]) / mib for kind in KINDS}
    serving = ", ".join(f"{kind} {statistics.median(served[kind]) / mib:.3f}" for kind in KINDS)
    note = (
        f"{mib:g} MiB file, median of {repeats} per run; CPU per MiB of the harness process"
        f" (emulator, HTTP server): {serving} s"
    )
    out = []
    for kind in ("json", "cbor"):
        out.append(
            Measure(
                f"stream-{kind}-rate",
                f"stream download, {kind.upper()} (MiB/s)",
                "MiB/s",
                rate[kind],
                "peer: the same file over HTTP",
                rate["http"],
                "> 5 MiB/s",
                lambda v, r: v > 5.0,
                note=note,
            )
        )
        out.append(
            Measure(
                f"stream-{kind}-cpu",
                f"agent CPU per MiB, {kind.upper()} stream",
                "s/MiB",
                per_mib[kind],
                "peer: the same file over HTTP",
                per_mib["http"],
                note=note,
            )
        )
    return out
