"""A lost state database never leads to a second run.

The real `jobs-agent run` against the emulator on mosquitto, with a handler that records each
start in a side-effect log and waits to be released. Deleting the database while the step runs
stops the agent taking work (a queued job stays queued) while the running step's outcome is
still told to the service; a restart on an empty database reports an execution the service says
is in progress FAILED, stops its leftover handler, and never starts it again.
"""

from __future__ import annotations

import signal
from pathlib import Path

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.engine import LOST_RECORD_REASON
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    side_effects,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-lost"


def _flash(tmp_path: Path) -> tuple[Path, Path, Path]:
    log = tmp_path / "side-effects.log"
    release = tmp_path / "release"
    pid = tmp_path / "pid"
    write_handler(
        tmp_path / "handlers",
        "flash",
        f"""#!/bin/sh
echo "start flash $JOBS_AGENT_JOB_ID" >> {log}
echo $$ > {pid}.tmp && mv {pid}.tmp {pid}
while [ ! -e {release} ]; do sleep 0.05; done
echo "end flash $JOBS_AGENT_JOB_ID" >> {log}
""",
    )
    return log, release, pid


def _agent(tmp_path: Path, mosquitto: Mosquitto) -> AgentProcess:
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path)


def _delete_database(tmp_path: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)


async def test_a_database_deleted_while_a_step_runs_stops_the_agent_taking_work(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    log, release, pid = _flash(tmp_path)
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("first", [THING], {"operation": "flash"})
        await wait_until(pid.exists, 20, "the step to start")
        _delete_database(tmp_path)
        release.touch()
        first = await wait_terminal(emulator, "first", THING)
        assert str(first.status) == "SUCCEEDED"  # told the service, though it cannot record it

        refusal = "was deleted while the agent was running"
        await wait_until(lambda: refusal in agent.log_text(), 20, "the agent to notice")
        refusals = agent.log_text().count(refusal)
        emulator.service.create_job("second", [THING], {"operation": "flash"})
        # The notification wakes the agent: it looks at its database again and refuses.
        await wait_until(
            lambda: agent.log_text().count(refusal) > refusals, 20, "the agent to refuse new work"
        )
        assert str(emulator.service.execution("second", THING).status) == "QUEUED"

        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        agent.start()  # a new, empty database
        await agent.wait_ready()
        second = await wait_terminal(emulator, "second", THING)
        assert str(second.status) == "SUCCEEDED"
        assert side_effects(log) == [
            "start flash first",
            "end flash first",
            "start flash second",
            "end flash second",
        ]
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_an_execution_in_progress_without_a_record_is_never_run_again(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    log, _release, pid = _flash(tmp_path)
    agent = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("flash-1", [THING], {"operation": "flash"})
        await wait_until(pid.exists, 20, "the step to start")
        handler = int(pid.read_text())
        agent.kill()  # SIGKILL: the step goes on running
        await agent.wait_exit()
        _delete_database(tmp_path)
        agent.start()
        await agent.wait_ready()
        execution = await wait_terminal(emulator, "flash-1", THING)
        assert str(execution.status) == "FAILED"
        assert execution.status_details["reason"] == LOST_RECORD_REASON
        assert await wait_pid_gone(handler, 10), "the leftover step was not stopped"
        assert side_effects(log) == ["start flash flash-1"]
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()
