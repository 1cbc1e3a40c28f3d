"""`jobs-agent sim fleet`: N real engines in one process, one job rolled out to all of them.

Real parts: the session mosquitto broker, the `jobs-agent` command as a subprocess, the
emulator (in the test for the first test, so the service's own records are checked; inside the
command for the second), real script handlers and SQLite stores on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator import ExecutionStatus
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.sim.fleet import DESCRIPTORS_PER_THING
from jobs_agent.sim.fleet_watch import (
    ENDED_BY_SERVICE,
    NOT_REPORTED,
    Watchdog,
    final_of,
    stalled,
)
from jobs_agent.sim.fleet_workers import shares
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto
from tests.harness import wait_until

THINGS = 20
JOBS_AGENT = [sys.executable, "-m", "jobs_agent"]


@pytest.fixture
def emulator_options() -> dict[str, object]:
    """The fleet command reaches the test's emulator over its HTTP endpoint (--endpoint)."""
    return {"tick_seconds": None, "http_port": 0}


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


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_rollout_counts_the_jobs_requests_only(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path, processes: int
) -> None:
    """The job is created once every device has looked for work (its first reconciliation and
    start-next answered), as a real fleet is idle when a rollout begins: the rollout's requests
    are the job's own, and the devices' start-up requests (a GetPendingJobExecutions and a
    start-next each) are all served before. A job created while thousands of devices were
    still starting counted their start-up requests too: 4.2 to 5 a device in round 11's
    benchmark runs, depending on how much of the start-up the rollout overlapped."""
    before = Counter(emulator.service.counters)
    code, stdout, stderr = await _fleet(
        *("--things", str(THINGS), "--prefix", f"r{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--endpoint", str(emulator.http_endpoint)),
        *("--state-dir", str(tmp_path / "state"), "--handler-dir", str(tmp_path), "--json"),
        *("--processes", str(processes)),
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["outcomes"] == {"SUCCEEDED": THINGS}
    served = Counter(emulator.service.counters)
    served.subtract(before)
    assert served["GetPendingJobExecutions"] == THINGS
    start_up = 2 * THINGS  # GetPendingJobExecutions and start-next, each device
    assert summary["settled"] is True  # counted once every device was idle
    assert summary["requests"] == served.total() - start_up


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


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc, as an operator would look)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # the command name may hold spaces: the fields after it start past its ')'
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def _until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def _serving_fleet(*args: str) -> asyncio.subprocess.Process:
    """`sim fleet --no-job ...`, returned once it printed that its devices are ready. (The
    tests run it beside the `emulator` fixture: a device stops once its request in flight is
    answered, up to the request timeout without a service.)"""
    process = await asyncio.create_subprocess_exec(
        *JOBS_AGENT,
        "sim",
        "fleet",
        "--no-job",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        while not (line := await process.stdout.readline()).startswith(b"ready:"):
            assert line, (await process.communicate())[1].decode()
    return process


async def test_processes_share_the_fleet_and_report_it_as_one(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """--processes 2: two workers, each with half the things, one summary for all of them."""
    marks = tmp_path / "marks"
    marks.mkdir()
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    script = handlers / "mark.sh"
    script.write_text(f'#!/bin/sh\necho $PPID >> "{marks}/$JOBS_AGENT_THING_NAME"\n')
    script.chmod(0o755)
    document = tmp_path / "job.json"
    document.write_text(json.dumps({"operation": "mark.sh"}))
    prefix = f"p{uuid.uuid4().hex[:6]}-"

    code, stdout, stderr = await _fleet(
        *("--things", str(THINGS), "--processes", "2", "--prefix", prefix),
        *("--broker-port", str(mosquitto.port), "--endpoint", str(emulator.http_endpoint)),
        *("--document", str(document), "--handler-dir", str(handlers)),
        *("--state-dir", str(tmp_path / "state"), "--job-id", "spread-1", "--json"),
    )

    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["outcomes"] == {"SUCCEEDED": THINGS}
    assert summary["processes"] == 2 and summary["finished"] is True
    assert summary["requests"] >= 2 * THINGS
    things = [f"{prefix}{i:04d}" for i in range(1, THINGS + 1)]
    for thing in things:
        assert emulator.service.execution("spread-1", thing).status is ExecutionStatus.SUCCEEDED
    assert sorted(p.name for p in marks.iterdir()) == things
    # each handler ran once, and the two halves ran in two different processes
    runners = [(marks / t).read_text().split() for t in things]
    assert all(len(r) == 1 for r in runners)
    first, second = {r[0] for r in runners[: THINGS // 2]}, {r[0] for r in runners[THINGS // 2 :]}
    assert len(first) == 1 and len(second) == 1 and first != second


async def test_sigterm_to_the_parent_stops_every_worker(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    process = await _serving_fleet(
        *("--things", "6", "--processes", "3", "--prefix", f"s{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--state-dir", str(tmp_path / "state")),
        *("--handler-dir", str(tmp_path)),
    )
    workers = _children(process.pid)
    assert len(workers) == 3 and all(_running(w) for w in workers)

    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, stderr.decode()
    assert not [w for w in workers if _running(w)]  # reaped by the parent before it exited


async def test_workers_stop_when_their_parent_is_killed(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """SIGKILL leaves the parent no chance to stop anyone: the workers see their stdin close."""
    process = await _serving_fleet(
        *("--things", "4", "--processes", "2", "--prefix", f"k{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--state-dir", str(tmp_path / "state")),
        *("--handler-dir", str(tmp_path)),
    )
    workers = _children(process.pid)
    assert len(workers) == 2

    process.kill()
    await process.wait()

    await _until(lambda: not [w for w in workers if _running(w)], "workers left running")


async def test_a_worker_that_dies_fails_the_fleet(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    process = await _serving_fleet(
        *("--things", "4", "--processes", "2", "--prefix", f"d{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--state-dir", str(tmp_path / "state")),
        *("--handler-dir", str(tmp_path)),
    )
    workers = _children(process.pid)

    os.kill(workers[0], signal.SIGKILL)
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 1
    assert b"ended (exit status -9) before its devices were done" in stdout
    assert not [w for w in workers if _running(w)]


def _open_files(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            targets.append(os.readlink(fd))
    return targets


async def test_a_device_holds_the_descriptors_the_limit_check_counts(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """Its socket, its database and the WAL: no shared-memory file (exclusive locking), and
    the start-next marker is not held open between jobs (it was a fourth descriptor: 4,900
    things fitted under a limit of 20,000, not 5,000). The limit check counts
    `DESCRIPTORS_PER_THING`: a count below what a device holds let a 10,000-thing fleet over
    2 processes run out of descriptors mid-rollout."""
    things = 10
    asked = emulator.service.counters["StartNextPendingJobExecution"]
    process = await _serving_fleet(
        *("--things", str(things), "--prefix", f"f{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--state-dir", str(tmp_path / "state")),
        *("--handler-dir", str(tmp_path)),
    )
    try:
        # Every device's first start-next was answered and recorded (the store made its
        # marker before the request, emptied it after the answer): no store is writing its
        # marker now (one made but not yet written is empty, but its request unanswered).

        # A device may look again (a resync after its connect), opening its marker for a
        # moment: the listing is taken when no marker is open, and a marker held open between
        # looks never gets there (the wait times out).
        targets: list[str] = []

        def markers_emptied_and_closed() -> bool:
            if emulator.service.counters["StartNextPendingJobExecution"] - asked < things:
                return False
            markers = list((tmp_path / "state").glob("*/state.db.taking"))
            if len(markers) != things or any(m.stat().st_size for m in markers):
                return False
            targets[:] = _open_files(process.pid)
            return not [t for t in targets if t.endswith(".taking")]

        await wait_until(
            markers_emptied_and_closed, 30, "every device's start-next marker, emptied and closed"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 60)

    assert sum(t.endswith("/state.db") for t in targets) == things
    assert sum(t.endswith("/state.db-wal") for t in targets) == things
    assert not [t for t in targets if t.endswith("-shm")]
    assert not [t for t in targets if t.endswith(".taking")]
    assert sum(t.startswith("socket:") for t in targets) <= things + 4
    state_files = [t for t in targets if t.startswith(str(tmp_path / "state"))]
    assert len(state_files) <= things * (DESCRIPTORS_PER_THING - 1), state_files


async def test_a_fleet_too_big_for_the_descriptor_limit_is_refused_with_what_fits(
    tmp_path: Path,
) -> None:
    code, _, stderr = await _fleet("--things", "1000000", "--broker-port", "1")
    assert code == 2
    assert "at most" in stderr and "things per process; use --processes" in stderr


def test_shares_cover_every_thing_once() -> None:
    assert shares(10, 3) == [range(1, 5), range(5, 8), range(8, 11)]
    assert shares(2, 2) == [range(1, 2), range(2, 3)]


async def test_a_second_jobs_service_on_the_broker_is_named_instead_of_waited_out(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Issue 18's `--processes 2` fault: a `sim serve` left running on the fleet's broker
    answers every device request too, without knowing the job (nothing pending; the final
    UpdateJobExecution ResourceNotFound), and the rollout hung until its timeout. Real parts: a
    private mosquitto, the second service a real emulator, the fleet the real command."""
    config = ConnectionConfig(
        transport="paho", endpoint=fresh_mosquitto.host, port=fresh_mosquitto.port, tls=False
    )
    stray = Emulator(PahoTransport(config, "stray-sim-serve"), tick_seconds=None, http_port=0)
    await stray.start(connect_timeout=10)
    process = await asyncio.create_subprocess_exec(
        *JOBS_AGENT,
        *("sim", "fleet", "--things", str(THINGS), "--processes", "2"),
        *("--broker-port", str(fresh_mosquitto.port), "--state-dir", str(tmp_path / "state")),
        *("--timeout", "600", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await stray.stop()

    assert process.returncode == 1, stderr.decode()
    summary = json.loads(stdout)
    assert summary["finished"] is False
    assert "another Jobs service answers on this broker" in summary["problem"]
    assert b"stopped: the devices received" in stderr


def test_the_watchdog_tells_a_stall_from_a_long_job() -> None:
    """Pure bookkeeping (`sim.fleet_watch.Watchdog`), driven with explicit times."""
    counts: Counter[str] = Counter(SUCCEEDED=3)
    busy = 0
    watchdog = Watchdog(stall_seconds=120, now=0.0)
    assert watchdog.check(counts, 10, 0, lambda: busy, now=0.0) is None
    assert watchdog.check(counts, 10, 0, lambda: busy, now=119.0) is None
    busy = 1  # a handler running for minutes makes no requests: no stall
    assert watchdog.check(counts, 10, 0, lambda: busy, now=121.0) is None
    busy = 0
    assert watchdog.check(counts, 10, 0, lambda: busy, now=200.0) is None  # quiet since 121
    assert watchdog.check(counts, 10, 0, lambda: busy, now=241.0) == "stalled"
    assert watchdog.check(counts, 11, 0, lambda: busy, now=242.0) is None  # a request: alive
    assert "another Jobs service" in (watchdog.check(counts, 11, 2, lambda: 0, now=243.0) or "")
    assert Watchdog(0, 0.0).check(counts, 1, 0, lambda: 0, now=1e9) is None  # 0: never


def test_a_device_note_is_final_when_the_device_reports_nothing_more() -> None:
    assert final_of("SUCCEEDED") == "SUCCEEDED"
    assert final_of("not reported: service answered ResourceNotFound (execution is gone)") == (
        NOT_REPORTED
    )
    assert final_of("ended by the service (CANCELED)") == ENDED_BY_SERVICE
    assert final_of("cancelled: the job was cancelled") == ENDED_BY_SERVICE
    assert final_of("ended by the service (CANCELED); carried on") is None
    assert final_of("IN_PROGRESS") is None


def test_a_stall_report_names_what_the_service_still_holds() -> None:
    text = stalled(120.0, 10, Counter(SUCCEEDED=7), {"QUEUED": 3, "SUCCEEDED": 7})
    assert "3 of 10 devices never reported the job" in text
    assert "the service has QUEUED 3, SUCCEEDED 7" in text and "max_queued_messages" in text


class LookedAtFleet:
    """A fleet whose devices all report after `looks` looks at their outcomes, counting the
    watchdog's scans (each visits every device of a real fleet); `surplus` replies from the
    start: a second service."""

    def __init__(self, things: int, looks: int, surplus: int = 0, surplus_from: int = 0) -> None:
        self.thing_names = [f"looked-{n}" for n in range(things)]
        self.wanted = looks
        self.surplus = surplus
        self.surplus_from = surplus_from
        self.looks = 0
        self.scans = 0

    def outcomes(self, job_id: str) -> Counter[str]:
        self.looks += 1
        done = self.looks >= self.wanted
        return Counter(SUCCEEDED=len(self.thing_names)) if done else Counter(IN_PROGRESS=1)

    def requests(self) -> int:
        self.scans += 1
        return self.looks  # always moving: no stall

    def surplus_replies(self) -> int:
        return self.surplus if self.looks >= self.surplus_from else 0

    def busy(self) -> int:
        return 0

    def failure(self) -> None:
        return None


async def test_the_rollout_watch_visits_every_device_once_a_second_not_at_every_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outcomes are looked at 20 times a second (only the devices still working are
    visited); the watchdog's signs visit every device, and took 20 ms a look at 1,000 things
    under load: they are taken every `_SCAN_EVERY` looks. A second service is still named."""
    from jobs_agent.commands import sim_fleet

    monkeypatch.setattr(sim_fleet, "_WATCH_SECONDS", 0.001)
    args = argparse.Namespace(
        things=10, stall_timeout=120.0, progress_interval=0, timeout=600.0, json=True
    )
    fleet = LookedAtFleet(10, looks=3 * sim_fleet._SCAN_EVERY)
    finished, counts, problem = await sim_fleet._watch(
        args, fleet, None, "job", time.monotonic(), asyncio.Event()
    )
    assert finished is not None and problem is None and counts["SUCCEEDED"] == 10
    assert fleet.looks == 3 * sim_fleet._SCAN_EVERY
    # Looks 1, 21 and 41, and the last, which found every device done.
    assert fleet.scans == 4, f"{fleet.scans} scans of every device in {fleet.looks} looks"

    second = LookedAtFleet(10, looks=10**9, surplus=1)
    finished, _, problem = await sim_fleet._watch(
        args, second, None, "job", time.monotonic(), asyncio.Event()
    )
    assert finished is None and "another Jobs service" in (problem or "")

    # Answered twice from the third look on, every device done at the fifth, between scans:
    # the look that finds them done takes the signs too, and names the second service.
    late = LookedAtFleet(10, looks=5, surplus=1, surplus_from=3)
    finished, _, problem = await sim_fleet._watch(
        args, late, None, "job", time.monotonic(), asyncio.Event()
    )
    assert finished is None and "another Jobs service" in (problem or "")
