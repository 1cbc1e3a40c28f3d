"""Pending lists and queue order: caps, sorting, the head of the queue (issue 15, items 1-2)."""

from __future__ import annotations

from typing import Any

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.configs import SchedulingConfig
from jobs_agent.emulator.embedded import EmbeddedEmulator
from tests.emulator.conformance.conftest import DOC, Device


def queue_jobs(service: JobsService, clock: ManualClock, count: int, thing: str = "dev1") -> None:
    for n in range(count):
        service.create_job(f"job-{n:02d}", [thing], DOC)
        clock.advance(1)


async def test_list_notification_holds_at_most_ten(
    service: JobsService, clock: ManualClock, emulator: EmbeddedEmulator, device: Device
) -> None:
    """ "A ListNotification ... can display up to 15 pending job executions" with, and 10
    without, a scheduling configuration (AWS IoT Jobs limits, job-limits.html)."""
    service = emulator.service
    queue_jobs(service, clock, 12)
    notify = await device.published()
    lists = device.topics(notify, "notify")
    assert len(lists) == 12
    assert len(lists[-1]["jobs"]["QUEUED"]) == 10
    assert [j["jobId"] for j in lists[-1]["jobs"]["QUEUED"]] == [f"job-{n:02d}" for n in range(10)]


async def test_mqtt_get_pending_holds_at_most_ten(
    clock: ManualClock, emulator: EmbeddedEmulator, device: Device
) -> None:
    """GetPendingJobExecutions "can return up to a maximum of 10 pending job executions"
    (AWS IoT Jobs limits, job-limits.html); IN_PROGRESS ones first, then by queue time (Jobs
    notifications, jobs-comm-notifications.html)."""
    queue_jobs(emulator.service, clock, 12)
    emulator.service.start_next("dev1")
    kind, reply = await device.request("get")
    assert kind == "accepted"
    assert [j["jobId"] for j in reply["inProgressJobs"]] == ["job-00"]
    assert [j["jobId"] for j in reply["queuedJobs"]] == [f"job-{n:02d}" for n in range(1, 10)]


def test_http_get_pending_holds_at_most_ten(
    service: JobsService, clock: ManualClock, data: Any
) -> None:
    """The same cap on the HTTPS data plane (job-limits.html; API_iot-jobs-data_
    GetPendingJobExecutions)."""
    queue_jobs(service, clock, 12)
    reply = data.get_pending_job_executions(thingName="dev1")
    assert reply["inProgressJobs"] == []
    assert len(reply["queuedJobs"]) == 10


def test_cap_is_fifteen_with_a_scheduling_configuration(
    service: JobsService, clock: ManualClock
) -> None:
    """ "With scheduling configuration: 15" (AWS IoT Jobs limits, job-limits.html)."""
    queue_jobs(service, clock, 14)
    service.create_job(
        "windowed",
        ["dev1"],
        DOC,
        scheduling=SchedulingConfig.from_json(
            {"maintenanceWindows": [{"startTime": "cron(0 * * * ? *)", "durationInMinutes": 59}]}
        ),
    )
    clock.advance(3600)
    service.tick()
    in_progress, queued = service.get_pending("dev1")
    assert len(in_progress) + len(queued) == 15


def test_start_next_resumes_the_in_progress_execution_queued_first(
    service: JobsService, clock: ManualClock
) -> None:
    """ "Any job executions with status IN_PROGRESS are returned first. Job executions are
    returned in the order in which they were created" (Jobs device MQTT API, jobs-mqtt-api.html
    StartNextPendingJobExecution and DescribeJobExecution `$next`). Started first is not queued
    first: job-b is started (by update) before job-a."""
    service.create_job("job-a", ["dev1"], DOC)
    clock.advance(1)
    service.create_job("job-b", ["dev1"], DOC)
    clock.advance(1)
    service.update("dev1", "job-b", "IN_PROGRESS")
    clock.advance(1)
    service.update("dev1", "job-a", "IN_PROGRESS")
    described = service.describe("dev1", "$next")
    started = service.start_next("dev1")
    assert described is not None and started is not None
    assert described.execution.job_id == "job-a"
    assert started.execution.job_id == "job-a"
    in_progress, _ = service.get_pending("dev1")
    assert [e.job_id for e in in_progress] == ["job-a", "job-b"]


async def test_notify_next_announces_the_earliest_queued_in_progress_execution(
    clock: ManualClock, emulator: EmbeddedEmulator, device: Device
) -> None:
    """NextNotification: a QUEUED->IN_PROGRESS execution becomes first "when the job execution
    ... was queued earlier than any other IN_PROGRESS job execution in the list" (Jobs
    notifications, jobs-comm-notifications.html)."""
    service = emulator.service
    service.create_job("job-a", ["dev1"], DOC)
    clock.advance(1)
    service.create_job("job-b", ["dev1"], DOC)
    clock.advance(1)
    service.update("dev1", "job-b", "IN_PROGRESS")
    await device.published()
    service.update("dev1", "job-a", "IN_PROGRESS")
    nexts = device.topics(await device.published(), "notify-next")
    assert [n["execution"]["jobId"] for n in nexts] == ["job-a"]
