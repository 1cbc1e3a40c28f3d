"""What a script job makes and removes on the file system, counted by strace on a real agent.

A script job's cost to the agent was a third kernel time, much of it ext4 and cgroupfs making
inodes right after removing others (issue 18). Per job, the agent's own threads (never the
step's processes) are traced while real jobs run a real script through the real spawn chain
in a real cgroup: every directory made or removed, every file created or unlinked, and the
calls a buffered log file made. Counts, never times.

Per script job, what is left (each documented):
* the job's directory, its `scratch-<n>` (the step's working directory, holding
  `document.json`) and its `state` (`JOBS_AGENT_STATE_DIR`): made, and removed once the
  outcome is reported;
* the step's cgroup (containment): made, and removed when the step ends; the agent's base
  cgroup above it stays between steps;
* the output log (`<state_dir>/logs/<jobId>-<n>.log`), kept within `jobs.output_logs_max_*`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.dispatch.containment import ContainmentError, containment_for
from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    start_emulator,
    wait_until,
    write_handler,
)

THING = f"gw-files-{os.getpid()}"
TRACED = "mkdir,mkdirat,rmdir,unlink,unlinkat,open,openat,creat,execve,fchmod,lseek"
OWN_FILES = ("agent.json", "state.db")
"""The agent's own state files (status, database): not the job's, and written by their own
rules (a status change, a commit), which the fsync test of test_engine_kill.py counts."""

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


@pytest.fixture
async def emulator(mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    emu = await start_emulator(mosquitto.port)
    yield emu
    await emu.stop()


def _agent(tmp_path: Path, mosquitto: Mosquitto) -> AgentProcess:
    try:
        containment_for("cgroup", tmp_path / "state")
    except ContainmentError as exc:
        pytest.skip(f"no writable cgroup v2 hierarchy here: {exc}")
    write_handler(tmp_path / "handlers", "noop.sh", "#!/bin/sh\nexit 0\n")
    # The default progress interval: a step that outlives a short one is reported at 0 %.
    config = agent_config(
        tmp_path, mosquitto.port, thing=THING, containment="cgroup", progress_interval_seconds=5.0
    )
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path)


async def _run_jobs(tmp_path: Path, emulator: Emulator, first: int, count: int) -> None:
    """Queue `count` script jobs; return once each is reported and its directory removed."""
    for number in range(first, first + count):
        emulator.service.create_job(f"files-{number}", [THING], {"operation": "noop.sh"})
    database = tmp_path / "state" / "state.db"
    jobs = tmp_path / "state" / "jobs" / "default"

    def done() -> bool:
        with contextlib.closing(sqlite3.connect(database)) as db:
            rows = db.execute("SELECT state FROM executions").fetchall()
        cleaned = not jobs.exists() or not any(jobs.iterdir())
        return rows == [("reported",)] * (first + count) and cleaned

    await wait_until(done, 60, "every job reported and its directory removed")


def _agent_calls(trace: Path) -> collections.Counter[str]:
    """The traced calls of the agent's own threads, by kind: a process that executes anything
    (the spawn chain, its script) is a step's, not the agent's."""
    lines = [line.split(None, 1) for line in trace.read_text().splitlines() if line[:1].isdigit()]
    children = {pid for pid, text in lines if text.startswith("execve(")}
    calls: collections.Counter[str] = collections.Counter()
    for pid, text in lines:
        match = re.match(r"(\w+)\(", text)
        if pid in children or match is None or any(name in text for name in OWN_FILES):
            continue
        name = match.group(1)
        if name in ("open", "openat", "creat"):
            name = "create" if name == "creat" or "O_CREAT" in text else "open"
        elif name == "unlinkat":
            name = "rmdir" if "AT_REMOVEDIR" in text else "unlink"
        calls[name.removesuffix("at") if name == "mkdirat" else name] += 1
    return calls


async def test_a_script_job_makes_and_removes_only_what_its_protocol_needs(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Per job: four directories made and removed (the job's, its scratch and state, the step's
    cgroup), two files created (the output log, `document.json`) and one unlinked
    (`document.json`: the log stays), the log written through its descriptor (no `lseek`,
    no `fchmod` of a log that is already private). The earlier agent made and removed the
    agent's base cgroup around every step, made the job's directories with one refused
    `mkdir` (no parent yet), removed them with `shutil.rmtree` (a listing of each, `lseek`),
    and opened the log as a buffered file (three `lseek`, an `fchmod`)."""
    agent = _agent(tmp_path, mosquitto)
    trace = tmp_path / "files.trace"
    jobs = 3
    try:
        agent.start()
        await agent.wait_ready()
        assert agent.process is not None
        # The first job makes what every later one finds (the logs and jobs directories,
        # the agent's base cgroup after the start's sweep): outside the count.
        await _run_jobs(tmp_path, emulator, 0, 1)
        messages = tmp_path / "strace.err"
        with messages.open("wb") as stderr:
            strace = subprocess.Popen(
                ["strace", "-f", "-e", f"trace={TRACED}", "-o", str(trace),
                 "-p", str(agent.process.pid)],
                stderr=stderr,
            )  # fmt: skip
        try:
            # "Process N attached (with M threads)": every thread is traced from then on.
            await wait_until(
                lambda: b"attached" in messages.read_bytes() or strace.poll() is not None,
                30,
                "strace",
            )
            if strace.poll() is not None:
                pytest.skip(f"strace cannot trace here: {messages.read_text(errors='replace')}")
            await _run_jobs(tmp_path, emulator, 1, jobs)
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(timeout=10)
        calls = _agent_calls(trace)
        per_job = {name: calls[name] / jobs for name in ("mkdir", "rmdir", "create", "unlink")}
        assert per_job == {"mkdir": 4, "rmdir": 4, "create": 2, "unlink": 1}, calls
        assert calls["lseek"] == 0 and calls["fchmod"] == 0, calls
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
