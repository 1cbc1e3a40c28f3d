"""`jobs-agent sim fleet`: N real engines in one process, one job rolled out to all of them.

Real parts: the session mosquitto broker, the `jobs-agent` command as a subprocess, the
emulator (in the test for the first test, so the service's own records are checked; inside the
command for the second), real script handlers and SQLite stores on disk.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator import ExecutionStatus
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto

THINGS = 20
JOBS_AGENT = [sys.executable, "-m", "jobs_agent"]


@pytest.fixture
async def emulator(mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    client_id = f"fleet-emulator-{uuid.uuid4().hex[:8]}"
    config = ConnectionConfig(
        transport="paho", endpoint=mosquitto.host, port=mosquitto.port, tls=False
    )
    emu = Emulator(PahoTransport(config, client_id), tick_seconds=None, http_port=0)
    await emu.start(connect_timeout=10)
    try:
        yield emu
    finally:
        await emu.stop()


async def _fleet(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *JOBS_AGENT,
        "sim",
        "fleet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_job_rolls_out_to_every_thing_through_a_running_emulator(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    script = handlers / "mark.sh"
    # Each device's handler leaves a file named after its thing (scripts get the thing name).
    script.write_text(f'#!/bin/sh\ntouch "{marks}/$JOBS_AGENT_THING_NAME"\n')
    script.chmod(0o755)
    document = tmp_path / "job.json"
    document.write_text(json.dumps({"operation": "mark.sh"}))
    prefix = f"t{uuid.uuid4().hex[:6]}-"

    code, stdout, stderr = await _fleet(
        "--things",
        str(THINGS),
        "--prefix",
        prefix,
        "--broker-port",
        str(mosquitto.port),
        "--endpoint",
        str(emulator.http_endpoint),
        "--document",
        str(document),
        "--handler-dir",
        str(handlers),
        "--state-dir",
        str(tmp_path / "state"),
        "--job-id",
        "rollout-1",
        "--json",
    )

    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["outcomes"] == {"SUCCEEDED": THINGS}
    assert summary["finished"] is True
    assert summary["requests"] >= 2 * THINGS  # start-next and the final update per device
    things = [f"{prefix}{i:04d}" for i in range(1, THINGS + 1)]
    # the service's view, not only the devices' own
    for thing in things:
        assert emulator.service.execution("rollout-1", thing).status is ExecutionStatus.SUCCEEDED
    assert sorted(p.name for p in marks.iterdir()) == things  # each handler ran, once
    assert all((tmp_path / "state" / t / "state.db").is_file() for t in things)


async def test_a_document_no_handler_accepts_is_rejected_everywhere_and_fails(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Without --endpoint the command hosts the emulator itself; a failed rollout exits 1."""
    document = tmp_path / "job.json"
    document.write_text(json.dumps({"operation": "no-such-handler"}))

    code, stdout, stderr = await _fleet(
        "--things",
        "5",
        "--prefix",
        f"r{uuid.uuid4().hex[:6]}-",
        "--broker-port",
        str(mosquitto.port),
        "--document",
        str(document),
        "--handler-dir",
        str(tmp_path),
        "--json",
    )

    assert code == 1, stderr
    summary = json.loads(stdout)
    assert summary["outcomes"] == {"REJECTED": 5}
    assert summary["emulator_requests"] >= 10
    assert "created job" in stderr  # progress goes to stderr when the summary is JSON


async def test_bad_usage_exits_2_without_connecting(tmp_path: Path) -> None:
    code, _, stderr = await _fleet("--things", "0", "--broker-port", "1")
    assert code == 2
    assert "--things must be at least 1" in stderr
