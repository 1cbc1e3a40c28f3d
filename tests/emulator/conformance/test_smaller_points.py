"""Presigned URLs, deletion, DescribeJobExecution's default, events, InternalError (issue 15,
item 7)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs_agent.emulator import JobsService
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.model import ExecutionStatus
from jobs_agent.jobs.errors import ErrorCode
from tests.emulator.conformance.conftest import ARN, DOC, Device

PLACEHOLDER = "${aws:iot:s3-presigned-url:https://bucket.s3.amazonaws.com/fw.bin}"
ROLE = "arn:aws:iam::123456789012:role/S3DownloadRole"


def test_get_job_document_keeps_presigned_placeholders(iot: Any, data: Any) -> None:
    """ "When you use this command to retrieve a job document, placeholder URLs aren't replaced
    by presigned Amazon S3 URLs" (manage-job-cli.html, Get a job document); a device gets them
    replaced (create-manage-jobs.html, Presigned URLs)."""
    document = json.dumps({"url": PLACEHOLDER})
    iot.create_job(
        jobId="j",
        targets=[ARN.format("t")],
        document=document,
        presignedUrlConfig={"roleArn": ROLE, "expiresInSec": 600},
    )
    assert iot.get_job_document(jobId="j")["document"] == document
    delivered = data.describe_job_execution(thingName="t", jobId="j")["execution"]
    assert "X-Amz-Expires=600" in json.loads(delivered["jobDocument"])["url"]


def test_presigned_placeholders_need_a_role(iot: Any) -> None:
    """ "When you create a job that uses presigned Amazon S3 URLs, you must provide an IAM role"
    (create-manage-jobs.html, Presigned URLs)."""
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(
            jobId="j", targets=[ARN.format("t")], document=json.dumps({"u": PLACEHOLDER})
        )


def test_presigned_expiry_is_at_most_an_hour(endpoint: str) -> None:
    """expiresInSec: "Valid values are 60 - 3600" (API_PresignedUrlConfig.html). Sent raw:
    botocore checks only the minimum on the client side."""
    import urllib.error
    import urllib.request

    body = {
        "targets": [ARN.format("t")],
        "document": json.dumps({"u": PLACEHOLDER}),
        "presignedUrlConfig": {"roleArn": ROLE, "expiresInSec": 7200},
    }
    request = urllib.request.Request(
        endpoint + "/jobs/j",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=x/20240101/eu-west-1/iot/aws4_request"
        },
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read())["__type"] == "InvalidRequestException"


def test_delete_job_needs_force_while_in_progress(iot: Any, service: JobsService) -> None:
    """ "By default, you can only delete a job that's in a terminal state ... You can delete a
    job in the IN_PROGRESS state, however, if the force parameter is set to true"
    (manage-job-cli.html, Delete a job; API_DeleteJob.html force). A job whose executions are
    all QUEUED is IN_PROGRESS."""
    iot.create_job(jobId="j", targets=[ARN.format("t")], document="{}")
    with pytest.raises(iot.exceptions.InvalidStateTransitionException):
        iot.delete_job(jobId="j")
    iot.delete_job(jobId="j", force=True)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="j")
    iot.create_job(jobId="done", targets=[ARN.format("t")], document="{}")
    service.update("t", "done", "SUCCEEDED")
    iot.delete_job(jobId="done")


def test_delete_queued_execution_without_force(iot: Any) -> None:
    """ "By default, the status of the job execution must be QUEUED or in a terminal state"
    (manage-job-cli.html, Delete job execution)."""
    iot.create_job(jobId="j", targets=[ARN.format("t")], document="{}")
    iot.delete_job_execution(jobId="j", thingName="t", executionNumber=1)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job_execution(jobId="j", thingName="t")


def test_http_describe_job_execution_includes_the_document_by_default(data: Any, iot: Any) -> None:
    """includeJobDocument: "Unless set to false, the response contains the job document. The
    default is true." (API_iot-jobs-data_DescribeJobExecution.html)."""
    iot.create_job(jobId="j", targets=[ARN.format("t")], document='{"a": 1}')
    execution = data.describe_job_execution(thingName="t", jobId="j")["execution"]
    assert json.loads(execution["jobDocument"]) == {"a": 1}
    without = data.describe_job_execution(thingName="t", jobId="j", includeJobDocument=False)
    assert "jobDocument" not in without["execution"]


async def test_jobs_events_are_published_when_enabled(
    emulator: EmbeddedEmulator, device: Device
) -> None:
    """ "$aws/events/job/jobID/completed|canceled|..." and "$aws/events/jobExecution/jobID/
    succeeded|..." with the page's payloads, once events are enabled (Jobs events,
    events-jobs.html; UpdateEventConfigurations)."""
    service = emulator.service
    await device.transport.subscribe("$aws/events/#")
    service.create_job("quiet", ["dev1"], DOC)
    service.update("dev1", "quiet", "SUCCEEDED")
    assert not [t for t, _ in await device.published() if t.startswith("$aws/events/")]
    service.update_event_configurations({"JOB": True, "JOB_EXECUTION": True})
    service.create_job("loud", ["dev1"], DOC)
    service.update("dev1", "loud", "SUCCEEDED")
    events = {t: p for t, p in await device.published() if t.startswith("$aws/events/")}
    execution = events["$aws/events/jobExecution/loud/succeeded"]
    assert (execution["eventType"], execution["status"]) == ("JOB_EXECUTION", "SUCCEEDED")
    assert execution["thingArn"].endswith(":thing/dev1")
    completed = events["$aws/events/job/loud/completed"]
    assert (completed["eventType"], completed["status"]) == ("JOB", "COMPLETED")
    assert completed["jobProcessDetails"]["numberOfSucceededThings"] == 1
    service.create_job("gone", ["dev1"], DOC)
    service.cancel_job("gone")
    topics = [t for t, _ in await device.published() if t.startswith("$aws/events/job/gone")]
    assert topics == [
        "$aws/events/job/gone/cancellation_in_progress",
        "$aws/events/job/gone/canceled",
    ]


def test_event_configurations_over_http(iot: Any) -> None:
    """UpdateEventConfigurations / DescribeEventConfigurations (API reference)."""
    iot.update_event_configurations(eventConfigurations={"JOB": {"Enabled": True}})
    described = iot.describe_event_configurations()["eventConfigurations"]
    assert described["JOB"] == {"Enabled": True}
    assert described["JOB_EXECUTION"] == {"Enabled": False}


async def test_internal_error_can_be_provoked(emulator: EmbeddedEmulator, device: Device) -> None:
    """InternalError is one of the Jobs error codes (Jobs API, jobs-api.html ErrorResponse); a
    test injects it where it wants it, and the request is answered normally afterwards."""
    emulator.service.create_job("j", ["dev1"], DOC)
    emulator.service.fail_next("StartNextPendingJobExecution")
    kind, reply = await device.request("start-next")
    assert (kind, reply["code"]) == ("rejected", str(ErrorCode.INTERNAL_ERROR))
    kind, reply = await device.request("start-next")
    assert kind == "accepted" and reply["execution"]["jobId"] == "j"
    assert emulator.service.execution("j", "dev1").status is ExecutionStatus.IN_PROGRESS


async def test_internal_error_can_be_provoked_after_a_request_goes_through(
    emulator: EmbeddedEmulator, device: Device
) -> None:
    """`fail_next(..., after=1)`: the first such request is answered, the next one refused (a
    test lets a device's first GetPendingJobExecutions through and fails the later ones)."""
    emulator.service.create_job("j", ["dev1"], DOC)
    emulator.service.fail_next("GetPendingJobExecutions", after=1)
    kind, reply = await device.request("get")
    assert kind == "accepted" and reply["queuedJobs"][0]["jobId"] == "j"
    kind, reply = await device.request("get")
    assert (kind, reply["code"]) == ("rejected", str(ErrorCode.INTERNAL_ERROR))
    kind, _ = await device.request("get")
    assert kind == "accepted"


def test_internal_error_over_http_is_service_unavailable(data: Any, service: JobsService) -> None:
    """The HTTPS data plane's ServiceUnavailableException, HTTP 503 (API_iot-jobs-data_
    StartNextPendingJobExecution.html Errors)."""
    service.internal_error_rate = 1.0
    with pytest.raises(data.exceptions.ServiceUnavailableException):
        data.get_pending_job_executions(thingName="t")
