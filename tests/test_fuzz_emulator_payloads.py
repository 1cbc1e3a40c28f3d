"""Fuzzing the emulator as a broken device would: random payloads on every request topic kind.

The emulator must answer each request exactly once, on the request topic plus `/accepted` or
`/rejected`, with the code AWS IoT Jobs gives for that class of input: `InvalidJson` for a
payload that is not a JSON object, `InvalidRequest` for a field of the wrong type or range or
bad statusDetails, `InvalidTopic` for a topic that is no Jobs API topic, `ResourceNotFound`,
`VersionMismatch`, `InvalidStateTransition` and `TerminalStateReached` from the execution's
known state; never `InternalError`, never silence, and a well-formed request afterwards is
still served. The expected code is computed by an oracle written here from the API rules, not
by the emulator's own parser.

"No reply" is checked without sleeping: a well-formed sentinel request is published after the
fuzzed one, and the bus and the front end keep publish order, so every reply to the fuzzed
request arrives before the sentinel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.service import JobsService
from jobs_agent.jobs.models import DEVICE_SETTABLE_STATUSES, TERMINAL_STATUSES, JobExecutionStatus
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.hypothesis_profiles import examples

THING = "fuzz-device"
OTHER_THING = "other-device"
P = "$aws/things/"
NAMESPACE = "fleet"
ABSENT: Any = object()
STATUSES = [s.value for s in JobExecutionStatus]


# -- the emulator under test, with a device-side transport -----------------------------------
@dataclass
class Session:
    service: JobsService
    device: LocalTransport
    replies: asyncio.Queue[Message]
    loop_errors: list[dict[str, Any]]

    async def exchange(self, topic: str, payload: bytes) -> list[Message]:
        """Publish, then a sentinel; the replies that arrive before the sentinel's."""
        token = f"sentinel-{uuid.uuid4().hex[:16]}"
        await self.device.publish(topic, payload)
        await self.device.publish(
            f"{P}{THING}/jobs/get", json.dumps({"clientToken": token}).encode()
        )
        before: list[Message] = []
        async with asyncio.timeout(5):
            while True:
                message = await self.replies.get()
                body = _json(message.payload)
                if (
                    message.topic == f"{P}{THING}/jobs/get/accepted"
                    and isinstance(body, dict)
                    and body.get("clientToken") == token
                ):
                    return before
                before.append(message)


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


@contextlib.asynccontextmanager
async def open_session() -> AsyncIterator[Session]:
    bus = LocalBus()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    emulator = EmbeddedEmulator(bus, tick_seconds=None)
    await emulator.start()
    service = emulator.service
    # Known states: job-done SUCCEEDED, job-ip IN_PROGRESS, job-q QUEUED, job-ns QUEUED in NS.
    service.create_job("job-done", [THING], {"operation": "x"})
    service.start_next(THING)
    service.update(THING, "job-done", "SUCCEEDED")
    service.create_job("job-ip", [THING], {"operation": "x"})
    service.start_next(THING)
    service.create_job("job-q", [THING], {"operation": "x"})
    service.create_job("job-ns", [THING], {"operation": "x"}, namespace=NAMESPACE)
    device = LocalTransport(bus, "fuzzing-device")
    replies: asyncio.Queue[Message] = asyncio.Queue()

    def on_message(message: Message) -> None:
        if message.topic.rsplit("/", 1)[-1] in ("accepted", "rejected"):
            replies.put_nowait(message)

    device.set_message_callback(on_message)
    await device.connect()
    await device.subscribe(f"{P}+/jobs/#")
    try:
        yield Session(service, device, replies, errors)
    finally:
        await device.disconnect()
        await emulator.stop()
        loop.set_exception_handler(previous)


# -- strategies: fields that are valid or not, by the API's rules -----------------------------
def field(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    return st.one_of(
        st.just((ABSENT, True)),
        st.just((None, True)),  # JSON null is "not given"
        valid.map(lambda v: (v, True)),
        invalid.map(lambda v: (v, False)),
    )


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
detail_keys = st.from_regex(r"[a-zA-Z0-9:_-]{1,20}", fullmatch=True)
detail_values = st.text(st.characters(exclude_categories=("C",)), min_size=1, max_size=30)
valid_details = st.one_of(
    st.dictionaries(detail_keys, detail_values, max_size=10),
    st.just({"k" * 128: "v" * 1024}),
)
invalid_details = st.one_of(
    st.sampled_from(["text", 1, [1], True]),
    st.sampled_from(
        [
            {"bad key": "v"},
            {"": "v"},
            {"k" * 129: "v"},
            {"k": 1},
            {"k": None},
            {"k": ""},
            {"k": "line\nbreak"},
            {"k": "bell\x07"},
            {"k": "x" * 1025},
            {"k": "\U0001f600" * 513},
            {f"k{i}": "v" for i in range(11)},
        ]
    ),
)
TOKEN = field(
    st.text(min_size=1, max_size=64),
    st.one_of(st.just(""), st.text(min_size=65, max_size=70), st.integers(), st.just([1])),
)
DETAILS = field(valid_details, invalid_details)
NUMBER = field(
    st.one_of(st.integers(-3, 5), st.just(2**70)),
    st.sampled_from(["1", 1.5, 2.0, True, [1], {"n": 1}]),
)
FLAG = field(st.booleans(), st.sampled_from(["true", 1, 0, [True]]))
START_TIMEOUT = field(st.integers(1, 10080), st.sampled_from([0, -1, 10081, 1.5, "5", True]))
UPDATE_TIMEOUT = field(
    st.one_of(st.integers(1, 10080), st.just(-1)), st.sampled_from([0, -2, 10081, 2.0, "5", False])
)
STATUS = st.one_of(
    st.sampled_from(STATUSES).map(lambda s: (s, True)),
    st.sampled_from([ABSENT, None, "DONE", "succeeded", 1, ["SUCCEEDED"]]).map(
        lambda s: (s, False)
    ),
)
FIELDS: dict[str, dict[str, Any]] = {
    "get": {"clientToken": TOKEN},
    "start-next": {
        "clientToken": TOKEN,
        "statusDetails": DETAILS,
        "stepTimeoutInMinutes": START_TIMEOUT,
    },
    "describe": {"clientToken": TOKEN, "executionNumber": NUMBER, "includeJobDocument": FLAG},
    "update": {
        "clientToken": TOKEN,
        "status": STATUS,
        "statusDetails": DETAILS,
        "expectedVersion": NUMBER,
        "executionNumber": NUMBER,
        "includeJobExecutionState": FLAG,
        "includeJobDocument": FLAG,
        "stepTimeoutInMinutes": UPDATE_TIMEOUT,
    },
}
JOBS = ["job-q", "job-ip", "job-done", "job-ns", "nope", "$next"]


@st.composite
def request_topics(draw: st.DrawFn) -> tuple[str, str, str | None, str | None, str]:
    """(topic, kind, job_id, namespace, thing); kind "invalid" for no Jobs API topic."""
    thing = draw(st.sampled_from([THING, THING, THING, OTHER_THING]))
    base = f"{P}{thing}/jobs/"
    kind = draw(st.sampled_from(["get", "start-next", "describe", "update", "invalid"]))
    if kind in ("get", "start-next"):
        return base + kind, kind, None, None, thing
    if kind == "invalid":
        bad = draw(
            st.sampled_from(
                [
                    f"{P}bad.thing/jobs/get",
                    f"{P}{'t' * 129}/jobs/start-next",
                    base + "start-next/extra",
                    base + "namespace-fleet/start-next",
                    base + "job-q/delete",
                    base + "job-q/update/now",
                    base + "$next/update",
                    base + "bad.job/get",
                    base + f"{'j' * 65}/get",
                    base + "job-q/namespace-/get",
                    base + "job-q/namespace-bad.ns/update",
                    base + "a/b/c/d/e",
                    base + "",
                ]
            )
        )
        return bad, kind, None, None, thing
    job = draw(st.sampled_from(JOBS))
    if kind == "update" and job == "$next":
        job = "job-q"
    namespace = draw(st.sampled_from([None, None, NAMESPACE, "other-ns"]))
    middle = "" if namespace is None else f"namespace-{namespace}/"
    verb = "get" if kind == "describe" else "update"
    return f"{base}{job}/{middle}{verb}", kind, job, namespace, thing


RAW_PAYLOADS = {
    "empty": b"",
    "whitespace": b"  \n",
    "invalid-utf8": b"\xff\xfe\x00",
    "invalid-utf8-in-string": b'{"clientToken": "\xc3\x28"}',
    "not-json": b"not json",
    "array": b"[1, 2]",
    "string": b'"string"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "truncated": b"{",
    "deep-array": b"[" * 100_000,
    "deep-object": b'{"a":' * 50_000,
    "trailing-comma": b"{" + b'"k": 1,' * 10 + b"}",
}
"""Payloads that are not a JSON object (by name, so a failing example prints short)."""


@st.composite
def payloads(draw: st.DrawFn, kind: str) -> tuple[bytes, dict[str, Any] | None, bool]:
    """(payload, the object it encodes or None, whether every known field is valid)."""
    shape = draw(st.sampled_from(["object"] * 6 + ["raw"]))
    if shape == "raw":
        raw = RAW_PAYLOADS[draw(st.sampled_from(sorted(RAW_PAYLOADS)))]
        if not raw.strip():
            return raw, {}, kind != "update"  # an empty payload is {}; an update needs status
        return raw, None, False
    obj: dict[str, Any] = {}
    valid = True
    for name, strategy in FIELDS.get(kind, FIELDS["get"]).items():
        value, ok = draw(strategy)
        valid = valid and ok
        if value is not ABSENT:
            obj[name] = value
    for key, value in draw(st.dictionaries(st.text(max_size=10), any_json, max_size=3)).items():
        if not any(key in spec for spec in FIELDS.values()):
            obj[key] = value  # unknown fields are ignored
    if draw(st.booleans()) and "statusDetails" not in obj:
        obj["padding"] = "x" * draw(st.sampled_from([10, 100_000, 1_000_000]))
    return json.dumps(obj).encode(), obj, valid


# -- the oracle ------------------------------------------------------------------------------
def expected_code(
    service: JobsService,
    kind: str,
    job: str | None,
    namespace: str | None,
    thing: str,
    obj: dict[str, Any] | None,
    fields_valid: bool,
) -> str | None:
    """ "accepted", an error code, or None for "no reply"."""
    if kind == "invalid":
        return "InvalidTopic"
    if obj is None:
        return "InvalidJson"
    if not fields_valid:
        return "InvalidRequest"
    if kind in ("get", "start-next") or job == "$next":
        return "accepted"
    assert job is not None
    namespaces = {"job-ns": NAMESPACE}
    if thing != THING or job == "nope" or namespaces.get(job) != namespace:
        return "ResourceNotFound"
    execution = service.execution(job, THING)
    number = obj.get("executionNumber")
    if number is not None and number != execution.execution_number:
        return "ResourceNotFound"
    terminal = execution.status in TERMINAL_STATUSES
    if kind == "describe":
        return "TerminalStateReached" if terminal else "accepted"
    version = obj.get("expectedVersion")
    if version is not None and version != execution.version_number:
        return "VersionMismatch"
    if terminal or JobExecutionStatus(obj["status"]) not in DEVICE_SETTABLE_STATUSES:
        return "InvalidStateTransition"
    return "accepted"


@st.composite
def requests(draw: st.DrawFn) -> tuple[tuple[str, str, str | None, str | None, str], Any]:
    topic = draw(request_topics())
    return topic, draw(payloads(topic[1]))


@settings(max_examples=examples(0.6))
@given(requests())
async def test_every_request_gets_the_right_answer(request: Any) -> None:
    (topic, kind, job, namespace, thing), (payload, obj, fields_valid) = request
    async with open_session() as session:
        want = expected_code(session.service, kind, job, namespace, thing, obj, fields_valid)
        event(f"{kind}: {want}")
        replies = await session.exchange(topic, payload)
        assert len(replies) == 1, (topic, payload[:200], replies)
        reply = replies[0]
        body = json.loads(reply.payload)
        if want == "accepted":
            assert reply.topic == topic + "/accepted", (reply.topic, body)
        else:
            assert reply.topic == topic + "/rejected", (reply.topic, body)
            assert body["code"] == want, (topic, payload[:300], body)
            assert isinstance(body["message"], str) and body["message"]
        assert isinstance(body["timestamp"], int)
        token = obj.get("clientToken") if obj else None
        if isinstance(token, str):
            assert body.get("clientToken") == token
        if want == "accepted" and kind == "describe" and job != "$next":
            assert body["execution"]["jobId"] == job
        # Still serving: a well-formed describe of the queued job is answered.
        again = await session.exchange(
            f"{P}{THING}/jobs/job-q/get", json.dumps({"clientToken": "again"}).encode()
        )
        assert [m.topic for m in again] == [f"{P}{THING}/jobs/job-q/get/accepted"] or (
            # ... unless the fuzzed request legitimately ended job-q.
            session.service.execution("job-q", THING).status in TERMINAL_STATUSES
        )
        assert not session.loop_errors, session.loop_errors


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xfe", "InvalidJson"),
        (b"[" * 100_000, "InvalidJson"),
        (b"[]", "InvalidJson"),
        (b'{"status": "SUCCEEDED", "statusDetails": {"k": "a\\u0000b"}}', "InvalidRequest"),
        (b'{"status": "SUCCEEDED", "expectedVersion": "1"}', "InvalidRequest"),
        (b'{"status": "SUCCEEDED", "expectedVersion": 99}', "VersionMismatch"),
        (b'{"status": "QUEUED"}', "InvalidStateTransition"),
    ],
)
async def test_known_classes_on_an_update(payload: bytes, code: str) -> None:
    async with open_session() as session:
        topic = f"{P}{THING}/jobs/job-q/update"
        replies = await session.exchange(topic, payload)
        assert [(m.topic, json.loads(m.payload)["code"]) for m in replies] == [
            (topic + "/rejected", code)
        ]
        assert str(session.service.execution("job-q", THING).status) == "QUEUED"
        assert not session.loop_errors
