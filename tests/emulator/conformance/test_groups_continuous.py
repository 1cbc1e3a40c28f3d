"""Thing groups, CONTINUOUS jobs and the REMOVED status (issue 15, item 4)."""

from __future__ import annotations

from typing import Any

import pytest

from jobs_agent.emulator import JobsService
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.model import ExecutionStatus, JobStatus
from jobs_agent.jobs.errors import ErrorCode
from tests.emulator.conformance.conftest import ARN, DOC, GROUP_ARN, Device


def test_snapshot_job_on_a_static_group_targets_its_members(iot: Any, data: Any) -> None:
    """ "The job is queued for execution on the targets (things or thing groups)" (Create and
    manage jobs by using the AWS CLI, manage-job-cli.html); CreateThingGroup and
    AddThingToThingGroup (API reference)."""
    iot.create_thing_group(thingGroupName="fleet")
    for name in ("a", "b"):
        iot.create_thing(thingName=name)
        iot.add_thing_to_thing_group(thingGroupName="fleet", thingName=name)
    iot.create_job(jobId="j", targets=[GROUP_ARN.format("fleet")], document='{"x": 1}')
    for name in ("a", "b"):
        assert [
            e["jobId"] for e in data.get_pending_job_executions(thingName=name)["queuedJobs"]
        ] == ["j"]
    job = iot.describe_job(jobId="j")["job"]
    assert job["targets"] == [GROUP_ARN.format("fleet")]
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 2


def test_continuous_job_reaches_things_that_join_later(service: JobsService) -> None:
    """CONTINUOUS: "a job will run on a thing when the thing is added to a target group, even
    after the job was completed by all things originally in the group" (CreateJob
    targetSelection, API_CreateJob.html)."""
    service.create_thing_group("fleet")
    service.create_job("j", [GROUP_ARN.format("fleet")], DOC, target_selection="CONTINUOUS")
    assert service.executions_for_job("j") == []
    service.create_thing("late")
    service.add_thing_to_group("fleet", "late")
    assert service.execution("j", "late").status is ExecutionStatus.QUEUED
    service.update("late", "j", "SUCCEEDED")
    assert service.job("j").status is JobStatus.IN_PROGRESS  # a continuous job never completes


async def test_leaving_a_dynamic_group_marks_the_execution_removed(
    emulator: EmbeddedEmulator, device: Device
) -> None:
    """REMOVED: "When your device is no longer a valid target for the job execution, such as
    when it's detached from a dynamic thing group, AWS IoT Jobs sets the job execution status
    to REMOVED" (Jobs and job execution states, iot-jobs-lifecycle.html). The execution stays,
    terminal; the device's next update is refused and it left the pending lists."""
    service = emulator.service
    service.create_thing("dev1", {"model": "x1"})
    service.create_thing_group("x1-fleet", query="attributes.model:x1")
    service.create_job("j", [GROUP_ARN.format("x1-fleet")], DOC, target_selection="CONTINUOUS")
    kind, started = await device.request("start-next")
    assert started["execution"]["jobId"] == "j"
    await device.published()
    service.update_thing("dev1", {"model": "x2"})
    published = await device.published()
    assert device.topics(published, "notify")[-1]["jobs"] == {}
    assert service.execution("j", "dev1").status is ExecutionStatus.REMOVED
    kind, reply = await device.request("j/update", {"status": "SUCCEEDED"})
    assert (kind, reply["code"]) == ("rejected", str(ErrorCode.INVALID_STATE_TRANSITION))
    assert reply["executionState"]["status"] == "REMOVED"


def test_rejoining_starts_a_new_execution(service: JobsService) -> None:
    """ "You can re-attach the thing to your target group and restart the job execution for the
    device" (REMOVED, iot-jobs-lifecycle.html)."""
    service.create_thing("t")
    service.create_thing_group("g")
    service.add_thing_to_group("g", "t")
    service.create_job("j", [GROUP_ARN.format("g")], DOC, target_selection="CONTINUOUS")
    service.remove_thing_from_group("g", "t")
    assert service.execution("j", "t").status is ExecutionStatus.REMOVED
    service.add_thing_to_group("g", "t")
    current = service.execution("j", "t")
    assert (current.execution_number, current.status) == (2, ExecutionStatus.QUEUED)


def test_associate_targets_with_a_continuous_job(iot: Any, service: JobsService) -> None:
    """AssociateTargetsWithJob: "The job must have been created with the targetSelection field
    set to CONTINUOUS" and be IN_PROGRESS (API_AssociateTargetsWithJob.html)."""
    iot.create_thing(thingName="a")
    iot.create_thing_group(thingGroupName="g")
    iot.add_thing_to_thing_group(thingGroupName="g", thingName="a")
    iot.create_job(jobId="snap", targets=[ARN.format("a")], document="{}")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.associate_targets_with_job(jobId="snap", targets=[GROUP_ARN.format("g")])
    iot.create_job(
        jobId="cont", targets=[ARN.format("a")], document="{}", targetSelection="CONTINUOUS"
    )
    iot.create_thing(thingName="b")
    iot.add_thing_to_thing_group(thingGroupName="g", thingName="b")
    reply = iot.associate_targets_with_job(jobId="cont", targets=[GROUP_ARN.format("g")])
    assert reply["jobId"] == "cont"
    assert service.execution("cont", "b").status is ExecutionStatus.QUEUED
    assert iot.describe_job(jobId="cont")["job"]["targets"] == [
        ARN.format("a"),
        GROUP_ARN.format("g"),
    ]


def test_dynamic_group_query_and_membership(iot: Any) -> None:
    """CreateDynamicThingGroup with a fleet-indexing query; ListThingsInThingGroup
    (API_CreateDynamicThingGroup.html). The emulator's query subset is in docs/emulator.md."""
    iot.create_thing(thingName="a", attributePayload={"attributes": {"model": "x1"}})
    iot.create_thing(thingName="b", attributePayload={"attributes": {"model": "x2"}})
    created = iot.create_dynamic_thing_group(
        thingGroupName="x1s", queryString="attributes.model:x1"
    )
    assert created["thingGroupArn"] == GROUP_ARN.format("x1s")
    assert iot.list_things_in_thing_group(thingGroupName="x1s")["things"] == ["a"]
    iot.update_thing(thingName="b", attributePayload={"attributes": {"model": "x1"}})
    assert iot.list_things_in_thing_group(thingGroupName="x1s")["things"] == ["a", "b"]
    with pytest.raises(iot.exceptions.InvalidQueryException):
        iot.create_dynamic_thing_group(thingGroupName="bad", queryString="shadow.reported.x:1")
