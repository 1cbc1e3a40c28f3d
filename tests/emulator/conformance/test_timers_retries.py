"""Timers and retries (issue 15, item 3; "How job configurations work")."""

from __future__ import annotations

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.model import ExecutionStatus
from tests.emulator.conformance.conftest import DOC

RETRY_ALL = [{"failureType": "ALL", "numberOfRetries": 2}]


def test_timed_out_without_timeout_config_is_not_retried(
    service: JobsService, clock: ManualClock
) -> None:
    """ "To retry execution because of a timeout failure, you must enable the timeout
    configuration" (How job configurations work, jobs-configurations-details.html, Job
    execution retry configuration). A device's step timer alone is no timeout configuration."""
    service.create_job("j", ["t"], DOC, retry_config=RETRY_ALL)
    service.start_next("t", step_timeout_minutes=1)
    clock.advance(60)
    assert service.tick() == 1
    current = service.execution("j", "t")
    assert (current.execution_number, current.status) == (1, ExecutionStatus.TIMED_OUT)


def test_timed_out_with_timeout_config_is_retried(service: JobsService, clock: ManualClock) -> None:
    """ "If you enable timeout when creating a job, then AWS IoT Jobs will attempt to retry the
    job execution ... when the in-progress timer times out, or when a step timer ... times out"
    (jobs-configurations-details.html)."""
    service.create_job("j", ["t"], DOC, in_progress_timeout_minutes=30, retry_config=RETRY_ALL)
    service.start_next("t", step_timeout_minutes=1)
    clock.advance(60)
    service.tick()
    retried = service.execution("j", "t")
    assert (retried.execution_number, retried.status, retried.retry_attempt) == (
        2,
        ExecutionStatus.QUEUED,
        1,
    )


def test_failed_is_retried_and_rejected_is_not(service: JobsService) -> None:
    """FAILED "Can be retried? Yes", REJECTED "No" (Jobs and job execution states,
    iot-jobs-lifecycle.html)."""
    service.create_job(
        "j", ["t"], DOC, retry_config=[{"failureType": "FAILED", "numberOfRetries": 1}]
    )
    service.update("t", "j", "FAILED")
    assert service.execution("j", "t").execution_number == 2
    service.update("t", "j", "REJECTED")
    assert service.execution("j", "t").execution_number == 2


def test_step_timer_cannot_outlive_the_in_progress_timer(
    service: JobsService, clock: ManualClock
) -> None:
    """ "The step timer can't exceed the in-progress timer's absolute bound" (How timers work
    for job timeouts, jobs-configurations-details.html)."""
    service.create_job("j", ["t"], DOC, in_progress_timeout_minutes=20)
    service.start_next("t")
    clock.advance(13 * 60)
    service.update("t", "j", "IN_PROGRESS", step_timeout_minutes=9)
    described = service.describe("t", "j")
    assert described is not None and described.seconds_before_timed_out == 7 * 60
    clock.advance(7 * 60)
    assert service.tick() == 1


def test_approximate_seconds_before_timed_out_is_absent_once_terminal(
    service: JobsService,
) -> None:
    """ "This value will not be included if the job execution has reached a terminal status"
    (DescribeJobExecution, API_DescribeJobExecution.html)."""
    service.create_job("j", ["t"], DOC, in_progress_timeout_minutes=5)
    service.start_next("t")
    service.update("t", "j", "SUCCEEDED")
    assert service.seconds_before_timed_out(service.execution("j", "t")) is None
