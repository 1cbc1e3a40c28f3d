"""Scheduling, rollout and abort configurations (issue 15, item 5; "How job configurations
work", the SchedulingConfig, JobExecutionsRolloutConfig and AbortConfig API pages)."""

from __future__ import annotations

from typing import Any

import pytest

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.configs import (
    AbortConfig,
    RolloutConfig,
    SchedulingConfig,
    format_date_time,
)
from jobs_agent.emulator.model import ExecutionStatus, JobStatus
from jobs_agent.emulator.rollout import rate_per_minute
from tests.emulator.conformance.conftest import ARN, DOC

HOUR = 3600.0


def things(service: JobsService, count: int) -> list[str]:
    names = [f"t{n:03d}" for n in range(count)]
    for name in names:
        service.create_thing(name)
    return names


def created(service: JobsService, job_id: str) -> int:
    return len(service.executions_for_job(job_id))


def test_scheduled_job_waits_for_its_start_time(
    iot: Any, service: JobsService, clock: ManualClock
) -> None:
    """ "The time a job will begin rollout of the job document" and "must be scheduled a
    minimum of thirty minutes from the current time" (API_SchedulingConfig.html); the job's
    status is SCHEDULED until then (Job.status, API_Job.html); DescribeJob echoes the config."""
    start = format_date_time(clock.now() + HOUR)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="soon",
            targets=[ARN.format("t")],
            document="{}",
            schedulingConfig={"startTime": format_date_time(clock.now() + 600)},
        )
    iot.create_job(
        jobId="j", targets=[ARN.format("t")], document="{}", schedulingConfig={"startTime": start}
    )
    job = iot.describe_job(jobId="j")["job"]
    assert job["status"] == "SCHEDULED"
    assert job["schedulingConfig"] == {"startTime": start}
    assert service.get_pending("t") == ([], [])
    clock.advance(HOUR)
    service.tick()
    assert iot.describe_job(jobId="j")["job"]["status"] == "IN_PROGRESS"
    assert [e.job_id for e in service.get_pending("t")[1]] == ["j"]


@pytest.mark.parametrize(
    ("behavior", "queued", "in_progress", "job_status"),
    [
        (
            "STOP_ROLLOUT",
            ExecutionStatus.QUEUED,
            ExecutionStatus.IN_PROGRESS,
            JobStatus.IN_PROGRESS,
        ),
        ("CANCEL", ExecutionStatus.CANCELED, ExecutionStatus.IN_PROGRESS, JobStatus.CANCELED),
        ("FORCE_CANCEL", ExecutionStatus.CANCELED, ExecutionStatus.CANCELED, JobStatus.CANCELED),
    ],
)
def test_end_behavior(
    service: JobsService,
    clock: ManualClock,
    behavior: str,
    queued: ExecutionStatus,
    in_progress: ExecutionStatus,
    job_status: JobStatus,
) -> None:
    """endBehavior "for all job executions after a job reaches the selected endTime":
    STOP_ROLLOUT | CANCEL | FORCE_CANCEL (API_SchedulingConfig.html). STOP_ROLLOUT stops
    creating executions; CANCEL cancels QUEUED ones; FORCE_CANCEL IN_PROGRESS ones too."""
    names = things(service, 3)
    service.create_job(
        "j",
        names,
        DOC,
        rollout=RolloutConfig(maximum_per_minute=2),
        scheduling=SchedulingConfig.from_json(
            {"endTime": format_date_time(clock.now() + HOUR), "endBehavior": behavior}
        ),
    )
    service.start_next(names[0])
    assert created(service, "j") == 2
    clock.advance(HOUR)
    service.tick()
    assert created(service, "j") == 2  # the third was never rolled out
    assert service.execution("j", names[1]).status is queued
    assert service.execution("j", names[0]).status is in_progress
    assert service.job("j").status is job_status


def test_maintenance_window_gates_the_rollout(
    iot: Any, service: JobsService, clock: ManualClock
) -> None:
    """maintenanceWindows: "a recurring maintenance window with a predetermined start time and
    duration for the rollout of a job document" (API_SchedulingConfig.html, MaintenanceWindow);
    DescribeJob shows the next occurrences in scheduledJobRollouts (API_Job.html)."""
    # ManualClock starts at 2023-11-14T22:13:20Z; the window opens daily at 02:00 for 1 hour.
    window = {"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 60}
    iot.create_job(
        jobId="j",
        targets=[ARN.format("t")],
        document="{}",
        schedulingConfig={"maintenanceWindows": [window]},
    )
    job = iot.describe_job(jobId="j")["job"]
    assert job["schedulingConfig"]["maintenanceWindows"] == [window]
    assert job["scheduledJobRollouts"][0] == {"startTime": "2023-11-15T02:00"}
    assert len(job["scheduledJobRollouts"]) == 7
    assert service.executions_for_job("j") == []
    clock.advance(4 * HOUR)  # 02:13, inside the window
    service.tick()
    assert [e.job_id for e in service.get_pending("t")[1]] == ["j"]


def test_constant_rollout_rate(service: JobsService, clock: ManualClock) -> None:
    """ "To specify the maximum number of job targets to inform per minute, use a constant
    rollout rate" (Job rollout rates, jobs-configurations-details.html)."""
    names = things(service, 5)
    service.create_job("j", names, DOC, rollout=RolloutConfig(maximum_per_minute=2))
    assert created(service, "j") == 2
    assert service.job("j").pending_targets == names[2:]
    clock.advance(60)
    service.tick()
    assert created(service, "j") == 4
    clock.advance(60)
    service.tick()
    assert created(service, "j") == 5


def test_exponential_rollout_rate_follows_the_guides_table() -> None:
    """ "A job rollout with a base rate of 50 per minute, increment factor of 2, and number of
    notified ... devices ... as 1000": 50, 100, 200, 400 a minute after 0, 1000, 2000, 3000
    (Job rollout rates, jobs-configurations-details.html)."""
    config = RolloutConfig.from_json(
        {
            "exponentialRate": {
                "baseRatePerMinute": 50,
                "incrementFactor": 2,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 1000},
            },
            "maximumPerMinute": 1000,
        }
    )
    assert [rate_per_minute(config, n, 0) for n in (0, 999, 1000, 2000, 3000, 5000)] == [
        50,
        50,
        100,
        200,
        400,
        1000,
    ]


def test_abort_cancels_queued_executions_only(iot: Any, service: JobsService) -> None:
    """ "When the abort criteria is met ... only QUEUED job executions are canceled ... current
    job executions that have an IN_PROGRESS status will not be canceled"; the service
    "adds auto-populated values for the comment and reasonCode" (jobs-configurations-details
    .html; manage-job-cli.html, Cancel a job)."""
    names = things(service, 4)
    service.create_job(
        "j",
        names,
        DOC,
        abort=AbortConfig.from_json(
            {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 50,
                        "minNumberOfExecutedThings": 2,
                    }
                ]
            }
        ),
    )
    service.start_next(names[0])
    service.update(names[1], "j", "FAILED")
    assert service.job("j").status is JobStatus.IN_PROGRESS  # 1 of 4 = 25 %
    service.update(names[2], "j", "FAILED")  # 2 of 4 = 50 %
    job = iot.describe_job(jobId="j")["job"]
    assert job["status"] == "CANCELED"
    assert job["reasonCode"] and job["comment"]
    assert service.execution("j", names[3]).status is ExecutionStatus.CANCELED
    assert service.execution("j", names[0]).status is ExecutionStatus.IN_PROGRESS
    assert job["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 50
