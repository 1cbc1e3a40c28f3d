"""Reconciliation of the device's records with the service, again whenever the agent may have
missed what the service did (a reconnect), against the emulator over a real mosquitto broker.

The record an earlier agent left RUNNING is written with the agent's own store (a real SQLite
file), as a SIGKILLed agent leaves it: the test then controls exactly when the service ends the
execution (between the agent's first reconciliation and the start-next that would hand it back:
start-next is refused until then). The link drops with the real broker stopped and started;
the running and deferred jobs are real handler processes.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from jobs_agent.emulator.readings import Readings
from jobs_agent.emulator.service import JobsService
from jobs_agent.engine.deferral import HANDLER
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import ExecutionRecord, Store
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.vocabulary import ExecutionRef
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    agent_config,
    running_agent,
    start_emulator,
    terminal_statuses,
    wait_pid_gone,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-test"
START_NEXT = "StartNextPendingJobExecution"
GET_PENDING = "GetPendingJobExecutions"


def _record(state_db: Path, ref: ExecutionRef) -> ExecutionRecord | None:
    store = Store(state_db)
    try:
        return store.get(ref)
    finally:
        store.close()


def _left_running(
    service: JobsService, state_db: Path, namespace: str | None = None
) -> ExecutionRef:
    """Job "stranded" IN_PROGRESS on the service and RUNNING in the device's records (as an
    agent SIGKILLed while running it leaves them), job "next" QUEUED behind it."""
    service.create_job("stranded", [THING], {"operation": "work"}, namespace=namespace)
    delivery = service.start_next(THING, namespace=namespace)  # the earlier agent took it
    assert delivery is not None
    execution = delivery.execution
    ref = ExecutionRef(namespace, "stranded", execution.execution_number or 0)
    state_db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(state_db)
    try:
        store.record_taken(ref, {"operation": "work"}, execution.version_number)
        store.transition(ref, ExecutionState.RUNNING)
    finally:
        store.close()
    service.create_job("next", [THING], {"operation": "work"}, namespace=namespace)
    return ref


@pytest.mark.parametrize(
    ("namespace", "disconnect"),
    [
        pytest.param(None, True, id="during-a-disconnect"),
        pytest.param(None, False, id="passed-over-without-a-disconnect"),
        pytest.param("fleet-a", True, id="namespaced-during-a-disconnect"),
    ],
)
async def test_a_record_the_service_ended_after_reconciliation_is_not_left_running(
    tmp_path: Path,
    fresh_mosquitto: Mosquitto,
    readings: Readings,
    namespace: str | None,
    disconnect: bool,
) -> None:
    """An earlier agent left J RUNNING. The new agent's first reconciliation sees J still in
    progress (start-next would hand it back), but start-next fails and the service cancels J
    meanwhile; start-next then offers the next job, never J again. The agent must reconcile
    again before running it, so J's record is closed, not stranded until a restart:
    - during a disconnect: the resync says it may have missed the cancellation;
    - without one: start-next passed J over (it hands back IN_PROGRESS executions first);
    - in a configured namespace, where nothing is passed over by start-next (the namespace's
      `$next` is described): the resync alone tells it."""
    write_handler(tmp_path / "handlers", "work", "#!/bin/sh\necho done\n")
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        service = emulator.service
        namespaces = () if namespace is None else (namespace,)
        config = agent_config(tmp_path, fresh_mosquitto.port, namespaces=namespaces)
        state_db = config.state_dir / "state.db"
        ref = _left_running(service, state_db, namespace=namespace)
        for _ in range(1000):  # every start-next fails until J is cancelled
            service.fail_next(START_NEXT, ErrorCode.INTERNAL_ERROR)

        async with running_agent(config):
            # The first reconciliation precedes the first start-next: it is over.
            await wait_until(
                lambda: service.counters[str(ErrorCode.INTERNAL_ERROR)] >= 1,
                15,
                "the first start-next to fail",
            )
            if disconnect:
                fresh_mosquitto.stop()
            service.cancel_execution("stranded", THING, force=True)
            service.clear_faults()
            if disconnect:
                fresh_mosquitto.start()
            await wait_terminal(emulator, "next", THING, timeout=30)
            record = _record(state_db, ref)
            assert record is not None
            assert record.state is ExecutionState.CANCELLED, record

        assert terminal_statuses(emulator, "stranded") == ["CANCELED"]
        assert terminal_statuses(emulator, "next") == ["SUCCEEDED"]
    finally:
        await emulator.stop()


async def test_an_execution_a_start_next_took_unseen_is_run_not_failed_after_a_reconnect(
    tmp_path: Path, fresh_mosquitto: Mosquitto, readings: Readings
) -> None:
    """A start-next re-published after a reconnect can be answered twice: the agent records
    the first answer (nothing pending), while the second took J. The reconciliation after the
    reconnect then finds J in progress with no record; its records cannot have been lost since
    the start, so J must run (start-next hands it back), not be reported FAILED as lost (seen
    once in test_transport_paho_loop). Here the service takes J while the link is down."""
    write_handler(tmp_path / "handlers", "work", "#!/bin/sh\necho done\n")
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        service = emulator.service
        config = agent_config(tmp_path, fresh_mosquitto.port)
        async with running_agent(config):
            await wait_until(
                lambda: service.counters[START_NEXT] >= 1, 15, "the agent's first start-next"
            )
            fresh_mosquitto.stop()
            service.create_job("unseen", [THING], {"operation": "work"})
            assert service.start_next(THING) is not None  # the answer the agent never saw
            fresh_mosquitto.start()
            await wait_terminal(emulator, "unseen", THING, timeout=30)

        assert terminal_statuses(emulator, "unseen") == ["SUCCEEDED"]
    finally:
        await emulator.stop()


@pytest.mark.parametrize("lost", [0, 2], ids=["answered", "answers-lost"])
async def test_a_running_job_the_service_ended_during_a_disconnect_is_stopped_on_reconnect(
    tmp_path: Path, fresh_mosquitto: Mosquitto, readings: Readings, lost: int
) -> None:
    """The service cancels the running job while the link is down: the notification is lost
    with it and, without a step timer, nothing else would ask before the handler ends (here:
    never). On reconnect the agent asks, stops the handler and reports nothing more for it.
    `answers-lost`: the first two questions after the reconnect get no answer (CI saw one
    lost: the emulator dropped a reply while its link came back); the agent asks again until
    answered instead of letting the handler run on."""
    pid_file = tmp_path / "pid"
    write_handler(
        tmp_path / "handlers",
        "forever",
        f"""#!/bin/sh
echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}
printf '{{"percent": 10, "message": "started"}}\\n' >&3
while :; do sleep 0.05; done
""",
    )
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        service = emulator.service
        config = agent_config(
            tmp_path, fresh_mosquitto.port, request_timeout_seconds=1.0 if lost else 5.0
        )
        async with running_agent(config) as agent:
            service.create_job("cut-off", [THING], {"operation": "forever"})
            await wait_until(pid_file.exists, 15, "the handler to start")
            pid = int(pid_file.read_text())

            def progress_seen() -> bool:
                details = service.execution("cut-off", THING).status_details or {}
                return details.get("message") == "started"

            # Its progress is reported, and the reply is in: no update of it is left to send
            # again when the link drops. (CI under pytest-xdist: the broker stopped before the
            # update's reply reached the agent, which sent it again after the reconnect and
            # learnt of the cancel from its refusal, asking the lost question once, not twice.)
            await wait_until(progress_seen, 15, "the handler's progress to reach the service")
            await wait_until(
                lambda: agent.engine is not None and agent.engine.client.requests_waiting == 0,
                15,
                "the progress update's reply to reach the agent",
            )
            fresh_mosquitto.stop()
            service.cancel_execution("cut-off", THING, force=True)
            for _ in range(lost):
                service.lose_next("DescribeJobExecution")
            fresh_mosquitto.start()
            assert await wait_pid_gone(pid, 15), "the handler ran on after the reconnect"
            assert service.counters["lost"] == lost
            await wait_until(
                lambda: agent.engine is not None and agent.engine.running_job is None,
                10,
                "the engine to let go of the job",
            )
        history = service.history(job_id="cut-off")
        canceled_at = next(i for i, h in enumerate(history) if str(h.to_status) == "CANCELED")
        assert all(str(h.source) != "device" for h in history[canceled_at + 1 :])
    finally:
        await emulator.stop()


async def test_a_deferred_job_the_service_ended_during_a_disconnect_ends_its_wait_on_reconnect(
    tmp_path: Path, fresh_mosquitto: Mosquitto, readings: Readings
) -> None:
    """A job waits aside (`run_others_while_deferred`) for an hour; the service cancels it
    while the link is down. On reconnect the agent asks about it: its wait ends and its record
    is closed now (not at its next step-timer heartbeat, minutes later, nor when the hour is
    over), it never runs, and other work is taken."""
    log = tmp_path / "runs"
    write_handler(
        tmp_path / "handlers",
        "later",
        f"""#!/bin/sh
echo ran >> {log}
echo '{{"defer": {{"after": 3600, "reason": "not now"}}}}' >&3
exit $JOBS_AGENT_EXIT_DEFER
""",
    )
    write_handler(tmp_path / "handlers", "work", "#!/bin/sh\necho done\n")
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        service = emulator.service
        config = agent_config(tmp_path, fresh_mosquitto.port, run_others_while_deferred=True)
        async with running_agent(config):
            service.create_job("waits", [THING], {"operation": "later"})

            def announced() -> bool:
                details = service.execution("waits", THING).status_details or {}
                return "deferred" in details

            await wait_until(announced, 15, "the deferral to reach the service")
            ref = ExecutionRef(None, "waits", 1)
            record = _record(config.state_dir / "state.db", ref)
            assert record is not None and record.state is ExecutionState.DEFERRED
            fresh_mosquitto.stop()
            service.cancel_execution("waits", THING, force=True)
            fresh_mosquitto.start()

            def closed() -> bool:
                record = _record(config.state_dir / "state.db", ref)
                return record is not None and record.state is ExecutionState.CANCELLED

            await wait_until(closed, 15, "the deferred record to be closed")
            service.create_job("next", [THING], {"operation": "work"})
            await wait_terminal(emulator, "next", THING, timeout=30)
        assert log.read_text().splitlines() == ["ran"]  # deferred once, never run again
        assert terminal_statuses(emulator, "waits") == ["CANCELED"]
        assert terminal_statuses(emulator, "next") == ["SUCCEEDED"]
    finally:
        await emulator.stop()


def _left_deferred(service: JobsService, state_db: Path) -> ExecutionRef:
    """Job "waits" IN_PROGRESS on the service and DEFERRED for an hour in the device's records,
    as an earlier agent leaves a job that asked to run later."""
    service.create_job("waits", [THING], {"operation": "later"})
    delivery = service.start_next(THING)
    assert delivery is not None and delivery.execution.job_id == "waits"
    execution = delivery.execution
    ref = ExecutionRef(None, "waits", execution.execution_number or 0)
    state_db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(state_db)
    try:
        now = time.time()
        store.record_taken(ref, {"operation": "later"}, execution.version_number)
        store.transition(ref, ExecutionState.RUNNING)
        store.transition(
            ref,
            ExecutionState.DEFERRED,
            deferred_kind=HANDLER,
            deferred_until=now + 3600,
            deferred_reason="not now",
            deferred_since=now,
            deferred_total_seconds=0.0,
            deferrals=1,
        )
    finally:
        store.close()
    return ref


@pytest.mark.parametrize(
    ("namespace", "aside"),
    [
        pytest.param(None, False, id="default"),
        pytest.param("fleet-a", False, id="namespaced"),
        pytest.param(None, True, id="while-a-deferred-job-waits-aside"),
    ],
)
async def test_a_record_the_service_ended_while_connected_is_closed_on_its_notify(
    tmp_path: Path,
    fresh_mosquitto: Mosquitto,
    readings: Readings,
    namespace: str | None,
    aside: bool,
) -> None:
    """An earlier agent left J RUNNING, and its handler still runs (a real process with the
    execution's environment, in a session of its own). The new agent's first reconciliation
    sees J in progress; taking work keeps failing, so J is not taken up. The service ends J
    while the link is up: no reconnect will come, and start-next (still failing) passes
    nothing over. The `notify` that no longer lists J must have it re-checked, its leftover
    stopped and its record closed now, before any other job is taken.
    - aside: the earlier agent also left D deferred for an hour; start-next hands D back
      first, D waits aside (`run_others_while_deferred`), and work is taken by name
      (GetPendingJobExecutions, failing here after the first reconciliation's): no
      start-next could pass J over."""
    write_handler(tmp_path / "handlers", "work", "#!/bin/sh\necho done\n")
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    leftover: subprocess.Popen[bytes] | None = None
    try:
        service = emulator.service
        namespaces = () if namespace is None else (namespace,)
        config = agent_config(
            tmp_path, fresh_mosquitto.port, namespaces=namespaces, run_others_while_deferred=aside
        )
        state_db = config.state_dir / "state.db"
        if aside:
            _left_deferred(service, state_db)
        ref = _left_running(service, state_db, namespace=namespace)
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JOBS_AGENT_THING_NAME": THING,
            "JOBS_AGENT_JOB_ID": ref.job_id,
            "JOBS_AGENT_EXECUTION_NUMBER": str(ref.execution_number),
        }
        leftover = subprocess.Popen(["sleep", "600"], env=environment, start_new_session=True)
        # Taking work fails until the end of the test; the first GetPendingJobExecutions (the
        # first reconciliation's) is answered.
        taking = GET_PENDING if aside else START_NEXT
        service.fail_next(taking, ErrorCode.INTERNAL_ERROR, after=1 if aside else 0)
        for _ in range(1000):
            service.fail_next(taking, ErrorCode.INTERNAL_ERROR)

        async with running_agent(config):
            await wait_until(
                lambda: service.counters[str(ErrorCode.INTERNAL_ERROR)] >= 1,
                15,
                "the first attempt to take work to fail",
            )
            assert leftover.poll() is None  # J was in progress: left alone so far
            service.cancel_execution("stranded", THING, force=True)
            await wait_until(
                lambda: leftover is not None and leftover.poll() is not None,
                15,
                "the leftover handler of the ended execution to be stopped",
            )

            def closed() -> bool:
                record = _record(state_db, ref)
                return record is not None and record.state is ExecutionState.CANCELLED

            await wait_until(closed, 10, "the record of the ended execution to be closed")
            assert terminal_statuses(emulator, "next") == []  # nothing else was taken
            service.clear_faults()
            await wait_terminal(emulator, "next", THING, timeout=30)

        assert terminal_statuses(emulator, "stranded") == ["CANCELED"]
        assert terminal_statuses(emulator, "next") == ["SUCCEEDED"]
        if aside:
            assert service.execution("waits", THING).status == "IN_PROGRESS"  # still waits
    finally:
        if leftover is not None and leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        await emulator.stop()


async def test_a_running_namespaced_job_the_service_ended_while_connected_is_stopped(
    tmp_path: Path, fresh_mosquitto: Mosquitto, readings: Readings
) -> None:
    """The running namespaced job is watched like a default one: the `notify-namespace-NS`
    that no longer lists it has it confirmed with the service, its handler stopped and its
    record closed, with no reconnect (pins what the supervisor's watch covers: the gap closed
    by the test above is the records no handler runs for)."""
    pid_file = tmp_path / "pid"
    write_handler(
        tmp_path / "handlers",
        "forever",
        f"""#!/bin/sh
echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}
while :; do sleep 0.05; done
""",
    )
    emulator = await start_emulator(fresh_mosquitto.port, readings=readings)
    try:
        service = emulator.service
        config = agent_config(tmp_path, fresh_mosquitto.port, namespaces=("fleet-a",))
        async with running_agent(config) as agent:
            service.create_job("ns-long", [THING], {"operation": "forever"}, namespace="fleet-a")
            await wait_until(pid_file.exists, 15, "the handler to start")
            pid = int(pid_file.read_text())
            service.cancel_execution("ns-long", THING, force=True)
            assert await wait_pid_gone(pid, 15), "the handler ran on after the cancel"
            await wait_until(
                lambda: agent.engine is not None and agent.engine.running_job is None,
                10,
                "the engine to let go of the job",
            )
            record = _record(config.state_dir / "state.db", ExecutionRef("fleet-a", "ns-long", 1))
            assert record is not None and record.state is ExecutionState.CANCELLED, record
        assert terminal_statuses(emulator, "ns-long") == ["CANCELED"]
    finally:
        await emulator.stop()
