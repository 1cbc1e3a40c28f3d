"""The emulator's HTTP planes driven by boto3 (`iot` and `iot-jobs-data`), unchanged.

boto3 is a client nobody here wrote: if routes, field names, timestamp types or error shapes are
wrong, its parsers or its modelled exception classes say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.http_api import HttpApi

ARN = "arn:aws:iot:eu-west-1:111122223333:thing/{}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service(clock: ManualClock) -> JobsService:
    return JobsService(clock)


@pytest.fixture
def endpoint(service: JobsService) -> Iterator[str]:
    api = HttpApi(service, "127.0.0.1", 0)
    api.start()
    assert api.endpoint is not None
    try:
        yield api.endpoint
    finally:
        api.stop()


def _client(name: str, endpoint: str) -> Any:
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="whatever",
    )


@pytest.fixture
def iot(endpoint: str) -> Any:
    return _client("iot", endpoint)


@pytest.fixture
def data(endpoint: str) -> Any:
    return _client("iot-jobs-data", endpoint)


def test_create_job_and_drive_it_over_the_data_plane(iot: Any, data: Any) -> None:
    iot.create_thing(thingName="dev1")
    document = {"steps": [{"action": {"name": "x"}}]}
    created = iot.create_job(
        jobId="job1",
        targets=[ARN.format("dev1")],
        document=json.dumps(document),
        description="first",
        timeoutConfig={"inProgressTimeoutInMinutes": 30},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "ALL", "numberOfRetries": 1}]},
    )
    assert created["jobId"] == "job1"
    assert created["jobArn"].endswith(":job/job1")

    pending = data.get_pending_job_executions(thingName="dev1")
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["job1"]

    started = data.start_next_pending_job_execution(
        thingName="dev1", statusDetails={"phase": "start"}, stepTimeoutInMinutes=10
    )["execution"]
    assert started["status"] == "IN_PROGRESS"
    assert json.loads(started["jobDocument"]) == document  # a string over HTTP
    assert started["approximateSecondsBeforeTimedOut"] == 600
    assert isinstance(started["queuedAt"], int)

    described = data.describe_job_execution(
        thingName="dev1", jobId="job1", includeJobDocument=True
    )["execution"]
    assert described["statusDetails"] == {"phase": "start"}

    updated = data.update_job_execution(
        thingName="dev1",
        jobId="job1",
        status="SUCCEEDED",
        expectedVersion=2,
        includeJobExecutionState=True,
        includeJobDocument=True,
    )
    assert updated["executionState"]["status"] == "SUCCEEDED"
    assert json.loads(updated["jobDocument"]) == document

    job = iot.describe_job(jobId="job1")["job"]
    assert job["status"] == "COMPLETED"
    assert job["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert job["createdAt"].year >= 2023  # botocore parsed a timestamp
    assert json.loads(iot.get_job_document(jobId="job1")["document"]) == document

    execution = iot.describe_job_execution(thingName="dev1", jobId="job1")["execution"]
    assert execution["status"] == "SUCCEEDED"
    assert execution["thingArn"].endswith("thing/dev1")
    assert execution["statusDetails"] == {"detailsMap": {"phase": "start"}}

    for_thing = iot.list_job_executions_for_thing(thingName="dev1")["executionSummaries"]
    assert [s["jobId"] for s in for_thing] == ["job1"]
    for_job = iot.list_job_executions_for_job(jobId="job1")["executionSummaries"]
    assert for_job[0]["jobExecutionSummary"]["status"] == "SUCCEEDED"
    assert [j["jobId"] for j in iot.list_jobs()["jobs"]] == ["job1"]

    assert data.start_next_pending_job_execution(thingName="dev1").get("execution") is None


def test_errors_map_to_modelled_exceptions(iot: Any, data: Any) -> None:
    iot.create_job(jobId="job1", targets=[ARN.format("dev1")], document="{}")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_job(jobId="job1", targets=[ARN.format("dev1")], document="{}")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="nope")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId="bad", targets=[ARN.format("dev1")], document="[1]")
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.update_job_execution(thingName="dev1", jobId="nope", status="IN_PROGRESS")
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.update_job_execution(
            thingName="dev1", jobId="job1", status="IN_PROGRESS", statusDetails={"k": "a\nb"}
        )
    data.start_next_pending_job_execution(thingName="dev1")
    with pytest.raises(iot.exceptions.InvalidStateTransitionException):
        iot.cancel_job_execution(jobId="job1", thingName="dev1")
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.cancel_job_execution(jobId="job1", thingName="dev1", force=True, expectedVersion=99)
    with pytest.raises(data.exceptions.InvalidStateTransitionException) as info:
        data.update_job_execution(
            thingName="dev1", jobId="job1", status="IN_PROGRESS", expectedVersion=1
        )
    assert info.value.response["Error"]["Code"] == "InvalidStateTransitionException"
    iot.cancel_job_execution(jobId="job1", thingName="dev1", force=True)
    with pytest.raises(data.exceptions.InvalidStateTransitionException):
        data.update_job_execution(thingName="dev1", jobId="job1", status="SUCCEEDED")
    with pytest.raises(data.exceptions.TerminalStateException):
        data.describe_job_execution(thingName="dev1", jobId="job1")
    execution = iot.describe_job_execution(thingName="dev1", jobId="job1")["execution"]
    assert (execution["status"], execution["forceCanceled"]) == ("CANCELED", True)


def test_throttling_exception(service: JobsService, data: Any) -> None:
    service.throttle_rate = 1.0
    # botocore retries throttling by itself: one attempt, so the exception surfaces
    client = boto3.client(
        "iot-jobs-data",
        endpoint_url=data.meta.endpoint_url,
        region_name="eu-west-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(client.exceptions.ThrottlingException):
        client.get_pending_job_executions(thingName="dev1")
    assert service.counters["throttled"] == 1


def test_cancel_job_and_delete_execution(iot: Any, data: Any, service: JobsService) -> None:
    iot.create_job(jobId="j", targets=[ARN.format("a"), ARN.format("b")], document="{}")
    data.start_next_pending_job_execution(thingName="a")
    iot.cancel_job(jobId="j", reasonCode="OPERATOR", comment="stop")
    job = iot.describe_job(jobId="j")["job"]
    assert (job["status"], job["reasonCode"]) == ("CANCELED", "OPERATOR")
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 1
    assert job["jobProcessDetails"]["numberOfInProgressThings"] == 1
    with pytest.raises(iot.exceptions.InvalidStateTransitionException):
        iot.delete_job_execution(jobId="j", thingName="a", executionNumber=1)
    iot.delete_job_execution(jobId="j", thingName="a", executionNumber=1, force=True)
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.update_job_execution(thingName="a", jobId="j", status="SUCCEEDED")


def test_namespace_query_and_describe_thing(iot: Any, data: Any) -> None:
    iot.create_job(jobId="gg", targets=[ARN.format("core")], document="{}", namespaceId="ns")
    assert data.start_next_pending_job_execution(thingName="core").get("execution") is None
    assert iot.describe_job(jobId="gg")["job"]["namespaceId"] == "ns"
    listed = iot.list_job_executions_for_thing(thingName="core", namespaceId="ns")
    assert [s["jobId"] for s in listed["executionSummaries"]] == ["gg"]
    thing = iot.describe_thing(thingName="core")  # registered implicitly by CreateJob
    assert thing["thingArn"].endswith("thing/core")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="ghost")


async def test_http_control_plane_events_reach_mqtt_devices() -> None:
    """CreateJob/CancelJob arrive in HTTP worker threads; their events must still be published
    (on the loop) to a device on the in-process bus."""
    import asyncio

    from jobs_agent.emulator.embedded import EmbeddedEmulator
    from jobs_agent.transport.base import Message
    from jobs_agent.transport.local import LocalBus, LocalTransport

    bus = LocalBus()
    async with EmbeddedEmulator(bus, http_port=0, tick_seconds=None) as emu:
        assert emu.http_endpoint is not None
        iot = _client("iot", emu.http_endpoint)
        device = LocalTransport(bus, "dev1")
        received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        def on_message(message: Message) -> None:
            received.put_nowait((message.topic, json.loads(message.payload)))

        device.set_message_callback(on_message)
        await device.connect(5)
        await device.subscribe("$aws/things/dev1/jobs/notify-next")
        await asyncio.to_thread(
            iot.create_job, jobId="j", targets=[ARN.format("dev1")], document='{"a": 1}'
        )
        topic, event = await asyncio.wait_for(received.get(), 5)
        assert topic.endswith("/notify-next")
        assert event["execution"]["jobDocument"] == {"a": 1}
        await asyncio.to_thread(iot.cancel_job, jobId="j")
        topic, event = await asyncio.wait_for(received.get(), 5)
        assert "execution" not in event
        await device.disconnect()


def test_responses_are_not_held_by_nagle_on_kept_alive_connections(
    service: JobsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 keeps connections alive; with Nagle on the server socket each response's body
    waited for the client's delayed ACK (~40 ms per request, measured by the benchmarks). The
    option is read off the real server-side socket of a real request."""
    import http.client
    import socket

    from jobs_agent.emulator import http_api

    seen: list[int] = []
    original = http_api._Handler.handle

    def handle(self: Any) -> None:
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        original(self)

    monkeypatch.setattr(http_api._Handler, "handle", handle)
    api = HttpApi(service, "127.0.0.1", 0)
    api.start()
    try:
        assert api.endpoint is not None
        host, port = api.endpoint.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/jobs")
        connection.getresponse().read()
        connection.close()
    finally:
        api.stop()
    assert seen and all(seen)
