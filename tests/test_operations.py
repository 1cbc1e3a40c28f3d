"""Operations: sd_notify on a real NOTIFY_SOCKET, real signals to a real `jobs-agent run`
process (graceful and immediate stop, reload), the watchdog, and the read-only dry run."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    awscrt_connection,
    config_yaml,
    side_effects,
    terminal_statuses,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-ops"


def _waiting_handler(tmp_path: Path) -> tuple[Path, Path]:
    release = tmp_path / "release"
    pids = tmp_path / "pids"
    write_handler(
        tmp_path / "handlers",
        "wait",
        f"""#!/bin/sh
echo $$ > {pids}
printf '{{"percent": 30, "message": "waiting"}}\\n' >&3
while [ ! -e {release} ]; do sleep 0.05; done
echo released
""",
    )
    return release, pids


def _agent(tmp_path: Path, mosquitto: Mosquitto, extra: str = "", **jobs: object) -> AgentProcess:
    config = agent_config(tmp_path, mosquitto.port, thing=THING, **jobs)  # type: ignore[arg-type]
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config) + extra)
    return AgentProcess(config_path=path, workdir=tmp_path)


async def test_ready_status_and_stopping_on_the_notify_socket(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    release, _ = _waiting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("status-job", [THING], {"operation": "wait"})
        status = await agent.wait_message("STATUS=running status-job#1")
        assert "status-job" in status
        release.touch()
        await wait_terminal(emulator, "status-job", THING)
        agent.signal(signal.SIGTERM)
        await agent.wait_message("STOPPING=1")
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_sigterm_lets_the_running_step_finish_and_takes_no_new_job(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    release, pids = _waiting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto, stop_timeout_seconds=30)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("first", [THING], {"operation": "wait"})
        await wait_until(pids.exists, 10, "the handler to start")
        emulator.service.create_job("second", [THING], {"operation": "wait"})
        agent.signal(signal.SIGTERM)
        await agent.wait_message("STOPPING=1")
        release.touch()  # the step finishes within the stop timeout
        assert await agent.wait_exit() == 0
        assert str(emulator.service.execution("first", THING).status) == "SUCCEEDED"
        second = emulator.service.execution("second", THING)
        assert str(second.status) == "QUEUED" and second.version_number == 1
    finally:
        agent.kill()


async def test_second_sigterm_stops_at_once_and_says_why(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    _, pids = _waiting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto, stop_timeout_seconds=600)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("stuck", [THING], {"operation": "wait"})
        await wait_until(
            lambda: pids.exists() and pids.read_text().endswith("\n"), 10, "the handler to start"
        )
        handler_pid = int(pids.read_text())
        agent.signal(signal.SIGTERM)
        await agent.wait_message("STOPPING=1")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=15) == 0
        assert await wait_pid_gone(handler_pid, 5)
        execution = emulator.service.execution("stuck", THING)
        assert str(execution.status) == "FAILED"
        assert execution.status_details["reason"] == (
            "the agent was stopped while the step was running"
        )
    finally:
        agent.kill()


def _suspending_plugin(tmp_path: Path) -> Path:
    package = tmp_path / "plugins"
    package.mkdir()
    log = tmp_path / "side-effects.log"
    (package / "suspendable.py").write_text(
        textwrap.dedent(
            f"""
            class Suspendable:
                name = "suspendable"
                resumable = True

                async def run(self, ctx):
                    with open({str(log)!r}, "a") as f:
                        f.write(f"run resumed={{ctx.resumed}} "
                                f"checkpoint={{ctx.checkpoint_data}}\\n")
                    if ctx.checkpoint_data is None:
                        ctx.progress(40, "first half done")
                        await ctx.checkpoint({{"half": 1}})
                        await ctx.cancelled.wait()  # until the agent asks us to stop
                        return None
                    return {{"finished": "after resume"}}
            """
        )
    )
    return package


async def test_stop_suspends_a_resumable_handler_which_resumes_after_restart(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    package = _suspending_plugin(tmp_path)
    (tmp_path / "handlers").mkdir(mode=0o755)
    agent = _agent(
        tmp_path,
        mosquitto,
        extra="handlers:\n  suspendable: suspendable:Suspendable\n",
        stop_timeout_seconds=0.5,
    )
    agent.env["PYTHONPATH"] = str(package)
    log = tmp_path / "side-effects.log"
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("suspend-me", [THING], {"operation": "suspendable"})
        await wait_until(lambda: len(side_effects(log)) == 1, 10, "the first run")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        assert str(emulator.service.execution("suspend-me", THING).status) == "IN_PROGRESS"
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "suspend-me", THING)
        assert str(execution.status) == "SUCCEEDED"
        assert execution.status_details["finished"] == "after resume"
        assert side_effects(log) == [
            "run resumed=False checkpoint=None",
            "run resumed=True checkpoint={'half': 1}",
        ]
        assert terminal_statuses(emulator, "suspend-me") == ["SUCCEEDED"]
    finally:
        agent.kill()


async def test_sighup_reloads_without_dropping_the_connection_or_the_job(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    release, _ = _waiting_handler(tmp_path)
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("across-reload", [THING], {"operation": "wait"})
        await emulator.service.wait_for_status("across-reload", THING, "IN_PROGRESS")
        # An invalid file is refused and the old configuration kept.
        good = agent.config_path.read_text()
        agent.config_path.write_text(
            good.replace("kill_grace_seconds: 1.0", "kill_grace_seconds: x")
        )
        agent.signal(signal.SIGHUP)
        await agent.wait_message("RELOADING=1")
        refused = await agent.wait_message("STATUS=reload refused")
        assert "invalid configuration" in refused
        # A valid change is applied.
        agent.config_path.write_text(good.replace("level: debug", "level: warning"))
        agent.signal(signal.SIGHUP)
        await agent.wait_message("RELOADING=1")
        await agent.wait_message("STATUS=configuration reloaded")
        release.touch()
        execution = await wait_terminal(emulator, "across-reload", THING)
        assert str(execution.status) == "SUCCEEDED"
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        log = agent.log_text()
        assert "configuration reloaded" in log
        assert '"changed": ["log.level"]' in log  # reload says what changed (issue 13.12)
        assert "connection lost" not in log.lower()
        assert "reload refused" in log
    finally:
        agent.kill()


async def test_watchdog_is_withheld_while_the_event_loop_is_stuck(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A plugin that blocks the event loop (a bug systemd must recover from) stops the
    WATCHDOG=1 pings for as long as it blocks."""
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "blocker.py").write_text(
        "import time\n\n"
        "class Blocker:\n"
        "    name = 'blocker'\n"
        "    resumable = False\n\n"
        "    async def run(self, ctx):\n"
        "        time.sleep(2.0)  # blocks the whole event loop\n"
    )
    (tmp_path / "handlers").mkdir(mode=0o755)
    agent = _agent(tmp_path, mosquitto, extra="handlers:\n  blocker: blocker:Blocker\n")
    agent.env.update({"PYTHONPATH": str(package), "WATCHDOG_USEC": "300000"})
    try:
        agent.start()
        await agent.wait_ready()
        await agent.wait_message("WATCHDOG=1")
        emulator.service.create_job("block", [THING], {"operation": "blocker"})
        await wait_terminal(emulator, "block", THING)
        for _ in range(3):
            await agent.wait_message("WATCHDOG=1")
        pings = [t for t, line in agent.received if line == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) >= 1.5, gaps  # no ping while the loop was blocked
        assert min(gaps) < 0.3  # and regular pings otherwise
    finally:
        agent.kill()


async def test_dry_run_plans_every_pending_job_and_changes_nothing(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    marker = tmp_path / "ran"
    write_handler(tmp_path / "handlers", "install", f"#!/bin/sh\ntouch {marker}\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING, namespaces=("fleet-a",))
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    service = emulator.service
    service.create_job("plan-1", [THING], {"operation": "install", "args": ["pkg-1"]})
    service.create_job(
        "plan-2",
        [THING],
        {
            "version": "1.0",
            "steps": [
                {"action": {"name": "Echo", "type": "runCommand", "input": {"command": "echo,a b"}}}
            ],
        },
    )
    service.create_job("plan-bad", [THING], {"operation": "missing"})
    service.create_job("plan-ns", [THING], {"operation": "install"}, namespace="fleet-a")
    before = {
        j: service.execution(j, THING).version_number
        for j in ("plan-1", "plan-2", "plan-bad", "plan-ns")
    }
    # The emulator runs on this event loop: the dry run must not block it.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobs_agent",
        "run",
        "--dry-run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    result = subprocess.CompletedProcess(
        process.args if hasattr(process, "args") else [],
        process.returncode or 0,
        stdout.decode(),
        stderr.decode(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "job plan-1 execution 1: QUEUED" in out
    assert "install pkg-1 as root" in out or "pkg-1" in out
    assert "echo 'a b'" in out
    assert "plan-bad" in out and "would be REJECTED: no handler named 'missing'" in out
    assert "job plan-ns execution 1 namespace fleet-a: QUEUED" in out
    for job_id, version in before.items():
        execution = service.execution(job_id, THING)
        assert str(execution.status) == "QUEUED"
        assert execution.version_number == version
    assert not marker.exists()
    assert service.counters["StartNextPendingJobExecution"] == 0
    assert service.counters["UpdateJobExecution"] == 0


async def test_dry_run_watch_plans_new_jobs_as_they_come(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    write_handler(tmp_path / "handlers", "install", "#!/bin/sh\nexit 0\n")
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobs_agent",
        "run",
        "--dry-run",
        "--watch",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"watching for new jobs" not in await process.stdout.readline():
                pass
            emulator.service.create_job("late", [THING], {"operation": "install"})
            while b"job late execution 1: QUEUED" not in await process.stdout.readline():
                pass
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
        assert str(emulator.service.execution("late", THING).status) == "QUEUED"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_daemon_over_awscrt_with_mtls_runs_a_job(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The production transport end to end: `jobs-agent run` with awscrt (MQTT 5, mTLS with the
    generated device certificate) against mosquitto, the emulator on the plain listener."""
    write_handler(tmp_path / "handlers", "ok", "#!/bin/sh\necho fine\n")
    certs = mosquitto.certs
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    config = dataclasses.replace(config, connection=awscrt_connection(mosquitto))
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("over-crt", [THING], {"operation": "ok"})
        execution = await wait_terminal(emulator, "over-crt", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        key_body = Path(certs.device_key).read_text().splitlines()[1]
        assert key_body not in agent.log_text()  # the private key never reaches the logs
    finally:
        agent.kill()


async def test_sigterm_while_the_broker_is_unreachable_stops_promptly(tmp_path: Path) -> None:
    """No broker at all: the agent keeps retrying the connection, and a SIGTERM still ends it
    at once with exit code 0 (systemd must not have to SIGKILL it)."""
    from tests.fixtures.broker import free_port

    (tmp_path / "handlers").mkdir(mode=0o755)
    config = agent_config(tmp_path, free_port(), thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await wait_until(lambda: "connecting" in agent.log_text(), 15, "the first attempt")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=10) == 0
        assert "stopped before the connection was established" in agent.log_text()
    finally:
        agent.kill()
