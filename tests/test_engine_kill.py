"""Kill tests: the real `jobs-agent run` process SIGKILLed at each durable transition, restarted.

The kill is placed exactly by the engine's crash points (`JOBS_AGENT_CRASH_AT`: the process
SIGKILLs itself right after writing that transition), not by sleeping and hoping. After the
restart every job must end with exactly one terminal status, and the handlers' own side-effect
logs must show that no non-resumable step ran twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.readings import Readings
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    side_effects,
    start_emulator,
    terminal_statuses,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)
from tests.helpers.strace import strace_attached

THING = f"gw-kill-{os.getpid()}"
"""Unique to this test process: a restarted agent stops the handlers it finds by their thing
name, job id and execution number anywhere on the machine (engine/orphans.py), so another test
session running the same test beside this one (same thing, job "orphan", execution 1) could
stop this one's handler before this agent looks for it (seen once in a full run on a machine
shared by several runs: no "stopped the handler" line, the handler already gone)."""
PRESIGNED = "${aws:iot:s3-presigned-url:https://bucket.s3.amazonaws.com/firmware.bin}"


@pytest.fixture
def emulator_options(readings: Readings) -> dict[str, object]:
    """Every test here that uses the `emulator` runs under each reading of the points AWS leaves
    silent (the shared `readings`)."""
    return {"readings": readings}


def _agent(tmp_path: Path, mosquitto: Mosquitto, **jobs: object) -> AgentProcess:
    config = agent_config(tmp_path, mosquitto.port, thing=THING, **jobs)  # type: ignore[arg-type]
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path)


def _plugin(tmp_path: Path) -> Path:
    """A resumable Python plugin, importable by the agent process through PYTHONPATH."""
    package = tmp_path / "plugins"
    package.mkdir()
    log = tmp_path / "side-effects.log"
    (package / "resumable_plugin.py").write_text(
        textwrap.dedent(
            f"""
            class Resumable:
                name = "resumable"
                resumable = True

                async def run(self, ctx):
                    with open({str(log)!r}, "a") as f:
                        f.write(f"{{ctx.job_id}} resumed={{ctx.resumed}} "
                                f"checkpoint={{ctx.checkpoint_data}}\\n")
                    await ctx.checkpoint({{"stage": "done"}})
                    return {{"result": "ok"}}
            """
        )
    )
    return package


async def _kill_and_restart(agent: AgentProcess, point: str) -> None:
    agent.start(JOBS_AGENT_CRASH_AT=point)
    code = await agent.wait_exit(timeout=30)
    assert code == -signal.SIGKILL, f"expected the crash at {point}:\n{agent.log_text()}"
    agent.start()
    await agent.wait_ready()


@pytest.mark.parametrize(
    ("point", "expected", "runs", "reason"),
    [
        ("taken", "SUCCEEDED", 1, None),  # started by the service, not yet recorded
        ("started", "SUCCEEDED", 1, None),
        ("running", "FAILED", 0, "agent restarted while the step was running"),
        ("handler_done", "FAILED", 1, "agent restarted while the step was running"),
        ("decided", "SUCCEEDED", 1, None),
        ("report_accepted", "SUCCEEDED", 1, None),
        ("reported", "SUCCEEDED", 1, None),  # its job directory not yet removed
    ],
)
async def test_kill_at_each_transition_reports_exactly_once(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    point: str,
    expected: str,
    runs: int,
    reason: str | None,
) -> None:
    log = tmp_path / "side-effects.log"
    write_handler(
        tmp_path / "handlers",
        "flash",
        f"""#!/bin/sh
echo "$JOBS_AGENT_JOB_ID $JOBS_AGENT_EXECUTION_NUMBER" >> {log}
""",
    )
    agent = _agent(tmp_path, mosquitto)
    try:
        # The presigned URL is re-signed on every delivery: the restarted agent must still
        # recognise the execution by (jobId, executionNumber).
        emulator.service.create_job(
            f"kill-{point}", [THING], {"operation": "flash", "args": [PRESIGNED]}
        )
        await _kill_and_restart(agent, point)
        execution = await wait_terminal(emulator, f"kill-{point}", THING, timeout=30)
        assert str(execution.status) == expected, agent.log_text()
        if reason:
            assert execution.status_details["reason"] == reason
        assert terminal_statuses(emulator, f"kill-{point}") == [expected]
        assert len(side_effects(log)) == runs
        # The agent keeps serving after the recovery.
        emulator.service.create_job(f"after-{point}", [THING], {"operation": "flash"})
        after = await wait_terminal(emulator, f"after-{point}", THING, timeout=30)
        assert str(after.status) == "SUCCEEDED"
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_kill_while_running_resumable_handler_resumes(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    package = _plugin(tmp_path)
    (tmp_path / "handlers").mkdir(mode=0o755)
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config) + "handlers:\n  resumable: resumable_plugin:Resumable\n")
    agent = AgentProcess(config_path=path, workdir=tmp_path, env={"PYTHONPATH": str(package)})
    try:
        emulator.service.create_job("resume-me", [THING], {"operation": "resumable"})
        await _kill_and_restart(agent, "running")
        execution = await wait_terminal(emulator, "resume-me", THING, timeout=30)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert execution.status_details["result"] == "ok"
        assert side_effects(tmp_path / "side-effects.log") == [
            "resume-me resumed=True checkpoint=None"
        ]
        assert terminal_statuses(emulator, "resume-me") == ["SUCCEEDED"]
    finally:
        agent.kill()


def _reboot_job(tmp_path: Path) -> tuple[dict[str, object], Path, Path]:
    log = tmp_path / "side-effects.log"
    write_handler(
        tmp_path / "handlers",
        "after-boot",
        f"""#!/bin/sh
echo "after-boot $JOBS_AGENT_JOB_ID rebooted=$JOBS_AGENT_REBOOTED" >> {log}
""",
    )
    requests = tmp_path / "reboot-requests.log"
    fake_reboot = write_handler(
        tmp_path / "bin",
        "fake-reboot",
        f"""#!/bin/sh
echo reboot >> {requests}
""",
    )
    document = {
        "version": "1.0",
        "steps": [
            {"action": {"name": "Reboot", "type": "runHandler", "input": {"handler": "reboot.sh"}}},
            {"action": {"name": "Check", "type": "runHandler", "input": {"handler": "after-boot"}}},
        ],
    }
    return document, log, fake_reboot


@pytest.mark.parametrize("boot_id_changes", [True, False])
async def test_reboot_job_completes_only_after_the_boot_id_changes(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, boot_id_changes: bool
) -> None:
    document, log, fake_reboot = _reboot_job(tmp_path)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    agent = _agent(
        tmp_path,
        mosquitto,
        reboot_command=(str(fake_reboot),),
        boot_id_path=boot_id,
    )
    requests = tmp_path / "reboot-requests.log"
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("reboot-job", [THING], document)
        await wait_until(requests.exists, 30, "the reboot command")
        execution = emulator.service.execution("reboot-job", THING)
        assert str(execution.status) == "IN_PROGRESS"
        await emulator.service.wait_for(
            lambda: (
                emulator.service.execution("reboot-job", THING).status_details.get("reboot")
                == "requested"
            ),
            10,
        )
        assert side_effects(log) == []  # step 2 waits for the boot
        # systemd stops the agent for the reboot; the device comes back (or does not).
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        if boot_id_changes:
            boot_id.write_text("boot-2\n")
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "reboot-job", THING, timeout=30)
        if boot_id_changes:
            assert str(execution.status) == "SUCCEEDED", agent.log_text()
            assert side_effects(log) == ["after-boot reboot-job rebooted=1"]
        else:
            assert str(execution.status) == "FAILED"
            assert "did not reboot (boot id unchanged)" in execution.status_details["reason"]
            assert side_effects(log) == []
        assert side_effects(requests) == ["reboot"]
        assert terminal_statuses(emulator, "reboot-job") == [str(execution.status)]
    finally:
        agent.kill()


async def test_kill_while_awaiting_reboot_without_reboot_fails_clearly(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    document, log, fake_reboot = _reboot_job(tmp_path)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    agent = _agent(tmp_path, mosquitto, reboot_command=(str(fake_reboot),), boot_id_path=boot_id)
    try:
        emulator.service.create_job("reboot-crash", [THING], document)
        await _kill_and_restart(agent, "awaiting_reboot")
        execution = await wait_terminal(emulator, "reboot-crash", THING, timeout=30)
        assert str(execution.status) == "FAILED"
        assert "did not reboot" in execution.status_details["reason"]
        assert not (tmp_path / "reboot-requests.log").exists()
        assert side_effects(log) == []
    finally:
        agent.kill()
        await asyncio.sleep(0)


async def test_job_cancelled_while_the_agent_is_down_is_closed_locally(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Killed mid-job, the job force-cancelled while the agent is away: after the restart the
    local record is closed (not left "running" forever) and nothing is reported for it."""
    write_handler(tmp_path / "handlers", "long", "#!/bin/sh\nsleep 600\n")
    agent = _agent(tmp_path, mosquitto)
    try:
        emulator.service.create_job("cancel-away", [THING], {"operation": "long"})
        agent.start(JOBS_AGENT_CRASH_AT="running")
        assert await agent.wait_exit(timeout=30) == -signal.SIGKILL
        emulator.service.cancel_job("cancel-away", force=True)
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("next-one", [THING], {"operation": "no-such"})
        await wait_terminal(emulator, "next-one", THING, timeout=30)
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobs_agent",
            "status",
            "--json",
            "--config",
            str(agent.config_path),
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await status.communicate()
        report = json.loads(stdout)
        assert report["running"] == [] and report["outbox"] == []
        closed = [r for r in report["recent"] if r["job_id"] == "cancel-away"]
        assert closed and closed[0]["state"] == "cancelled"
        history = emulator.service.history(job_id="cancel-away")
        canceled_at = next(i for i, h in enumerate(history) if str(h.to_status) == "CANCELED")
        assert all(str(h.source) != "device" for h in history[canceled_at + 1 :])
        assert terminal_statuses(emulator, "cancel-away") == ["CANCELED"]
    finally:
        agent.kill()


async def test_handler_left_running_by_a_killed_agent_is_stopped_before_the_report(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Outside systemd a SIGKILLed agent leaves its handler's process group running. The
    restarted agent stops it before reporting the step FAILED, so the step never runs on after
    its outcome was reported (or alongside a second run)."""
    pids = tmp_path / "pids"
    write_handler(
        tmp_path / "handlers",
        "forever",
        f"""#!/bin/sh
sleep 600 &
echo "$$ $!" > {pids}.tmp && mv {pids}.tmp {pids}
wait
""",
    )
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("orphan", [THING], {"operation": "forever"})
        await wait_until(pids.exists, 15, "the handler to start")
        shell_pid, sleep_pid = (int(p) for p in pids.read_text().split())
        agent.kill()  # SIGKILL: the handler's own process group survives it
        await agent.wait_exit()
        assert not await wait_pid_gone(shell_pid, 0.2), "the handler should have outlived the agent"
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "orphan", THING, timeout=30)
        assert str(execution.status) == "FAILED"
        assert execution.status_details["reason"] == "agent restarted while the step was running"
        assert await wait_pid_gone(shell_pid, 5) and await wait_pid_gone(sleep_pid, 5)
        assert "stopped the handler an earlier agent left running" in agent.log_text()
    finally:
        agent.kill()


@pytest.fixture
async def one_emulator(mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    """The emulator under its default readings (the durability tests below do not depend on
    the points AWS leaves silent)."""
    emu = await start_emulator(mosquitto.port)
    yield emu
    await emu.stop()


def _counting_handler(tmp_path: Path) -> Path:
    log = tmp_path / "side-effects.log"
    write_handler(
        tmp_path / "handlers",
        "flash",
        f"""#!/bin/sh
echo "$JOBS_AGENT_JOB_ID $JOBS_AGENT_EXECUTION_NUMBER" >> {log}
""",
    )
    return log


@pytest.mark.parametrize("marker_lost", [False, True])
async def test_a_power_cut_that_loses_the_unsynced_start_record_never_runs_a_job_twice(
    tmp_path: Path, mosquitto: Mosquitto, one_emulator: Emulator, marker_lost: bool
) -> None:
    """The record of an execution start-next took is written first in the store's next
    transaction, the durable RUNNING one (issue 18: no commit of its own). A kill -9 or a power
    cut before that loses it: the kill at `started` (the record made, the handler not launched)
    leaves no row, as a lost page would. The start-next marker must still be there, so the
    restarted agent runs the job, once; if the marker is lost too, the job is FAILED as a lost
    record, and still never run twice."""
    log = _counting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto)
    database = tmp_path / "state" / "state.db"
    marker = database.with_name("state.db.taking")
    try:
        one_emulator.service.create_job("cut", [THING], {"operation": "flash"})
        agent.start(JOBS_AGENT_CRASH_AT="started")
        assert await agent.wait_exit(timeout=30) == -signal.SIGKILL, agent.log_text()
        assert marker.exists(), "the marker must outlive a record that is not on disk yet"
        with contextlib.closing(sqlite3.connect(database)) as db:
            assert db.execute("SELECT state FROM executions").fetchall() == []
        if marker_lost:
            marker.unlink()
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(one_emulator, "cut", THING, timeout=30)
        if marker_lost:
            assert str(execution.status) == "FAILED"
            assert "lost its record" in execution.status_details["reason"]
            assert side_effects(log) == []
        else:
            assert str(execution.status) == "SUCCEEDED", agent.log_text()
            assert len(side_effects(log)) == 1
        assert len(terminal_statuses(one_emulator, "cut")) == 1
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_a_job_costs_two_fsyncs_of_the_state_database(
    tmp_path: Path, mosquitto: Mosquitto, one_emulator: Emulator
) -> None:
    """Counted by strace on the real agent process: RUNNING and DECIDED are fsynced, the start
    record and REPORTED ride on them (docs/architecture.md, notes on durability). The earlier
    agent fsynced all four. A step that outlives `jobs.progress_interval_seconds` is reported
    (and recorded) at 0 %, which a loaded machine made happen with the harness's 0.1 s, and
    can with the default 5 s (strace attached slows the agent and its script): the longest
    interval here (an hour), so that only the job's own records are counted. Counted from the
    second job: the first write after a start makes the WAL again (its header's sync), as after
    every restart (the database is made without one, `Store._make_if_new`)."""
    _counting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto, progress_interval_seconds=3600.0)
    database = tmp_path / "state" / "state.db"
    trace = tmp_path / "fsyncs.trace"
    jobs = 3

    def reported(count: int) -> Callable[[], bool]:
        def all_reported() -> bool:
            with contextlib.closing(sqlite3.connect(database)) as db:
                rows = db.execute("SELECT state FROM executions").fetchall()
            return rows == [("reported",)] * count

        return all_reported

    try:
        agent.start()
        await agent.wait_ready()
        assert agent.process is not None
        one_emulator.service.create_job("fsync-first", [THING], {"operation": "flash"})
        await wait_until(reported(1), 30, "the first job reported")
        async with strace_attached(agent.process.pid, trace, "fsync,fdatasync"):
            before = _wal_fsyncs(trace)
            for number in range(jobs):
                one_emulator.service.create_job(f"fsync-{number}", [THING], {"operation": "flash"})
            await wait_until(reported(jobs + 1), 30, "every job reported")
        assert _wal_fsyncs(trace) - before == 2 * jobs, trace.read_text()[-3000:]
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def _wal_fsyncs(trace: Path) -> int:
    return sum("state.db-wal>" in line for line in trace.read_text().splitlines())
