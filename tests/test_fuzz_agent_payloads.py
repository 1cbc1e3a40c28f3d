"""Fuzzing what the agent accepts from the service, as if the service were broken or hostile.

A second client on the same `LocalBus` plays the hostile service next to the real emulator:
it publishes straight onto the agent's reply and event topics (`notify`, `notify-next`, their
namespaced forms, `start-next/accepted|rejected`, `+/get/...`, `+/update/...`): wrong types,
missing fields, huge values, invalid UTF-8, wrong thing names, unknown fields, a `jobDocument`
that is a string, a number or a list, negative and huge execution numbers, and replies that
carry the clientToken of a real pending request.

Properties: nothing raises in a transport callback (a loop exception handler records any), a
request answered with a malformed reply fails with `ProtocolError` (never anything else, never a
hang), unsolicited payloads never start a job (a forged `notify-next` carrying a document is
only a wake-up), and end to end the agent keeps running, a real job completes exactly once with
exactly one terminal status in the emulator's history, and nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from jobs_agent.jobs.client import JobExecutionsChanged, JobsClient, JobsEvent
from jobs_agent.jobs.errors import ProtocolError
from jobs_agent.jobs.topics import Operation, ReplyKind, parse_topic
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.agent_harness import (
    THING,
    make_config,
    make_handler_dir,
    running_agent,
    runs,
    write_script,
)
from tests.hypothesis_profiles import examples

P = f"$aws/things/{THING}/jobs/"
NAMESPACE = "fleet"
MARKER_NAME = "forged-ran"
FORGED_MARKER = "/tmp/jobs-agent-fuzz-forged-marker"
"""Where unsolicited forged documents would leave a file if anything ever ran them."""

EVENT_TOPICS = [
    P + "notify",
    P + "notify-next",
    P + f"notify-namespace-{NAMESPACE}",
    P + f"notify-next-namespace-{NAMESPACE}",
]
REPLY_TOPICS = [
    P + "get/accepted",
    P + "get/rejected",
    P + "start-next/accepted",
    P + "start-next/rejected",
    P + "job-1/get/accepted",
    P + "job-1/get/rejected",
    P + "$next/get/accepted",
    P + "job-1/update/accepted",
    P + "job-1/update/rejected",
    P + f"job-1/namespace-{NAMESPACE}/get/accepted",
    P + f"job-1/namespace-{NAMESPACE}/update/rejected",
]
FOREIGN_TOPICS = [
    "$aws/things/someone-else/jobs/notify-next",
    "$aws/things/someone-else/jobs/start-next/accepted",
    f"$aws/things/{THING}/shadow/update",
    f"$aws/things/{THING}/jobs/notify-next/extra",
]

any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**64, -1, 0, -(2**70)])
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["\ud800", "\x00", "x" * 10_000]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


def forged_execution(marker: str, **overrides: Any) -> dict[str, Any]:
    """A plausible execution of a job the service does not have; running it leaves a marker."""
    execution: dict[str, Any] = {
        "jobId": "forged-job",
        "thingName": THING,
        "status": "QUEUED",
        "versionNumber": 1,
        "executionNumber": 1,
        "queuedAt": 1,
        "jobDocument": {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "forged",
                        "type": "runCommand",
                        "input": {"command": f"touch,{marker}"},
                    }
                }
            ],
        },
    }
    execution.update(overrides)
    return {key: value for key, value in execution.items() if value is not None}


def malformed_executions(marker: str) -> list[Any]:
    """Executions that must be refused as a protocol error (each would otherwise run)."""
    return [
        "string",
        42,
        [forged_execution(marker)],
        forged_execution(marker, jobId=None),
        forged_execution(marker, jobId=7),
        forged_execution(marker, jobId="../../etc"),
        forged_execution(marker, jobId="\ud800"),
        forged_execution(marker, jobId="j" * 65),
        forged_execution(marker, status=None),
        forged_execution(marker, status="WHATEVER"),
        forged_execution(marker, jobDocument="not json"),
        forged_execution(marker, jobDocument=42),
        forged_execution(marker, jobDocument=[1, 2]),
        forged_execution(marker, jobDocument='["a list in a string"]'),
        forged_execution(marker, executionNumber=-1),
        forged_execution(marker, executionNumber=0),
        forged_execution(marker, executionNumber=2**64),
        forged_execution(marker, executionNumber="1"),
        forged_execution(marker, executionNumber=1.5),
        forged_execution(marker, versionNumber="v"),
        forged_execution(marker, versionNumber=-5),
        forged_execution(marker, statusDetails={"a": 1}),
        forged_execution(marker, statusDetails="x"),
    ]


MALFORMED_UPDATE_ACCEPTED = [
    {"executionState": "x"},
    {"executionState": {"status": 1}},
    {"executionState": {"status": "SUCCEEDED", "versionNumber": "v"}},
    {"executionState": {"status": "SUCCEEDED", "statusDetails": [1]}},
    {"jobDocument": "not json"},
    {"jobDocument": 5},
]
MALFORMED_REJECTED = [
    {"code": 5},
    {"message": "no code"},
    {"code": None},
    {"code": "InvalidRequest", "executionState": "x"},
    {"code": "InvalidStateTransition", "executionState": {"status": "NOPE"}},
    {"code": "ResourceNotFound", "message": 7},
]


def malformed_reply(operation: Operation, kind: ReplyKind, marker: str) -> st.SearchStrategy[Any]:
    if kind is ReplyKind.REJECTED:
        return st.sampled_from(MALFORMED_REJECTED)
    if operation is Operation.UPDATE:
        return st.sampled_from(MALFORMED_UPDATE_ACCEPTED)
    if operation is Operation.GET_PENDING:
        return st.sampled_from(
            [{"queuedJobs": "x"}, {"inProgressJobs": [{"jobId": 1}]}, {"queuedJobs": [5]}]
        )
    return st.sampled_from(malformed_executions(marker)).map(lambda e: {"execution": e})


# -- client-level harness --------------------------------------------------------------------
@dataclass
class ClientSession:
    bus: LocalBus
    hostile: LocalTransport
    client: JobsClient
    loop_errors: list[dict[str, Any]]
    events: asyncio.Queue[JobsEvent] = field(default_factory=asyncio.Queue)


@contextlib.asynccontextmanager
async def client_session() -> AsyncIterator[ClientSession]:
    bus = LocalBus()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    hostile = LocalTransport(bus, "hostile-service")
    await hostile.connect()
    device = LocalTransport(bus, THING)
    await device.connect()
    client = JobsClient(device, THING, namespaces=[NAMESPACE], request_timeout=3.0)
    await client.start()
    session = ClientSession(bus, hostile, client, errors)

    async def pump() -> None:
        async for item in client.events():
            session.events.put_nowait(item)

    pumping = asyncio.create_task(pump())
    try:
        yield session
    finally:
        await client.close()
        await pumping
        await device.disconnect()
        await hostile.disconnect()
        loop.set_exception_handler(previous)


SENTINEL = json.dumps({"jobs": {}, "timestamp": 424242}).encode()


async def events_before_sentinel(session: ClientSession) -> list[JobsEvent]:
    """Publish a well-formed notify; return the events that came before it (bus order)."""
    await session.hostile.publish(P + "notify", SENTINEL)
    before: list[JobsEvent] = []
    async with asyncio.timeout(5):
        while True:
            event = await session.events.get()
            if isinstance(event, JobExecutionsChanged) and event.event.timestamp == 424242:
                return before
            before.append(event)


@st.composite
def unsolicited(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(EVENT_TOPICS + REPLY_TOPICS + FOREIGN_TOPICS))
    shape = draw(st.sampled_from(["json", "json", "object", "raw", "forged"]))
    if shape == "raw":
        payload = draw(
            st.sampled_from(
                [b"", b"\xff\xfe", b"not json", b"[" * 100_000, b"null", b'"s"', b"1e999"]
            )
        )
    elif shape == "forged":
        execution = draw(st.sampled_from(malformed_executions(FORGED_MARKER)))
        payload = json.dumps({"execution": execution, "timestamp": 1}).encode()
    elif shape == "object":
        body = draw(
            st.dictionaries(
                st.sampled_from(
                    ["jobs", "execution", "timestamp", "clientToken", "code", "QUEUED"]
                ),
                any_json,
                max_size=4,
            )
        )
        payload = json.dumps(body).encode()
    else:
        payload = json.dumps(draw(any_json)).encode()
    return topic, payload


@settings(max_examples=examples(0.3))
@given(st.lists(unsolicited(), min_size=1, max_size=5))
async def test_unsolicited_payloads_never_crash_the_client(
    messages: list[tuple[str, bytes]],
) -> None:
    async with client_session() as session:
        stats = session.client.stats
        for topic, payload in messages:
            await session.hostile.publish(topic, payload)
        events = await events_before_sentinel(session)
        assert not session.loop_errors, session.loop_errors
        delivered = [t for t, _ in messages if t in EVENT_TOPICS + REPLY_TOPICS]
        # Every delivered payload was turned into an event, dropped as malformed, or ignored
        # as a reply nobody waits for; nothing vanished into an exception.
        assert stats.events - 1 + stats.events_dropped + stats.replies_ignored == len(delivered)
        # A burst may coalesce (an unread event replaced by a newer one of its kind).
        assert len(events) == stats.events - 1 - stats.events_coalesced
        # A pending request is still served normally afterwards.
        request = asyncio.create_task(session.client.get_pending())
        await answer_next_request(session, {"queuedJobs": [], "inProgressJobs": []})
        assert (await request).queued == ()


async def answer_next_request(
    session: ClientSession,
    body: dict[str, Any],
    *,
    kind: ReplyKind = ReplyKind.ACCEPTED,
    then_real: dict[str, Any] | None = None,
) -> None:
    """Play the service for the next request: answer `body` (with the request's token)."""
    request: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        parsed = parse_topic(message.topic)
        if parsed is not None and parsed.kind is ReplyKind.REQUEST and not request.done():
            request.set_result(message)

    session.hostile.set_message_callback(on_message)
    await session.hostile.subscribe(P + "#")
    async with asyncio.timeout(5):
        message = await request
    token = json.loads(message.payload)["clientToken"]
    suffix = "/accepted" if kind is ReplyKind.ACCEPTED else "/rejected"
    await session.hostile.publish(
        message.topic + suffix, json.dumps({**body, "clientToken": token}).encode()
    )
    if then_real is not None:
        await session.hostile.publish(
            message.topic + "/accepted", json.dumps({**then_real, "clientToken": token}).encode()
        )


OPERATIONS = {
    Operation.START_NEXT: lambda c: c.start_next(step_timeout=10),
    Operation.DESCRIBE: lambda c: c.describe("job-1"),
    Operation.UPDATE: lambda c: c.update("job-1", "IN_PROGRESS", status_details={"p": "1"}),
    Operation.GET_PENDING: lambda c: c.get_pending(),
}


@st.composite
def hostile_replies(draw: st.DrawFn) -> tuple[Operation, ReplyKind, dict[str, Any]]:
    operation = draw(st.sampled_from(sorted(OPERATIONS, key=lambda o: o.value)))
    kind = draw(st.sampled_from([ReplyKind.ACCEPTED, ReplyKind.REJECTED]))
    body = draw(malformed_reply(operation, kind, FORGED_MARKER))
    extra = draw(st.dictionaries(st.sampled_from(["unknownField", "timestamp", "x"]), any_json))
    return operation, kind, {**extra, **body}


@settings(max_examples=examples(0.3))
@given(hostile_replies())
async def test_malformed_reply_to_a_pending_request_is_a_protocol_error(
    reply: tuple[Operation, ReplyKind, dict[str, Any]],
) -> None:
    operation, kind, body = reply
    async with client_session() as session:
        request = asyncio.create_task(OPERATIONS[operation](session.client))
        await answer_next_request(session, body, kind=kind, then_real={})
        try:
            result = await request
        except ProtocolError:
            pass
        else:
            raise AssertionError(f"accepted a malformed reply: {body!r} -> {result!r}")
        assert not session.loop_errors, session.loop_errors
        assert session.client.stats.replies_ignored == 1  # the real answer, arriving too late


# -- end to end: the agent, the real emulator and a hostile service on one bus ---------------
@dataclass
class HostileService:
    """Answers the first request of each chosen kind with a malformed reply (before the real
    emulator, because it subscribed first), then lets the real service's answers through."""

    transport: LocalTransport
    corrupt: dict[tuple[Operation, str | None], Any]
    corrupted: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_message(self, message: Message) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or parsed.kind is not ReplyKind.REQUEST:
            return
        try:
            request = json.loads(message.payload)
        except ValueError:
            return
        status = request.get("status") if parsed.operation is Operation.UPDATE else None
        key = (parsed.operation, status)
        body = self.corrupt.pop(key, None)
        if body is None:
            return
        reply_kind, payload = body
        token = request.get("clientToken")
        self.corrupted.append(f"{parsed.operation.value}:{status}")
        loop = asyncio.get_running_loop()
        self._start(
            self.transport.publish(
                f"{message.topic}/{reply_kind}",
                json.dumps({**payload, "clientToken": token}).encode(),
            )
        )
        # Like AWS after any change, a notification soon after: it only shortens the agent's
        # retry back-off; correctness does not depend on it.
        loop.call_later(
            0.02,
            lambda: self._start(
                self.transport.publish(P + "notify", json.dumps({"jobs": {}}).encode())
            ),
        )

    def _start(self, publish: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(publish)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


REQUEST_KINDS = [
    (Operation.START_NEXT, None),
    (Operation.UPDATE, "IN_PROGRESS"),
    (Operation.UPDATE, "SUCCEEDED"),
]


@st.composite
def hostility_plans(draw: st.DrawFn, marker: str) -> dict[str, Any]:
    corrupt: dict[tuple[Operation, str | None], Any] = {}
    for operation, status in draw(st.sets(st.sampled_from(REQUEST_KINDS), max_size=3)):
        kind = draw(st.sampled_from([ReplyKind.ACCEPTED, ReplyKind.REJECTED]))
        body = draw(malformed_reply(operation, kind, marker))
        corrupt[(operation, status)] = (
            "accepted" if kind is ReplyKind.ACCEPTED else "rejected",
            body,
        )
    junk = draw(st.lists(unsolicited(), max_size=6))
    forged_next = draw(st.booleans())
    return {"corrupt": corrupt, "junk": junk, "forged_next": forged_next}


@settings(max_examples=examples(0.04))
@given(st.data())
async def test_agent_survives_a_hostile_service(tmp_path: Path, data: st.DataObject) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    marker = base / MARKER_NAME
    plan = data.draw(hostility_plans(str(marker)))
    make_handler_dir(base)
    write_script(
        base / "handlers",
        "progress.sh",
        f'printf \'%s#%s\\n\' "$JOBS_AGENT_JOB_ID" "$JOBS_AGENT_EXECUTION_NUMBER"'
        f" >> {base / 'runs.log'}\necho '{{\"percent\": 50}}' >&3\necho done\n",
    )
    service_box: list[HostileService] = []

    async def attach(bus: LocalBus) -> None:
        transport = LocalTransport(bus, "hostile-service")
        await transport.connect()
        box = HostileService(transport, dict(plan["corrupt"]))
        transport.set_message_callback(box.on_message)
        await transport.subscribe(P + "#")
        service_box.append(box)

    config = make_config(base, namespaces=(NAMESPACE,))
    async with running_agent(base, config, before_emulator=attach) as harness:
        hostile = service_box[0].transport
        for topic, payload in plan["junk"]:
            await hostile.publish(topic, payload)
        if plan["forged_next"]:
            forged = {"execution": forged_execution(str(marker)), "timestamp": 1}
            await hostile.publish(P + "notify-next", json.dumps(forged).encode())
        first = await harness.run_job("job-1", {"operation": "progress.sh"}, timeout=20)
        assert str(first.status) == "SUCCEEDED", (first, service_box[0].corrupted)
        second = await harness.run_job("job-2", {"operation": "ok.sh"}, timeout=20)
        assert str(second.status) == "SUCCEEDED", second
        assert harness.terminal_reports("job-1") == {1: 1}
        for corrupted in service_box[0].corrupted:
            event(f"corrupted {corrupted}")
        assert harness.terminal_reports("job-2") == {1: 1}
        assert runs(base) == {"job-1#1": 1, "job-2#1": 1}
        assert not marker.exists(), "a forged execution was run"
        assert not Path(FORGED_MARKER).exists(), "a forged execution was run"
        harness.assert_alive()
