"""The device's JobsClient against a scripted service on the in-process bus (and mosquitto).

The service side here is a second transport on the same bus that answers as each test says, so
every byte the client publishes and every reply it parses crosses a real (in-process) broker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs_agent.jobs import topics
from jobs_agent.jobs.client import (
    JobExecutionsChanged,
    JobsClient,
    JobsEvent,
    NextJobExecutionChanged,
    Resync,
)
from jobs_agent.jobs.errors import ErrorCode, JobsError, JobsRejected, ProtocolError, RequestTimeout
from jobs_agent.jobs.events import NOTIFY_LIST_LIMIT, UnreadBody
from jobs_agent.jobs.models import JobExecutionStatus
from jobs_agent.jobs.topics import Operation, ParsedTopic, ReplyKind
from jobs_agent.transport.base import Message, Transport
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.calls import timers_armed

THING = "thing-1"
WAIT = 2.0

EXECUTION = {
    "jobId": "job-1",
    "thingName": THING,
    "status": "IN_PROGRESS",
    "queuedAt": 1700000000,
    "startedAt": 1700000005,
    "lastUpdatedAt": 1700000005,
    "versionNumber": 2,
    "executionNumber": 1,
    "jobDocument": {"steps": []},
}


class Service:
    """A scripted AWS IoT Jobs: records requests, replies only when the test says so."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.requests: asyncio.Queue[tuple[ParsedTopic, dict[str, Any]]] = asyncio.Queue()

    async def start(self) -> None:
        self.transport.set_message_callback(self._on_message)
        await self.transport.connect(timeout=WAIT)
        await self.transport.subscribe("$aws/things/+/jobs/#")

    def _on_message(self, message: Message) -> None:
        parsed = topics.parse_topic(message.topic)
        if parsed is not None and parsed.kind is ReplyKind.REQUEST:
            self.requests.put_nowait((parsed, json.loads(message.payload)))

    async def next_request(self) -> tuple[ParsedTopic, dict[str, Any]]:
        return await asyncio.wait_for(self.requests.get(), WAIT)

    async def reply(
        self,
        request: ParsedTopic,
        kind: ReplyKind,
        body: dict[str, Any],
        *,
        thing_name: str | None = None,
        operation: Operation | None = None,
    ) -> None:
        topic = topics.reply_topic(
            thing_name or request.thing_name,
            operation or request.operation,
            kind,
            job_id=request.job_id if (operation or request.operation) in _JOB_OPS else None,
            namespace=request.namespace,
        )
        await self.transport.publish(topic, json.dumps(body).encode())

    async def event(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.transport.publish(topic, data)


_JOB_OPS = (Operation.DESCRIBE, Operation.UPDATE)


@pytest.fixture
def bus() -> LocalBus:
    return LocalBus()


@pytest.fixture
async def device(bus: LocalBus) -> AsyncIterator[LocalTransport]:
    transport = LocalTransport(bus, "device")
    await transport.connect(timeout=WAIT)
    yield transport
    await transport.disconnect()


@pytest.fixture
async def service(bus: LocalBus) -> AsyncIterator[Service]:
    svc = Service(LocalTransport(bus, "service"))
    await svc.start()
    yield svc
    await svc.transport.disconnect()


@pytest.fixture
async def client(device: LocalTransport, service: Service) -> AsyncIterator[JobsClient]:
    jobs = JobsClient(
        device, THING, namespaces=("ns_1",), request_timeout=WAIT, retry_min=0.01, retry_max=0.02
    )
    await jobs.start()
    yield jobs
    await jobs.close()


async def _next_event(events: AsyncIterator[JobsEvent]) -> JobsEvent:
    return await asyncio.wait_for(anext(events), WAIT)


# -- each operation: request shape and reply parsing --------------------------------------------
async def test_start_next_request_shape_and_reply(client: JobsClient, service: Service) -> None:
    task = asyncio.create_task(
        client.start_next(status_details={"reason": "line1\nline2", "n": 3}, step_timeout=15)
    )
    request, body = await service.next_request()
    assert request == ParsedTopic(THING, Operation.START_NEXT, ReplyKind.REQUEST)
    token = body.pop("clientToken")
    assert isinstance(token, str) and 1 <= len(token) <= 64
    assert body == {
        "statusDetails": {"reason": "line1\\nline2", "n": "3"},
        "stepTimeoutInMinutes": 15,
    }
    await service.reply(request, ReplyKind.ACCEPTED, {"execution": EXECUTION, "clientToken": token})
    execution = await asyncio.wait_for(task, WAIT)
    assert execution is not None
    assert execution.job_id == "job-1"
    assert execution.status is JobExecutionStatus.IN_PROGRESS
    assert execution.job_document == {"steps": []}


async def test_start_next_with_nothing_pending_returns_none(
    client: JobsClient, service: Service
) -> None:
    task = asyncio.create_task(client.start_next())
    request, body = await service.next_request()
    assert set(body) == {"clientToken"}
    await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
    assert await asyncio.wait_for(task, WAIT) is None


async def test_describe_request_shape_default_and_namespaced(
    client: JobsClient, service: Service
) -> None:
    task = asyncio.create_task(client.describe("job-1", execution_number=4))
    request, body = await service.next_request()
    assert request == ParsedTopic(THING, Operation.DESCRIBE, ReplyKind.REQUEST, job_id="job-1")
    assert body == {
        "executionNumber": 4,
        "includeJobDocument": True,
        "clientToken": body["clientToken"],
    }
    await service.reply(
        request, ReplyKind.ACCEPTED, {"execution": EXECUTION, "clientToken": body["clientToken"]}
    )
    execution = await asyncio.wait_for(task, WAIT)
    assert execution is not None and execution.version_number == 2

    task = asyncio.create_task(
        client.describe("$next", namespace="ns_1", include_job_document=False)
    )
    request, body = await service.next_request()
    assert request == ParsedTopic(THING, Operation.DESCRIBE, ReplyKind.REQUEST, "ns_1", "$next")
    assert body["includeJobDocument"] is False
    await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
    assert await asyncio.wait_for(task, WAIT) is None


async def test_get_pending_parses_both_lists(client: JobsClient, service: Service) -> None:
    task = asyncio.create_task(client.get_pending())
    request, body = await service.next_request()
    assert request == ParsedTopic(THING, Operation.GET_PENDING, ReplyKind.REQUEST)
    await service.reply(
        request,
        ReplyKind.ACCEPTED,
        {
            "inProgressJobs": [{"jobId": "a", "executionNumber": 1, "versionNumber": 3}],
            "queuedJobs": [{"jobId": "b", "queuedAt": 1700000000000}, {"jobId": "c"}],
            "clientToken": body["clientToken"],
            "timestamp": 1700000001,
        },
    )
    pending = await asyncio.wait_for(task, WAIT)
    assert [s.job_id for s in pending.in_progress] == ["a"]
    assert [s.job_id for s in pending.queued] == ["b", "c"]
    assert pending.queued[0].queued_at == 1700000000.0  # milliseconds normalised


async def test_update_request_shape_and_reply(client: JobsClient, service: Service) -> None:
    task = asyncio.create_task(
        client.update(
            "job-1",
            "SUCCEEDED",
            status_details={"stdout": "x" * 2000 + "END", "bad key": "v"},
            expected_version=2,
            step_timeout=-1,
            execution_number=1,
            include_job_execution_state=True,
            include_job_document=True,
            namespace="ns_1",
        )
    )
    request, body = await service.next_request()
    assert request == ParsedTopic(THING, Operation.UPDATE, ReplyKind.REQUEST, "ns_1", "job-1")
    details = body.pop("statusDetails")
    assert details["stdout"].endswith("END") and len(details["stdout"]) == 1024
    assert details["bad_key"] == "v"
    assert body == {
        "status": "SUCCEEDED",
        "expectedVersion": 2,
        "executionNumber": 1,
        "includeJobExecutionState": True,
        "includeJobDocument": True,
        "stepTimeoutInMinutes": -1,
        "clientToken": body["clientToken"],
    }
    await service.reply(
        request,
        ReplyKind.ACCEPTED,
        {
            "executionState": {"status": "SUCCEEDED", "versionNumber": 3},
            "jobDocument": {"a": 1},
            "clientToken": body["clientToken"],
        },
    )
    reply = await asyncio.wait_for(task, WAIT)
    assert reply.execution_state is not None
    assert reply.execution_state.status is JobExecutionStatus.SUCCEEDED
    assert reply.execution_state.version_number == 3
    assert reply.job_document == {"a": 1}


async def test_update_minimal_payload(client: JobsClient, service: Service) -> None:
    task = asyncio.create_task(client.update("job-1", JobExecutionStatus.IN_PROGRESS))
    request, body = await service.next_request()
    assert body == {"status": "IN_PROGRESS", "clientToken": body["clientToken"]}
    await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
    reply = await asyncio.wait_for(task, WAIT)
    assert reply.execution_state is None


async def test_each_request_has_its_own_token(client: JobsClient, service: Service) -> None:
    tasks = [asyncio.create_task(client.describe(f"job-{i}")) for i in range(3)]
    seen = [await service.next_request() for _ in tasks]
    tokens = {body["clientToken"] for _, body in seen}
    assert len(tokens) == 3
    # answered in reverse order: each reply still finds its own request
    for request, body in reversed(seen):
        execution = {**EXECUTION, "jobId": request.job_id}
        await service.reply(
            request,
            ReplyKind.ACCEPTED,
            {"execution": execution, "clientToken": body["clientToken"]},
        )
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [r.job_id for r in results if r is not None] == ["job-0", "job-1", "job-2"]


# -- replies that are not ours --------------------------------------------------------------------
async def test_foreign_token_and_other_things_replies_are_ignored(
    client: JobsClient, service: Service, device: LocalTransport
) -> None:
    # Make the device see another thing's topics too, as over a wildcard bridge.
    await device.subscribe("$aws/things/other-thing/jobs/#")
    task = asyncio.create_task(client.describe("job-1"))
    request, body = await service.next_request()
    token = body["clientToken"]
    wrong = {**EXECUTION, "jobId": "WRONG"}
    await service.reply(request, ReplyKind.ACCEPTED, {"execution": wrong, "clientToken": "x-1"})
    await service.reply(
        request,
        ReplyKind.ACCEPTED,
        {"execution": wrong, "clientToken": token},
        thing_name="other-thing",
    )
    # our token on another operation's reply topic is not an answer either
    await service.reply(
        request,
        ReplyKind.REJECTED,
        {"code": "InternalError", "clientToken": token},
        operation=Operation.UPDATE,
    )
    await service.reply(request, ReplyKind.ACCEPTED, {"execution": EXECUTION, "clientToken": token})
    execution = await asyncio.wait_for(task, WAIT)
    assert execution is not None and execution.job_id == "job-1"
    assert client.stats.replies_ignored >= 3


# -- rejections and retries ----------------------------------------------------------------------
async def test_rejected_raises_with_code_and_execution_state(
    client: JobsClient, service: Service
) -> None:
    task = asyncio.create_task(client.update("job-1", "IN_PROGRESS", expected_version=1))
    request, body = await service.next_request()
    await service.reply(
        request,
        ReplyKind.REJECTED,
        {
            "code": "VersionMismatch",
            "message": "expected 1, is 4",
            "clientToken": body["clientToken"],
            "timestamp": 1700000000,
            "executionState": {"status": "IN_PROGRESS", "versionNumber": 4},
        },
    )
    with pytest.raises(JobsRejected) as info:
        await asyncio.wait_for(task, WAIT)
    assert info.value.code is ErrorCode.VERSION_MISMATCH
    assert info.value.version_mismatch and not info.value.retryable
    assert info.value.message == "expected 1, is 4"
    assert info.value.execution_state is not None
    assert info.value.execution_state.version_number == 4
    assert client.stats.rejections == 1
    assert client.stats.retries == 0  # never retried


async def test_throttled_twice_then_accepted(client: JobsClient, service: Service) -> None:
    task = asyncio.create_task(client.get_pending())
    tokens = []
    for code in ("RequestThrottled", "InternalError"):
        request, body = await service.next_request()
        tokens.append(body["clientToken"])
        await service.reply(request, ReplyKind.REJECTED, {"code": code, "message": "later", **body})
    request, body = await service.next_request()
    tokens.append(body["clientToken"])
    await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
    pending = await asyncio.wait_for(task, WAIT)
    assert pending.in_progress == () and pending.queued == ()
    assert client.stats.retries == 2
    assert client.stats.publishes == 3
    assert len(set(tokens)) == 3


async def test_throttled_until_deadline_raises_the_rejection(
    device: LocalTransport, service: Service
) -> None:
    """A fixed 1 s backoff in a 1.5 s budget: the first refusal is retried (1 s left), the
    second one's backoff would cross the deadline, so the refusal is raised. Each reply has
    0.5 s of slack: a short budget with short backoffs would start an attempt so close to the
    deadline that a loaded machine answers it after the deadline (a RequestTimeout instead)."""
    jobs = JobsClient(device, THING, request_timeout=1.5, retry_min=1.0, retry_max=1.0)
    await jobs.start()
    try:
        task = asyncio.create_task(jobs.get_pending())
        while not task.done():
            get = asyncio.ensure_future(service.next_request())
            done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                request, body = get.result()
                await service.reply(
                    request, ReplyKind.REJECTED, {"code": "RequestThrottled", **body}
                )
            else:
                get.cancel()
        with pytest.raises(JobsRejected) as info:
            task.result()
        assert info.value.code is ErrorCode.REQUEST_THROTTLED
        assert jobs.stats.retries >= 1
    finally:
        await jobs.close()


async def test_unanswered_request_times_out(device: LocalTransport, service: Service) -> None:
    jobs = JobsClient(device, THING, request_timeout=0.3)
    await jobs.start()
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as info:
            # Ended by its own deadline (RequestTimeout), long before this bound's TimeoutError:
            # an upper bound on the time taken (1.5 s) is a race with the machine's load.
            await asyncio.wait_for(jobs.describe("job-1"), 60)
        assert time.monotonic() - started >= 0.25  # not before its deadline
        assert info.value.operation == "DescribeJobExecution"
        assert jobs.stats.timeouts == 1
        await service.next_request()  # it was sent, just never answered
    finally:
        await jobs.close()


async def test_request_while_link_down_times_out(bus: LocalBus, device: LocalTransport) -> None:
    jobs = JobsClient(device, THING, request_timeout=0.3)
    await jobs.start()
    try:
        bus.set_online(False)
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(jobs.update("job-1", "FAILED"), WAIT)
        assert jobs.stats.publishes == 0
    finally:
        await jobs.close()


async def test_malformed_accepted_reply_fails_the_request_fast(
    client: JobsClient, service: Service
) -> None:
    task = asyncio.create_task(client.describe("job-1"))
    request, body = await service.next_request()
    bad = {"execution": {"jobId": "job-1", "status": "NOT_A_STATUS"}, **body}
    await service.reply(request, ReplyKind.ACCEPTED, bad)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(task, WAIT)


async def test_requests_need_a_started_client(device: LocalTransport) -> None:
    jobs = JobsClient(device, THING)
    with pytest.raises(JobsError):
        await jobs.get_pending()
    with pytest.raises(ValueError):
        JobsClient(device, "bad thing")
    with pytest.raises(ValueError):
        JobsClient(device, THING, namespaces=("bad/ns",))


# -- events ---------------------------------------------------------------------------------------
async def test_notify_events_default_and_namespaced(client: JobsClient, service: Service) -> None:
    events = client.events()
    summary = {"jobId": "job-1", "queuedAt": 1700000000, "executionNumber": 1}
    await service.event(topics.notify_topic(THING), {"jobs": {"QUEUED": [summary]}, "timestamp": 1})
    await service.event(topics.notify_next_topic(THING), {"execution": EXECUTION, "timestamp": 2})
    await service.event(topics.notify_topic(THING, "ns_1"), {"jobs": {}, "timestamp": 3})
    await service.event(topics.notify_next_topic(THING, "ns_1"), {"timestamp": 4})

    first = await _next_event(events)
    assert isinstance(first, JobExecutionsChanged) and first.namespace is None
    assert first.event.jobs[JobExecutionStatus.QUEUED][0].job_id == "job-1"
    second = await _next_event(events)
    assert isinstance(second, NextJobExecutionChanged) and second.namespace is None
    assert second.event.execution is not None and second.event.execution.job_id == "job-1"
    third = await _next_event(events)
    assert isinstance(third, JobExecutionsChanged) and third.namespace == "ns_1"
    assert third.event.jobs == {}
    fourth = await _next_event(events)
    assert isinstance(fourth, NextJobExecutionChanged) and fourth.namespace == "ns_1"
    assert fourth.event.execution is None and fourth.event.timestamp == 4.0


async def test_a_burst_of_events_is_coalesced_never_dropped(
    client: JobsClient, service: Service
) -> None:
    """Thousands of jobs created at once send thousands of `notify` events before the engine
    reads one. Each kind of event is a wake-up and the newest `notify` lists the executions as
    they are now, so the unread ones coalesce: one per kind and namespace, the newest, and
    nothing is dropped or warned about (a bounded queue dropped events past 1,000)."""
    events = client.events()
    burst = 1_500
    for number in range(burst):
        summary = {"jobId": f"job-{number}", "queuedAt": 1700000000, "executionNumber": 1}
        await service.event(
            topics.notify_topic(THING), {"jobs": {"QUEUED": [summary]}, "timestamp": number}
        )
        await service.event(topics.notify_next_topic(THING), {"timestamp": number})
    await service.event(topics.notify_topic(THING, "ns_1"), {"jobs": {}, "timestamp": 7})
    first = await _next_event(events)
    second = await _next_event(events)
    third = await _next_event(events)
    assert isinstance(first, JobExecutionsChanged) and first.namespace is None
    assert first.event.timestamp == burst - 1  # the newest one
    assert first.lists(f"job-{burst - 1}", 1) and not first.lists("job-0", 1)
    assert isinstance(second, NextJobExecutionChanged) and second.event.timestamp == burst - 1
    assert isinstance(third, JobExecutionsChanged) and third.namespace == "ns_1"
    assert client.stats.events_dropped == 0
    assert client.stats.events == 2 * burst + 1
    assert client.stats.events_coalesced == 2 * (burst - 1)
    # Later events arrive as before.
    await service.event(topics.notify_next_topic(THING), {"timestamp": 99999})
    later = await _next_event(events)
    assert isinstance(later, NextJobExecutionChanged) and later.event.timestamp == 99999


async def test_malformed_events_are_dropped_and_later_ones_arrive(
    client: JobsClient, service: Service
) -> None:
    events = client.events()
    notify = topics.notify_topic(THING)
    notify_next = topics.notify_next_topic(THING)
    await service.event(notify, b"{not json")
    await service.event(notify, b"\xff\xfe\x00")  # invalid UTF-8
    await service.event(notify, b"[1, 2]")  # JSON, but not an object
    await service.event(notify, {"jobs": {"QUEUED": "job-1"}})  # wrong type
    await service.event(notify_next, {"execution": {"jobId": 5, "status": "QUEUED"}})
    await service.event(notify_next, {"execution": {**EXECUTION, "jobDocument": "{broken"}})
    await service.event(notify, {"jobs": {"IN_PROGRESS": [{"jobId": "ok"}]}})
    event = await _next_event(events)
    assert isinstance(event, JobExecutionsChanged)
    assert event.event.jobs[JobExecutionStatus.IN_PROGRESS][0].job_id == "ok"
    assert client.stats.events_dropped == 6


async def test_events_end_after_close(device: LocalTransport, service: Service) -> None:
    jobs = JobsClient(device, THING)
    await jobs.start()
    events = jobs.events()
    await service.event(topics.notify_next_topic(THING), {"timestamp": 1})
    assert isinstance(await _next_event(events), NextJobExecutionChanged)
    await jobs.close()
    assert await asyncio.wait_for(anext(events, None), WAIT) is None
    assert await asyncio.wait_for(anext(jobs.events(), None), WAIT) is None


# -- outages --------------------------------------------------------------------------------------
async def test_resync_after_outage_and_request_made_during_it_completes(
    client: JobsClient, service: Service, bus: LocalBus
) -> None:
    events = client.events()
    bus.set_online(False)
    task = asyncio.create_task(client.describe("job-1"))
    bus.set_online(True)
    resync = await _next_event(events)
    assert resync == Resync(session_present=True)
    request, body = await service.next_request()
    await service.reply(
        request, ReplyKind.ACCEPTED, {"execution": EXECUTION, "clientToken": body["clientToken"]}
    )
    execution = await asyncio.wait_for(task, WAIT)
    assert execution is not None and execution.job_id == "job-1"


async def test_reply_lost_with_the_session_is_recovered_by_republishing(
    client: JobsClient, service: Service, bus: LocalBus
) -> None:
    events = client.events()
    task = asyncio.create_task(client.update("job-1", "SUCCEEDED"))
    request, body = await service.next_request()
    token = body["clientToken"]
    bus.set_online(False, client_id="device")
    # The service answers while the device is away; without a kept session it is lost.
    await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": token})
    bus.set_online(True, client_id="device", keep_sessions=False)
    assert await _next_event(events) == Resync(session_present=False)
    request2, body2 = await service.next_request()
    assert request2 == request
    assert body2 == body  # the same request, same clientToken
    await service.reply(
        request2,
        ReplyKind.ACCEPTED,
        {"clientToken": token, "executionState": {"status": "SUCCEEDED", "versionNumber": 3}},
    )
    reply = await asyncio.wait_for(task, WAIT)
    assert reply.execution_state is not None and reply.execution_state.version_number == 3
    assert client.stats.republishes == 1


async def test_reply_kept_in_session_completes_without_waiting_for_a_second_answer(
    client: JobsClient, service: Service, bus: LocalBus
) -> None:
    task = asyncio.create_task(client.describe("job-1"))
    request, body = await service.next_request()
    bus.set_online(False, client_id="device")
    await service.reply(
        request, ReplyKind.ACCEPTED, {"execution": EXECUTION, "clientToken": body["clientToken"]}
    )
    bus.set_online(True, client_id="device", keep_sessions=True)
    execution = await asyncio.wait_for(task, WAIT)
    assert execution is not None and execution.job_id == "job-1"


# -- over a real broker ---------------------------------------------------------------------------
async def test_client_over_mosquitto(mosquitto: Any) -> None:
    from jobs_agent.config import ConnectionConfig
    from jobs_agent.transport.paho import PahoTransport

    config = ConnectionConfig(
        transport="paho", endpoint=mosquitto.host, port=mosquitto.port, tls=False
    )
    device = PahoTransport(config, f"device-{time.monotonic_ns()}")
    service = Service(PahoTransport(config, f"service-{time.monotonic_ns()}"))
    await device.connect(timeout=10)
    await service.start()
    jobs = JobsClient(device, THING, namespaces=("ns_1",), request_timeout=5)
    try:
        await jobs.start()
        events = jobs.events()
        task = asyncio.create_task(client_flow(jobs))
        request, body = await service.next_request()
        assert request.operation is Operation.START_NEXT
        await service.reply(
            request,
            ReplyKind.ACCEPTED,
            {"execution": EXECUTION, "clientToken": body["clientToken"]},
        )
        request, body = await service.next_request()
        assert request == ParsedTopic(THING, Operation.UPDATE, ReplyKind.REQUEST, None, "job-1")
        assert body["status"] == "SUCCEEDED"
        await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
        assert await asyncio.wait_for(task, 10) == "job-1"
        await service.event(topics.notify_next_topic(THING, "ns_1"), {"timestamp": 1})
        event = await _next_event(events)
        assert isinstance(event, NextJobExecutionChanged) and event.namespace == "ns_1"
    finally:
        await jobs.close()
        await device.disconnect()
        await service.transport.disconnect()


async def client_flow(jobs: JobsClient) -> str:
    execution = await jobs.start_next()
    assert execution is not None
    await jobs.update(execution.job_id, "SUCCEEDED", status_details={"reason": "done"})
    return execution.job_id


async def test_a_request_arms_one_timer_for_its_publish_and_its_wait(
    client: JobsClient, service: Service
) -> None:
    """The request's deadline covers its publish and the wait for the reply with one timer
    (issue 18: one each, armed and cancelled per request; a drain left thousands of cancelled
    timers in the loop's heap). Counted on the loop's `call_at`."""
    with timers_armed() as armed:
        task = asyncio.create_task(client.start_next())
        request, body = await service.requests.get()  # no timer of the test's own
        await service.reply(request, ReplyKind.ACCEPTED, {"clientToken": body["clientToken"]})
        assert await task is None
    assert len(armed) == 1, armed


def _summaries(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"jobId": f"{prefix}{i}", "executionNumber": 1} for i in range(count)]


@pytest.mark.parametrize(
    ("in_progress", "queued", "proven"),
    [
        pytest.param(0, 0, {"gone", "gone-queued"}, id="empty-list"),
        pytest.param(3, 2, {"gone", "gone-queued"}, id="short-list"),
        pytest.param(9, 0, {"gone", "gone-queued"}, id="nine-in-progress"),
        pytest.param(10, 0, set(), id="ten-in-progress-may-be-cut"),
        pytest.param(4, 11, {"gone"}, id="long-list-in-progress-first"),
        pytest.param(10, 5, set(), id="ten-in-progress-and-queued-per-status-cut"),
    ],
)
def test_a_notify_proves_an_execution_is_no_longer_pending_only_from_an_uncut_list(
    in_progress: int, queued: int, proven: set[str]
) -> None:
    """A `notify` lists at most 10 (or 15) pending executions, IN_PROGRESS first: absence
    proves something only where the list cannot have been cut. "gone" was in progress on the
    service, "gone-queued" may still be QUEUED there; "listed" is in the list."""
    jobs: dict[str, Any] = {}
    if in_progress:
        jobs["IN_PROGRESS"] = [{"jobId": "listed", "executionNumber": 2}]
        jobs["IN_PROGRESS"] += _summaries("running-", in_progress - 1)
    if queued:
        jobs["QUEUED"] = _summaries("queued-", queued)
    event = JobExecutionsChanged("fleet-a", {"jobs": jobs, "timestamp": 1})
    candidates = [("gone", 1, True), ("gone-queued", 1, False)]
    if in_progress:
        candidates.append(("listed", 2, True))
    assert {job_id for job_id, _, _ in event.no_longer_lists(candidates)} == proven
    # A malformed or absent list proves nothing.
    assert JobExecutionsChanged(None, {"timestamp": 1}).no_longer_lists(candidates) == []
    assert JobExecutionsChanged(None, {"jobs": {"QUEUED": 3}}).no_longer_lists(candidates) == []


def test_a_payload_is_decoded_with_one_python_call_of_the_json_module() -> None:
    """Every reply and event the client reads is decoded by `decode_object`: straight to the
    decoder's `raw_decode`, without `json.loads` and `JSONDecoder.decode` around it (issue 18:
    five payloads per plugin job, 4 Python calls each before, 2 now), and it still takes
    exactly what `json.loads` takes: an object alone, blanks around it allowed."""
    import os

    from jobs_agent.jobs import events
    from jobs_agent.jobs.events import decode_object
    from tests.helpers.calls import Calls

    calls = Calls((os.path.dirname(json.__file__), events.__file__))
    body = {"execution": {"jobId": "j", "versionNumber": 2}, "timestamp": 1}
    payload = json.dumps(body).encode()
    with calls.counting():
        for _ in range(10):
            assert decode_object(payload) == body
    python = sum(n for (file, _), n in calls.by_name.items() if file != "builtin")
    assert python == 2 * 10, calls.by_name.most_common()
    for raw in (b' {"a": 1} \n', b"{}", b"\t{}\r\n"):
        assert decode_object(raw) == json.loads(raw)
    for bad in (
        b"",
        b" ",
        b"{} {}",
        b'{"a": 1} x',
        b"[1]",
        b"1",
        b"null",
        b"\xff",
        b"{",
        "\ufeff{}".encode(),
        b"[" * 100_000,
        b'"{}"',
        b"NaN",
    ):
        assert decode_object(bad) is None, bad


async def test_a_notify_as_long_as_the_limit_is_read_only_when_asked(
    client: JobsClient, service: Service
) -> None:
    """A `notify` naming `NOTIFY_LIST_LIMIT` executions or more may be cut: it is a wake-up
    whatever it lists (`cut`), and its body is decoded only when read. Read, it is what the
    service sent; a long payload that is no `notify` at all reads as listing nothing (a wake-up
    too, never a run), and its model cannot be built."""
    events = client.events()
    notify = topics.notify_topic(THING)
    summaries = [
        {"jobId": f"job-{n}", "queuedAt": 1700000000, "executionNumber": 1}
        for n in range(NOTIFY_LIST_LIMIT)
    ]
    await service.event(notify, {"jobs": {"QUEUED": summaries}, "timestamp": 1})
    long = await _next_event(events)
    assert isinstance(long, JobExecutionsChanged) and long.cut
    assert isinstance(long.body, UnreadBody)
    assert long.lists("job-3", 1) and not long.lists("job-99", 1)
    assert len(long.event.jobs[JobExecutionStatus.QUEUED]) == NOTIFY_LIST_LIMIT
    await service.event(notify, b'["jobId"' + b', "jobId"' * (NOTIFY_LIST_LIMIT - 1) + b"")
    broken = await _next_event(events)
    assert isinstance(broken, JobExecutionsChanged) and broken.cut
    assert not broken.lists("jobId")
    assert broken.no_longer_lists([("job-1", 1, True)]) == []
    with pytest.raises(ProtocolError):
        broken.event  # noqa: B018
    await service.event(notify, {"jobs": {"QUEUED": summaries[:1]}, "timestamp": 2})
    short = await _next_event(events)
    assert isinstance(short, JobExecutionsChanged) and not short.cut
    assert type(short.body) is dict
    assert client.stats.events == 3 and client.stats.events_dropped == 0
