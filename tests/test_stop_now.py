"""A second stop with the link up and a service that does not answer: the README's "a second
SIGTERM stops at once" holds for the agent's requests too. A real `jobs-agent run` on a real
mosquitto with the emulator, which loses the request the test picks (no answer, the link stays
up); the request timeout is an hour, so a stop that waits for an answer waits that long.

What the abandoned request was for is kept: a start-next leaves its marker and the job is taken
by the next start; an outcome stays in the outbox and the next start reports it, once.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import Store
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.vocabulary import ExecutionRef
from jobs_agent_handlers.api import POINT_OF_NO_RETURN
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    awscrt_connection,
    config_yaml,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-stop-now"
STOP_BOUND = 15.0
"""Far above a prompt stop, far below the request timeout of an hour."""
GIVEN_UP = "stopping: the request to the jobs service is given up"

TRANSPORTS = pytest.mark.parametrize("transport", ["awscrt", "paho"])


def _agent(tmp_path: Path, broker: Mosquitto, transport: str, **jobs: object) -> AgentProcess:
    """The agent over `transport`, its request timeout an hour, with an `ok` handler. No
    progress update is sent during a step (one is due 0.1 s into it with the test default, a
    step that slow under load), so that the faults a test sets meet the final update."""
    write_handler(tmp_path / "handlers", "ok", "#!/bin/sh\nexit 0\n")
    jobs.setdefault("progress_interval_seconds", 3600)
    config = agent_config(tmp_path, broker.port, thing=THING, request_timeout_seconds=3600, **jobs)
    if transport == "awscrt":
        config = dataclasses.replace(config, connection=awscrt_connection(broker))
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path)


async def _stop_twice(agent: AgentProcess) -> None:
    """SIGTERM, then (the first one seen: it waits for the answer) SIGTERM again: exit 0."""
    agent.signal(signal.SIGTERM)
    await wait_until(lambda: "stop requested" in agent.log_text(), STOP_BOUND, "the first stop")
    agent.signal(signal.SIGTERM)
    assert await agent.wait_exit(timeout=STOP_BOUND) == 0
    assert '"stopped"' in agent.log_text()


@TRANSPORTS
async def test_a_second_stop_gives_up_an_unanswered_start_next_and_the_job_is_taken_after(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator, transport: str
) -> None:
    """The start-next gets no answer. The first stop waits for it (taking a job is waited for
    while the link is up); the second ends the agent at once (before: it waited out the hour,
    still running 15 s after it). The marker stays, the log says the request was given up
    (not "will retry": nothing retries, the agent ends), and the next start runs the job once."""
    agent = _agent(tmp_path, emulator_broker, transport)
    service = emulator.service
    try:
        agent.start()
        await agent.wait_ready()
        service.lose_next("StartNextPendingJobExecution")
        service.create_job("taken-later", [THING], {"operation": "ok"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the start-next lost")
        await _stop_twice(agent)
        assert GIVEN_UP in agent.log_text()
        assert "will retry" not in agent.log_text()
        assert (tmp_path / "state" / "state.db.taking").read_text() != ""
        assert str(service.execution("taken-later", THING).status) == "QUEUED"
        agent.start()
        execution = await wait_terminal(emulator, "taken-later", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert terminal_statuses(emulator, "taken-later") == ["SUCCEEDED"]
    finally:
        agent.kill()


@TRANSPORTS
async def test_a_second_stop_gives_up_an_unanswered_final_update_kept_in_the_outbox(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator, transport: str
) -> None:
    """The step ends and its final UpdateJobExecution gets no answer. The first stop waits for
    it; the second ends the agent at once (before: it waited out the hour). The outcome stays
    in the outbox, and the next start reports it: SUCCEEDED, once."""
    agent = _agent(tmp_path, emulator_broker, transport)
    service = emulator.service
    try:
        agent.start()
        await agent.wait_ready()
        service.lose_next("UpdateJobExecution")
        service.create_job("reported-later", [THING], {"operation": "ok"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the final update lost")
        await wait_until(lambda: '"outcome decided"' in agent.log_text(), 15, "the outcome")
        await _stop_twice(agent)
        assert str(service.execution("reported-later", THING).status) == "IN_PROGRESS"
        store = Store(tmp_path / "state" / "state.db")
        try:
            queued = [(entry.key.job_id, str(entry.status)) for entry in store.outbox()]
        finally:
            store.close()
        assert queued == [("reported-later", "SUCCEEDED")]
        agent.start()
        execution = await wait_terminal(emulator, "reported-later", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert terminal_statuses(emulator, "reported-later") == ["SUCCEEDED"]
    finally:
        agent.kill()


async def test_a_stop_while_a_namespace_s_next_is_unanswered_ends_the_agent(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator
) -> None:
    """With a namespace configured, the agent asks DescribeJobExecution of `$next` there after
    the default namespace's start-next: a read, whose loss changes nothing (a `$next` is
    recorded before it is started). One SIGTERM ends the agent while it is unanswered
    (before: it waited out the hour)."""
    agent = _agent(tmp_path, emulator_broker, "paho", namespaces=("fleet",))
    service = emulator.service
    service.lose_next("DescribeJobExecution")
    try:
        agent.start()
        await agent.wait_ready()
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the $next describe lost")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=STOP_BOUND) == 0
    finally:
        agent.kill()


async def test_a_stop_while_a_refused_outcome_is_looked_into_keeps_it_queued(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator
) -> None:
    """The final update is refused as TerminalStateReached without the execution's state: the
    agent asks DescribeJobExecution whether its own report ended it, and that read goes
    unanswered. One SIGTERM ends the agent at once (before: it waited out the hour), with the
    outcome still queued (a read given up decides nothing); the next start sends it again and
    it is reported SUCCEEDED, once."""
    agent = _agent(tmp_path, emulator_broker, "paho")
    service = emulator.service
    try:
        agent.start()
        await agent.wait_ready()
        service.fail_next("UpdateJobExecution", ErrorCode.TERMINAL_STATE_REACHED)
        service.lose_next("DescribeJobExecution")
        service.create_job("looked-into", [THING], {"operation": "ok"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the describe lost")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=STOP_BOUND) == 0
        store = Store(tmp_path / "state" / "state.db")
        try:
            queued = [(entry.key.job_id, str(entry.status)) for entry in store.outbox()]
        finally:
            store.close()
        assert queued == [("looked-into", "SUCCEEDED")]
        agent.start()
        execution = await wait_terminal(emulator, "looked-into", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert terminal_statuses(emulator, "looked-into") == ["SUCCEEDED"]
    finally:
        agent.kill()


async def test_a_stop_while_a_held_run_s_document_is_fetched_again_launches_nothing(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator
) -> None:
    """An earlier agent left a resumable step past its point of no return, which the service
    ended meanwhile: the run is carried on, with its document (presigned URLs) fetched again
    first, and that DescribeJobExecution goes unanswered. One SIGTERM ends the agent at once
    (before: it waited out the hour), nothing launched and the record as it was: still
    RUNNING, its restarts not counted for a run that did not start."""
    service = emulator.service
    url = "${aws:iot:s3-presigned-url:https://bucket.s3.amazonaws.com/fw.bin}"
    service.create_job("held", [THING], {"operation": "ok", "url": url})
    delivery = service.start_next(THING)
    assert delivery is not None and "X-Amz-Signature=" in delivery.document_text
    service.cancel_execution("held", THING, force=True)
    agent = _agent(tmp_path, emulator_broker, "paho")
    ref = ExecutionRef(None, "held", 1)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = Store(state / "state.db")
    try:
        store.record_taken(ref, delivery.document, delivery.execution.version_number)
        store.transition(ref, ExecutionState.RUNNING, handler="ok", resumable=True)
        store.save_checkpoint(ref, {POINT_OF_NO_RETURN: "switched slots"})
    finally:
        store.close()
    service.lose_next("DescribeJobExecution", after=1)  # the first: is it ended? (it is)
    try:
        agent.start()
        await agent.wait_ready()
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the document asked again")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=STOP_BOUND) == 0
    finally:
        agent.kill()
    assert "handler started" not in agent.log_text()
    store = Store(state / "state.db")
    try:
        record = store.get(ref)
    finally:
        store.close()
    assert record is not None
    assert (record.state, record.restarts) == (ExecutionState.RUNNING, 0)


async def test_a_step_stopped_by_the_second_stop_is_still_reported_failed(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator
) -> None:
    """The second stop stops a running step (SIGTERM, SIGKILL after `kill_grace_seconds`: 3 s
    here, this one ignores SIGTERM), and its FAILED outcome is decided after the 2 s grace the
    stop gives answers: an update sent after the stop gets that grace of its own, so the
    service, which answers, is told in this process (a grace counted from the stop would not
    even send it)."""
    started = tmp_path / "started"
    script = f"#!/bin/sh\ntrap '' TERM\ntouch {started}\nwhile true; do sleep 0.05; done\n"
    write_handler(tmp_path / "handlers", "stubborn", script)
    agent = _agent(tmp_path, emulator_broker, "paho", kill_grace_seconds=3.0)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("stubborn-1", [THING], {"operation": "stubborn"})
        await wait_until(started.exists, 15, "the step to start")
        await _stop_twice(agent)
    finally:
        agent.kill()
    assert terminal_statuses(emulator, "stubborn-1") == ["FAILED"]
    store = Store(tmp_path / "state" / "state.db")
    try:
        assert store.outbox() == []
    finally:
        store.close()
