"""The emulator's service core, driven directly: state machine, timers, retries, persistence.

Time is a `ManualClock` moved forward by the test; nothing here sleeps.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest

from jobs_agent.emulator import ControlError, JobsService, ManualClock, ServiceError
from jobs_agent.emulator.model import ExecutionStatus, JobStatus, Source
from jobs_agent.emulator.service import JobExecutionsChanged, NextJobExecutionChanged, ServiceEvent
from jobs_agent.emulator.store import StateStore
from jobs_agent.jobs.errors import ErrorCode

DOC = {"operation": "noop"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service(clock: ManualClock) -> JobsService:
    return JobsService(clock)


def collect(service: JobsService) -> list[ServiceEvent]:
    events: list[ServiceEvent] = []
    service.add_listener(events.extend)
    return events


def test_start_next_moves_oldest_queued_then_returns_in_progress_unchanged(
    service: JobsService, clock: ManualClock
) -> None:
    service.create_job("a", ["t1"], DOC)
    clock.advance(1)
    service.create_job("b", ["t1"], DOC)
    first = service.start_next("t1", status_details={"step": "1"})
    assert first is not None
    assert first.execution.job_id == "a"
    assert first.execution.status is ExecutionStatus.IN_PROGRESS
    assert first.execution.status_details == {"step": "1"}
    again = service.start_next("t1", status_details={"step": "other"})
    assert again is not None
    assert again.execution.job_id == "a"
    assert again.execution.version_number == first.execution.version_number
    assert again.execution.status_details == {"step": "1"}


def test_start_next_with_nothing_pending_returns_none(service: JobsService) -> None:
    assert service.start_next("lonely") is None


def test_device_transitions(service: JobsService) -> None:
    service.create_job("j", ["t"], DOC)
    # QUEUED -> SUCCEEDED directly is allowed (from QUEUED or IN_PROGRESS)
    result = service.update("t", "j", "SUCCEEDED")
    assert result.execution.status is ExecutionStatus.SUCCEEDED
    assert service.job("j").status is JobStatus.COMPLETED


@pytest.mark.parametrize("status", ["QUEUED", "TIMED_OUT", "CANCELED", "REMOVED"])
def test_device_cannot_set_service_statuses(service: JobsService, status: str) -> None:
    service.create_job("j", ["t"], DOC)
    service.start_next("t")
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", status)
    assert info.value.code is ErrorCode.INVALID_STATE_TRANSITION
    assert info.value.execution_state is not None
    assert info.value.execution_state.status is ExecutionStatus.IN_PROGRESS


def test_update_on_terminal_execution_is_invalid_state_transition(service: JobsService) -> None:
    service.create_job("j", ["t"], DOC)
    service.update("t", "j", "FAILED")
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "IN_PROGRESS")
    assert info.value.code is ErrorCode.INVALID_STATE_TRANSITION
    assert info.value.execution_state is not None
    assert info.value.execution_state.status is ExecutionStatus.FAILED


def test_describe_of_terminal_execution_is_terminal_state_reached(service: JobsService) -> None:
    service.create_job("j", ["t"], DOC)
    service.update("t", "j", "REJECTED")
    with pytest.raises(ServiceError) as info:
        service.describe("t", "j")
    assert info.value.code is ErrorCode.TERMINAL_STATE_REACHED


def test_version_mismatch_carries_state(service: JobsService) -> None:
    service.create_job("j", ["t"], DOC)
    service.start_next("t")
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "IN_PROGRESS", expected_version=1)
    assert info.value.code is ErrorCode.VERSION_MISMATCH
    assert info.value.execution_state is not None
    assert info.value.execution_state.version_number == 2
    ok = service.update("t", "j", "IN_PROGRESS", expected_version=2)
    assert ok.execution.version_number == 3


def test_unknown_job_and_bad_details(service: JobsService) -> None:
    with pytest.raises(ServiceError) as info:
        service.update("t", "nope", "IN_PROGRESS")
    assert info.value.code is ErrorCode.RESOURCE_NOT_FOUND
    service.create_job("j", ["t"], DOC)
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "IN_PROGRESS", status_details={"out": "line1\nline2"})
    assert info.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "IN_PROGRESS", step_timeout_minutes=0)
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_step_timer_times_out_and_emits_events(service: JobsService, clock: ManualClock) -> None:
    service.create_job("j", ["t"], DOC)
    events = collect(service)
    service.start_next("t", step_timeout_minutes=2)
    events.clear()
    clock.advance(119)
    assert service.tick() == 0
    clock.advance(1)
    assert service.tick() == 1
    assert service.execution("j", "t").status is ExecutionStatus.TIMED_OUT
    assert any(isinstance(e, JobExecutionsChanged) and not e.queued for e in events)
    assert any(isinstance(e, NextJobExecutionChanged) and e.execution is None for e in events)
    last = service.history("j", "t")[-1]
    assert (last.from_status, last.to_status, last.source) == (
        ExecutionStatus.IN_PROGRESS,
        ExecutionStatus.TIMED_OUT,
        Source.TIMER,
    )
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "SUCCEEDED")
    assert info.value.code is ErrorCode.INVALID_STATE_TRANSITION


def test_progress_update_restarts_step_timer_and_minus_one_clears_it(
    service: JobsService, clock: ManualClock
) -> None:
    service.create_job("j", ["t"], DOC)
    started = service.start_next("t", step_timeout_minutes=1)
    assert started is not None
    assert started.seconds_before_timed_out == 60
    clock.advance(50)
    service.update("t", "j", "IN_PROGRESS", step_timeout_minutes=1)
    clock.advance(50)
    assert service.tick() == 0  # 100 s after start, but only 50 s after the reset
    assert service.seconds_before_timed_out(service.execution("j", "t")) == 10
    service.update("t", "j", "IN_PROGRESS", step_timeout_minutes=-1)
    clock.advance(10_000)
    assert service.tick() == 0
    assert service.execution("j", "t").status is ExecutionStatus.IN_PROGRESS


def test_in_progress_timeout_caps_step_timer(service: JobsService, clock: ManualClock) -> None:
    service.create_job("j", ["t"], DOC, in_progress_timeout_minutes=3)
    started = service.start_next("t", step_timeout_minutes=60)
    assert started is not None
    assert started.seconds_before_timed_out == 180
    clock.advance(181)
    assert service.tick() == 1
    assert service.execution("j", "t").status is ExecutionStatus.TIMED_OUT


def test_retry_requeues_as_new_execution_number(service: JobsService) -> None:
    service.create_job(
        "j", ["t"], DOC, retry_config=[{"failureType": "FAILED", "numberOfRetries": 1}]
    )
    service.start_next("t")
    service.update("t", "j", "FAILED")
    retried = service.execution("j", "t")
    assert (retried.execution_number, retried.status, retried.retry_attempt) == (
        2,
        ExecutionStatus.QUEUED,
        1,
    )
    assert service.execution("j", "t", 1).status is ExecutionStatus.FAILED
    service.start_next("t")
    service.update("t", "j", "FAILED")
    assert service.execution("j", "t").execution_number == 2  # retries used up
    assert service.job("j").status is JobStatus.COMPLETED


def test_timed_out_retry_with_all(service: JobsService, clock: ManualClock) -> None:
    # A timeout is retried only with a timeout configuration (issue 15, item 3).
    service.create_job(
        "j",
        ["t"],
        DOC,
        in_progress_timeout_minutes=60,
        retry_config=[{"failureType": "ALL", "numberOfRetries": 2}],
    )
    service.start_next("t", step_timeout_minutes=1)
    clock.advance(60)
    service.tick()
    assert service.execution("j", "t").execution_number == 2
    # REJECTED is never retried
    service.update("t", "j", "REJECTED")
    assert service.execution("j", "t").execution_number == 2


def test_cancel_queued_and_force_in_progress(service: JobsService) -> None:
    service.create_job("j", ["a", "b"], DOC)
    service.start_next("a")
    with pytest.raises(ControlError) as info:
        service.cancel_execution("j", "a")
    assert info.value.exception == "InvalidStateTransitionException"
    service.cancel_job("j")
    assert service.execution("j", "b").status is ExecutionStatus.CANCELED
    assert service.execution("j", "a").status is ExecutionStatus.IN_PROGRESS
    service.cancel_job("j", force=True)
    canceled = service.execution("j", "a")
    assert canceled.status is ExecutionStatus.CANCELED
    assert canceled.force_canceled
    with pytest.raises(ServiceError) as err:
        service.update("a", "j", "SUCCEEDED")
    assert err.value.code is ErrorCode.INVALID_STATE_TRANSITION


def test_delete_execution_then_device_update_is_not_found(service: JobsService) -> None:
    service.create_job("j", ["t"], DOC)
    service.start_next("t")
    with pytest.raises(ControlError):
        service.delete_execution("j", "t", 1)
    service.delete_execution("j", "t", 1, force=True)
    with pytest.raises(ServiceError) as info:
        service.update("t", "j", "SUCCEEDED")
    assert info.value.code is ErrorCode.RESOURCE_NOT_FOUND
    assert service.history("j", "t")[-1].to_status is ExecutionStatus.REMOVED


def test_notify_next_only_when_head_changes(service: JobsService, clock: ManualClock) -> None:
    events = collect(service)
    service.create_job("a", ["t"], DOC)
    service.create_job("b", ["t"], DOC)
    heads = [e for e in events if isinstance(e, NextJobExecutionChanged)]
    assert [h.execution.execution.job_id for h in heads if h.execution] == ["a"]
    events.clear()
    service.start_next("t")
    assert not [e for e in events if isinstance(e, NextJobExecutionChanged)]
    assert [e for e in events if isinstance(e, JobExecutionsChanged)]
    events.clear()
    service.update("t", "a", "IN_PROGRESS", status_details={"p": "50"})
    assert events == []  # progress only: no status change, no new head
    service.update("t", "a", "SUCCEEDED")
    heads = [e for e in events if isinstance(e, NextJobExecutionChanged)]
    assert len(heads) == 1
    assert heads[0].execution is not None
    assert heads[0].execution.execution.job_id == "b"


def test_namespaces_are_separate(service: JobsService) -> None:
    service.create_job("plain", ["t"], DOC)
    service.create_job("gg", ["t"], DOC, namespace="greengrass")
    assert [e.job_id for e in service.get_pending("t")[1]] == ["plain"]
    assert [e.job_id for e in service.get_pending("t", "greengrass")[1]] == ["gg"]
    with pytest.raises(ServiceError):
        service.update("t", "gg", "IN_PROGRESS")
    nxt = service.describe("t", "$next", "greengrass")
    assert nxt is not None
    assert nxt.execution.job_id == "gg"


def test_presigned_url_resigned_on_every_delivery(service: JobsService) -> None:
    url = "https://bucket.s3.amazonaws.com/firmware.bin"
    service.create_job("j", ["t"], {"url": f"${{aws:iot:s3-presigned-url:{url}}}"})
    first = service.start_next("t")
    second = service.describe("t", "j")
    assert first is not None and second is not None
    signatures = []
    for delivery in (first, second):
        value = delivery.document["url"]
        assert value.startswith(url + "?")
        match = re.search(r"X-Amz-Signature=([0-9a-f]{64})", value)
        assert match
        assert "X-Amz-Date=" in value and "X-Amz-Expires=3600" in value
        signatures.append(match.group(1))
    assert signatures[0] != signatures[1]
    # GetJobDocument returns the placeholder, not a signed URL (issue 15, item 7).
    assert service.job_document("j") == f'{{"url":"${{aws:iot:s3-presigned-url:{url}}}"}}'


def test_throttle_rate_one_throttles_everything(clock: ManualClock) -> None:
    service = JobsService(clock, throttle_rate=1.0, seed=7)
    with pytest.raises(ServiceError) as info:
        service.admit("StartNextPendingJobExecution")
    assert info.value.code is ErrorCode.REQUEST_THROTTLED
    assert service.counters["StartNextPendingJobExecution"] == 1
    service.throttle_rate = 0.0
    service.admit("StartNextPendingJobExecution")


def test_state_survives_restart(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "state.db"
    first = JobsService(clock, store=StateStore(path))
    first.create_job("done", ["t"], DOC)
    first.update("t", "done", "SUCCEEDED")
    first.create_job("running", ["t"], DOC, in_progress_timeout_minutes=5)
    first.create_job("waiting", ["t"], DOC)
    first.start_next("t", status_details={"k": "v"})
    second = JobsService(clock, store=StateStore(path))
    assert second.execution("done", "t").status is ExecutionStatus.SUCCEEDED
    running = second.execution("running", "t")
    assert (running.status, running.status_details, running.version_number) == (
        ExecutionStatus.IN_PROGRESS,
        {"k": "v"},
        2,
    )
    assert [e.job_id for e in second.get_pending("t")[1]] == ["waiting"]
    assert len(second.history()) == len(first.history())
    # timers are restored too
    clock.advance(301)
    assert second.tick() == 1
    assert second.execution("running", "t").status is ExecutionStatus.TIMED_OUT


async def test_wait_for_status_wakes_on_change(service: JobsService) -> None:
    import asyncio

    service.create_job("j", ["t"], DOC)
    # the device's update runs only once wait_for_status is already waiting
    asyncio.get_running_loop().call_soon(service.update, "t", "j", "SUCCEEDED")
    done = await service.wait_for_status("j", "t", "SUCCEEDED", timeout=2)
    assert done.status is ExecutionStatus.SUCCEEDED
    with pytest.raises(TimeoutError):
        await service.wait_for(lambda: False, timeout=0.05)


def test_a_queue_finds_its_head_without_walking_what_it_gave_out(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A queue held at depth takes from the front and adds at the back. A plain dict keeps the
    taken entries as holes at the front of its table, so each head lookup walks them (the
    emulator's cost per job grew with the queue depth); the queued executions are therefore
    kept in an OrderedDict, also after a restart. Structural, not timed (benchmarks/depth.py
    measures the cost)."""
    path = tmp_path / "state.db"
    first = JobsService(clock, store=StateStore(path))
    for n in range(3):
        first.create_job(f"j{n}", ["t"], DOC)
    first.start_next("t")
    first.update("t", "j0", "SUCCEEDED")
    second = JobsService(clock, store=StateStore(path))
    for service in (first, second):
        queue = service._queues[("t", None)]
        assert isinstance(queue.queued, OrderedDict)
        assert [e.job_id for e in service.get_pending("t")[1]] == ["j1", "j2"]
