"""A job's REPORTED has no transaction of its own (issue 18, round 16): it is written first in the
store's next one (the next job's RUNNING), or on its own when the engine goes idle. What that
may lose, a kill -9 between the accepted report and that write, is an outcome sent once more,
which the service refuses as terminal and the outbox closes. Real `jobs-agent run` processes,
a real broker and the emulator; the kill placed by the engine's crash point `reported` (right
after the store was told), not by a sleep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import Store, TransitionRefused
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    side_effects,
    start_emulator,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = f"gw-reported-{os.getpid()}"


@pytest.fixture
async def service(mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    emu = await start_emulator(mosquitto.port)
    yield emu
    await emu.stop()


def _agent(tmp_path: Path, mosquitto: Mosquitto) -> tuple[AgentProcess, Path]:
    """An agent whose handler `flash` notes each run; no progress update (an hour's interval),
    so that the only UpdateJobExecution of a job is its outcome."""
    log = tmp_path / "side-effects.log"
    write_handler(
        tmp_path / "handlers",
        "flash",
        f'#!/bin/sh\necho "$JOBS_AGENT_JOB_ID $JOBS_AGENT_EXECUTION_NUMBER" >> {log}\n',
    )
    config = agent_config(tmp_path, mosquitto.port, thing=THING, progress_interval_seconds=3600.0)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path), log


def _states(state_dir: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(state_dir / "state.db")) as db:
        return dict(db.execute("SELECT job_id, state FROM executions").fetchall())


def _status(agent: AgentProcess) -> dict[str, Any]:
    """`jobs-agent status --json`, as an operator runs it."""
    command = [sys.executable, "-m", "jobs_agent", "status", "--json"]
    done = subprocess.run(
        [*command, "--config", str(agent.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def test_a_kill_before_reported_is_written_sends_the_outcome_once_more_and_closes_it(
    tmp_path: Path, mosquitto: Mosquitto, service: Emulator
) -> None:
    agent, log = _agent(tmp_path, mosquitto)
    try:
        service.service.create_job("lost", [THING], {"operation": "flash"})
        agent.start(JOBS_AGENT_CRASH_AT="reported")
        assert await agent.wait_exit(timeout=30) == -signal.SIGKILL, agent.log_text()
        # The service has the outcome; the database does not have REPORTED yet: the kill took it.
        assert str(service.service.execution("lost", THING).status) == "SUCCEEDED"
        assert _states(tmp_path / "state") == {"lost": str(ExecutionState.DECIDED)}
        updates = service.service.counters["UpdateJobExecution"]
        dead = _status(agent)
        assert [entry["job_id"] for entry in dead["outbox"]] == ["lost"]

        agent.start()
        await agent.wait_ready()
        await wait_until(
            lambda: _states(tmp_path / "state") == {"lost": str(ExecutionState.REPORTED)},
            30,
            "the outcome sent again to be closed as reported",
        )
        # Sent once more, refused as terminal: no other report, no other run.
        assert service.service.counters["UpdateJobExecution"] == updates + 1
        assert terminal_statuses(service, "lost") == ["SUCCEEDED"]
        assert side_effects(log) == ["lost 1"]
        report = _status(agent)
        assert report["outbox"] == []
        assert [(r["job_id"], r["state"]) for r in report["recent"]] == [("lost", "reported")]

        service.service.create_job("after", [THING], {"operation": "flash"})
        assert str((await wait_terminal(service, "after", THING, timeout=30)).status) == (
            "SUCCEEDED"
        )
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


async def test_an_idle_agent_has_written_reported_and_a_kill_then_sends_nothing_again(
    tmp_path: Path, mosquitto: Mosquitto, service: Emulator
) -> None:
    """The last job before the agent goes idle has no next RUNNING to ride with: REPORTED is
    written before the engine waits (`Store.settle`), so the database says so while the agent
    idles, and a kill -9 then costs no report."""
    agent, log = _agent(tmp_path, mosquitto)
    try:
        agent.start()
        await agent.wait_ready()
        service.service.create_job("idle", [THING], {"operation": "flash"})
        await wait_terminal(service, "idle", THING, timeout=30)
        await wait_until(
            lambda: _states(tmp_path / "state") == {"idle": str(ExecutionState.REPORTED)},
            30,
            "REPORTED written by the idle agent",
        )
        updates = service.service.counters["UpdateJobExecution"]
        agent.kill()
        agent.start()
        await agent.wait_ready()
        service.service.create_job("next", [THING], {"operation": "flash"})
        await wait_terminal(service, "next", THING, timeout=30)
        assert service.service.counters["UpdateJobExecution"] == updates + 1  # next's alone
        assert side_effects(log) == ["idle 1", "next 1"]
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def test_a_reported_write_that_waits_never_undoes_the_next_job_s_commit(tmp_path: Path) -> None:
    """Only a REPORTED this store decided itself waits, so the lifecycle allows it; should its
    record still have changed under it (a writer besides the store), it writes nothing, as a
    refused change would, and the next job's RUNNING, in whose transaction it rides, is
    committed all the same. A REPORTED the store did not decide is checked at once."""
    store = Store(tmp_path / "state.db")
    try:
        done, changed, new = (ExecutionRef(None, name, 1) for name in ("done", "changed", "new"))
        for key in (done, changed):
            store.record_taken(key, {"operation": "x"}, 1)
            store.transition(key, ExecutionState.RUNNING, handler="x")
        [entry] = store.decide(done, JobExecutionStatus.SUCCEEDED, {}, alone=True)
        store.reported(entry.id, done)
        [other] = store.decide(changed, JobExecutionStatus.FAILED, {})  # done's rode with it
        store.reported(other.id, changed)
        assert store.unsettled
        with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
            db.execute("UPDATE executions SET state = 'running' WHERE job_id = 'changed'")
            db.commit()
        store.record_taken(new, {"operation": "x"}, 1)
        record = store.transition(new, ExecutionState.RUNNING, handler="x")
        assert record.state is ExecutionState.RUNNING
        assert not store.unsettled
        assert _states(tmp_path) == {"done": "reported", "changed": "running", "new": "running"}
        assert [e.key for e in store.outbox()] == [changed]  # nothing of its REPORTED written
        with pytest.raises(TransitionRefused):  # not decided by this store: checked at once
            store.reported(other.id, new)
        assert not store.unsettled
    finally:
        store.close()
