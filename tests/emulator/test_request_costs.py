"""What the emulator's own code costs per job, counted in Python calls (never timed).

Issue 18 wants the emulator at <= 1.5 ms CPU per job of a drain. Timings move with the machine's
load; the calls its own code makes per request do not. Here the embedded emulator (real
`JobsService`, `MqttFrontend`, `MqttLink` on a real `LocalBus` transport) is fed a drain the way
the perfect agent asks for it (benchmarks/perfect.py: StartNextPendingJobExecution, then
UpdateJobExecution SUCCEEDED, per job), each request handed to its transport synchronously, and
`sys.setprofile` counts every call the emulator's code makes: Python functions of
agent/emulator/ and of the standard library modules it calls into (json, copy), and the built-in
functions called from them. The bus's routing of the replies is another package's cost and is
left out.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import MISSING, fields
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from jobs_agent import jsontext
from jobs_agent.emulator import JobsService, ManualClock, SystemClock
from jobs_agent.emulator import shapes as shapes_module
from jobs_agent.emulator import store as store_module
from jobs_agent.emulator.core import snapshot
from jobs_agent.emulator.embedded import BusTransport, Emulator
from jobs_agent.emulator.errors import ServiceError
from jobs_agent.emulator.events import Delivery, JobExecutionsChanged
from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.model import (
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    HistoryEntry,
    Source,
    summaries,
)
from jobs_agent.emulator.mqtt_frontend import MqttFrontend
from jobs_agent.emulator.queues import Queue
from jobs_agent.emulator.shapes import DocumentAs
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.calls import Calls

EMULATOR_DIR = str(Path(shapes_module.__file__).parent)
OWN = (EMULATOR_DIR, str(Path(json.__file__).parent), copy.__file__, jsontext.__file__)
"""Code the emulator's cost is made of: its package, the agent's JSON encoder it shares
(`jsontext.compact`, whose function is named `text`), and the standard library it calls into."""
THING = "cost-thing"
PREFIX = f"$aws/things/{THING}/jobs"


class Drain:
    """The embedded emulator with `jobs` queued no-op jobs, and a device that asks for them."""

    def __init__(self, emulator: Emulator, jobs: int) -> None:
        self.emulator = emulator
        self.jobs = [f"cost-{index:04d}" for index in range(jobs)]
        for job_id in self.jobs:
            emulator.service.create_job(job_id, [THING], {"operation": "noop"})
        self.transport = emulator.transport

    def requests(self, job_id: str, token: str) -> list[Message]:
        """The perfect agent's two requests for one job (encoded before anything is counted)."""
        start = {"clientToken": token}
        update = {"status": "SUCCEEDED", "clientToken": token}
        return [
            Message(f"{PREFIX}/start-next", json.dumps(start).encode()),
            Message(f"{PREFIX}/{job_id}/update", json.dumps(update).encode()),
        ]

    def run(self, calls: Calls, counted: range) -> None:
        """Drain the queue, counting the jobs of `counted` (the first ones fill the caches, as
        a benchmark's warm-up does; the queue behind them keeps `notify` lists full). Each
        request is handed to the transport as the bus delivers it (on this thread, at once)."""
        for index, job_id in enumerate(self.jobs):
            messages = self.requests(job_id, f"t{index}")
            if index in counted:
                with calls.counting():
                    for message in messages:
                        self.transport._deliver(message)
            else:
                for message in messages:
                    self.transport._deliver(message)


@pytest.fixture
async def emulator() -> Any:
    bus = LocalBus()
    device = LocalTransport(bus, THING)
    emulator = Emulator(
        BusTransport(bus, "aws-iot-jobs-emulator"),
        service=JobsService(ManualClock(1_700_000_000.0)),
        tick_seconds=None,
    )
    await emulator.start()
    await device.connect()
    await device.subscribe(f"{PREFIX}/#")
    yield emulator
    await device.disconnect()
    await emulator.stop()


def execution_history(emulator: Emulator) -> list[tuple[str, ExecutionStatus]]:
    return [(h.job_id, h.to_status) for h in emulator.service.history(thing=THING)]


async def test_a_drained_job_costs_the_emulator_at_most_its_budget_of_calls(
    emulator: Emulator,
) -> None:
    """The perfect agent's two requests per job, with the notify, notify-next and the two
    replies they cause: 525 calls of the emulator's own code per job at first, 253 now (the
    per-field copies of three snapshots, a JSON encoder built per payload, three calls per
    summary of two `notify` lists of ten, `omit_none` and `seconds` in every shape, reply
    topics built from the parsed topic, a `summary()` call per execution of each `notify`
    (275 -> 261), the capped pending lists of each `notify` made in one call (261 -> 253):
    the other tests here hold each one)."""
    drain = Drain(emulator, 30)
    calls = Calls(OWN)
    counted = range(2, 18)
    drain.run(calls, counted)
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    per_job = calls.total / len(counted)
    assert per_job <= 256, (per_job, calls.by_name.most_common(25))


def test_a_snapshot_is_an_equal_copy_made_without_a_call_per_field() -> None:
    """Three snapshots per job; before, each was `copy.copy`'s dispatch and a getattr/setattr
    pair per field: 39 calls counted here (now 2, and the generated `__init__`)."""
    live = Execution(
        job_id="j1",
        thing_name="t1",
        namespace="ns",
        execution_number=3,
        queued_at=1.5,
        last_updated_at=2.5,
        status=ExecutionStatus.IN_PROGRESS,
        version_number=4,
        status_details={"step": "2"},
        started_at=2.0,
        step_deadline=60.0,
        in_progress_deadline=90.0,
        force_canceled=True,
        retry_attempt=1,
        seq=7,
    )
    live.summary()
    calls = Calls(OWN)
    with calls.counting():
        copied = snapshot(live)
    assert calls.total <= 2, calls.by_name
    assert copied is not live
    for f in fields(Execution):
        assert getattr(copied, f.name) is getattr(live, f.name), f.name
    copied.version_number = 5
    assert live.version_number == 4


@pytest.mark.parametrize(
    "value",
    [
        {"jobs": {"QUEUED": [{"jobId": "j", "queuedAt": 1, "versionNumber": 1}]}, "t": 2},
        {"text": 'quote " backslash \\ newline \n accent é emoji \U0001f600', "n": None},
        [1.5, 1e300, -0.0, float("nan"), float("inf"), True, False, None, 10**30],
        {"nested": [{"a": [{}]}, []], 1: "int key", None: "null key", 2.5: "float key"},
        "a bare string",
        3,
    ],
)
def test_compact_writes_what_json_dumps_writes_without_building_an_encoder(value: Any) -> None:
    """Five payloads per job; before, each built the C encoder afresh inside
    `JSONEncoder.encode` (nine calls, two of them json's Python code)."""
    calls = Calls(OWN)
    with calls.counting():
        text = jsontext.compact(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert calls.of("encoder.py") == 0, calls.by_name
    assert calls.total <= 3, calls.by_name


def test_summaries_of_unchanged_executions_are_taken_without_a_call_each() -> None:
    """Each `notify` lists up to 15 executions' summaries, nearly all of an unchanged version:
    those are the cached ones, taken without a `summary()` call each; a changed execution's
    is made anew."""
    executions = [Execution(f"j{n}", "t1", None, 1, 100.0 + n, 100.0 + n) for n in range(15)]
    first = summaries(executions)
    executions[3].version_number = 2
    executions[3].last_updated_at = 300.0
    calls = Calls(OWN)
    with calls.counting():
        again = summaries(executions)
    assert calls.by_name[("model.py", "summary")] == 1, calls.by_name
    assert calls.of("model.py") <= 3, calls.by_name  # with the function and its comprehension
    assert again == [e.summary() for e in executions]
    assert again[0] is first[0]
    assert again[3].last_updated_at == 300.0 and again[3].version_number == 2


def test_unchanged_summaries_of_a_notify_cost_no_call_each() -> None:
    """A `notify` carries up to 15 summaries, nearly all as in the previous one. Before, each
    cost a generator step, a method call and an `id()` lookup: a list of 15 made 45 more calls
    than an empty one. Summaries equal in value (the service makes a new one per version, and
    a restarted service new ones) share one text."""
    frontend = MqttFrontend(JobsService(), MqttLink(object()))  # type: ignore[arg-type]

    def summaries(count: int) -> list[ExecutionSummary]:
        return [ExecutionSummary(f"j{n}", 100.0 + n, None, 100.0 + n, 1, 1) for n in range(count)]

    def event(queued: list[ExecutionSummary]) -> JobExecutionsChanged:
        return JobExecutionsChanged("t1", None, [], queued, 200.0)

    frontend._notify_payload(event(summaries(15)))  # the texts are made once
    cost: dict[int, int] = {}
    for count in (1, 15):
        calls = Calls(OWN)
        queued = summaries(count)
        with calls.counting():
            payload = frontend._notify_payload(event(queued))
        cost[count] = calls.total
        expected = {
            "jobs": {"QUEUED": [shapes_module.summary(s) for s in queued]},
            "timestamp": 200,
        }
        assert json.loads(payload) == expected
    assert cost[15] == cost[1], cost


def reference_shape(fields_in_order: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """What the shapes were first written as: every field in the API's order, None left out."""
    return [(name, value) for name, value in fields_in_order if value is not None]


@pytest.mark.parametrize("started", [None, 1_700_000_100.9])
@pytest.mark.parametrize("details", [{}, {"step": "2"}])
@pytest.mark.parametrize("document", list(DocumentAs))
@pytest.mark.parametrize("left", [None, 0, 540])
def test_the_data_plane_shapes_are_built_without_a_call_per_field(
    started: float | None, details: dict[str, str], document: DocumentAs, left: int | None
) -> None:
    """JobExecution, JobExecutionSummary and JobExecutionState keep their fields, order and
    whole seconds; each is one call (before, `omit_none` with its comprehension and a
    `seconds` call per time: six or seven calls each, three shapes per job)."""
    live = Execution("j1", "t1", None, 2, 1_700_000_000.7, 1_700_000_200.2, started_at=started)
    live.status_details = details
    live.status = ExecutionStatus.IN_PROGRESS if started else ExecutionStatus.QUEUED
    delivery = Delivery(live, {"operation": "x"}, '{"operation":"x"}', left)
    calls = Calls(OWN)
    item = live.summary()
    with calls.counting():
        execution = shapes_module.execution(delivery, document)
        summary = shapes_module.summary(item)
        state = shapes_module.state(live)
    assert calls.total == 3, calls.by_name
    body = {DocumentAs.OBJECT: delivery.document, DocumentAs.STRING: delivery.document_text}
    times = [
        ("queuedAt", 1_700_000_000),
        ("startedAt", None if started is None else 1_700_000_100),
        ("lastUpdatedAt", 1_700_000_200),
        ("versionNumber", 1),
        ("executionNumber", 2),
    ]
    assert list(execution.items()) == reference_shape(
        [
            ("jobId", "j1"),
            ("thingName", "t1"),
            ("status", live.status.value),
            ("statusDetails", details or None),
            *times,
            ("jobDocument", body.get(document)),
            ("approximateSecondsBeforeTimedOut", left),
        ]
    )
    assert list(summary.items()) == reference_shape([("jobId", "j1"), *times])
    assert list(state.items()) == reference_shape(
        [("status", live.status.value), ("statusDetails", details or None), ("versionNumber", 1)]
    )


def test_the_system_clock_is_read_without_a_python_call() -> None:
    """A running emulator reads its clock nine times per drained job; `SystemClock.now` was a
    method around `time.time`, a Python call each."""
    clock = SystemClock()
    calls = Calls(OWN)
    with calls.counting():
        clock.now()
    assert calls.of("clock.py") == 0, calls.by_name
    assert clock.now is time.time  # the wall clock itself


async def test_statuses_and_operations_are_named_without_enum_property_calls(
    emulator: Emulator,
) -> None:
    """`ExecutionStatus.value` and `Operation.value` are properties: each read was two Python
    calls in enum.py (`__get__`, `value`), four per job (the status of the execution shapes,
    the operation counted by `admit`). Their `_value_` is read instead."""
    drain = Drain(emulator, 12)
    calls = Calls((enum.__file__,))
    drain.run(calls, range(2, 12))
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert calls.of("enum.py", "__get__") == 0, calls.by_name
    assert calls.of("enum.py", "value") == 0, calls.by_name


@pytest.mark.parametrize("scheduled", [0, 1])
def test_a_capped_pending_list_is_made_in_one_call(scheduled: int) -> None:
    """Each `notify` takes the thing's capped pending lists (two per job): the cap was a
    property read twice, the IN_PROGRESS order a method and a lambda per execution. Now one
    call; the lists keep their order (IN_PROGRESS by creation, then QUEUED) and their cap (10,
    15 with scheduled jobs)."""
    queue = Queue(scheduled=scheduled)
    executions = [Execution(f"j{n}", "t1", None, 1, 100.0, 100.0, seq=n) for n in range(20)]
    for execution in executions:
        queue.add_queued(execution, False)
    for n in (7, 2, 5):
        queue.start(executions[n])
    calls = Calls(OWN)
    with calls.counting():
        in_progress, queued = queue.pending()
    assert calls.of("queues.py") == 1, calls.by_name
    limit = 15 if scheduled else 10
    assert [e.seq for e in in_progress] == [2, 5, 7]
    assert [e.seq for e in queued] == [n for n in range(20) if n not in (2, 5, 7)][: limit - 3]
    assert queue.head() is executions[2]


async def test_a_batch_of_events_goes_to_the_loop_without_a_closure(emulator: Emulator) -> None:
    """The service hands each batch of events to the front end's listener, which runs it on
    the link's loop: it was wrapped in a lambda there, a call more per batch (two per job)."""
    drain = Drain(emulator, 8)
    calls = Calls(OWN)
    drain.run(calls, range(2, 8))
    assert calls.of("mqtt_frontend.py", "_publish_events") == 12, calls.by_name
    assert calls.of("mqtt_frontend.py", "<lambda>") == 0, calls.by_name


async def test_a_job_costs_the_same_with_10_or_5000_queued_behind_it(
    emulator: Emulator,
) -> None:
    """Issue 18's depth benchmark holds a thing's queue at its depth: per job, the two requests,
    the `notify` and `notify-next` they cause and a CreateJob that puts one job back. None of it
    may cost the emulator in proportion to the queue. Two counts, neither timed: every call of
    its own code, by name, is the same at 10 and 5,000 queued (a sort or a scan in Python); and
    the memory a job needs at its peak above what it started with (`tracemalloc`; a list or a
    dict of the queue copied in C is one call, but 8 bytes per pending job), the median of the
    jobs as a dict or list of the account that grows now and then reallocates on one of them.
    (Measured when written, round 10: 416 calls per job at 10 and at 10,000 queued.)"""
    counted = {}
    peaks = {}
    tracemalloc.start()
    try:
        for depth in (10, 5000):
            counted[depth], peaks[depth] = held_at(emulator, depth)
    finally:
        tracemalloc.stop()
    assert counted[5000] == counted[10], set(counted[5000].items()) ^ set(counted[10].items())
    assert peaks[5000] <= peaks[10] + 1024, peaks


def held_at(emulator: Emulator, depth: int) -> tuple[Counter[tuple[str, str]], float]:
    """A thing with `depth` queued, drained 30 jobs with one created per job; the calls of the
    last 20 by name, and their median peak of memory (bytes) above where each job began."""
    thing = f"depth-{depth}"
    prefix = f"$aws/things/{thing}/jobs"
    for index in range(depth):
        emulator.service.create_job(f"{thing}-{index:05d}", [thing], {"operation": "noop"})
    calls = Calls(OWN)
    peaks = []
    for index in range(30):
        start = json.dumps({"clientToken": f"t{index}"}).encode()
        update = json.dumps({"status": "SUCCEEDED", "clientToken": f"t{index}"}).encode()
        messages = [
            Message(f"{prefix}/start-next", start),
            Message(f"{prefix}/{thing}-{index:05d}/update", update),
        ]
        tracemalloc.reset_peak()
        began = tracemalloc.get_traced_memory()[0]
        with calls.counting() if index >= 10 else contextlib.nullcontext():
            for message in messages:
                emulator.transport._deliver(message)
            emulator.service.create_job(
                f"{thing}-{depth + index:05d}", [thing], {"operation": "noop"}
            )
        if index >= 10:
            peaks.append(tracemalloc.get_traced_memory()[1] - began)
    done = emulator.service.history(job_id=f"{thing}-00029", thing=thing)
    assert done[-1].to_status is ExecutionStatus.SUCCEEDED
    return calls.by_name, statistics.median(peaks)


def costly_record(frame: FrameType) -> str | None:
    """The class of the emulator's whose generated `__init__` starts in `frame`, when that
    `__init__` sets the fields through `object.__setattr__` (a frozen dataclass) or is about
    to call a `default_factory` (the argument left out is dataclasses' sentinel); else None."""
    if frame.f_code.co_name != "__init__":
        return None
    made = type(frame.f_locals.get("self"))
    params = getattr(made, "__dataclass_params__", None)
    if params is None or not made.__module__.startswith("jobs_agent.emulator."):
        return None
    factories = [f.name for f in fields(made) if f.default_factory is not MISSING]
    left_out = any(
        type(frame.f_locals.get(name)).__name__ == "_HAS_DEFAULT_FACTORY_CLASS"
        for name in factories
    )
    return made.__qualname__ if params.frozen or left_out else None


async def test_a_drained_job_builds_its_records_without_a_call_per_field(
    emulator: Emulator,
) -> None:
    """Per drained job the service builds two `Txn`s, two `HistoryEntry`s, two `Delivery`s,
    two `JobExecutionsChanged`, a `NextJobExecutionChanged` and an `UpdateResult`. As frozen
    dataclasses, all but the `Txn`s set each field through `object.__setattr__`, and a `Txn`
    called eleven `default_factory`s: neither kind of call shows in the call counts above (a
    slot wrapper and a type are not built-in functions to `sys.setprofile`), and together
    they were about 48 k of the 821 k instructions the emulator spends per job of a local
    drain (callgrind). Named tuples and a `Txn` made with literals cost none of them."""
    drain = Drain(emulator, 12)
    built: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and (name := costly_record(frame)) is not None:
            built[name] += 1

    for index, job_id in enumerate(drain.jobs):
        messages = drain.requests(job_id, f"t{index}")
        sys.setprofile(profile if index >= 2 else None)
        try:
            for message in messages:
                drain.transport._deliver(message)
        finally:
            sys.setprofile(None)
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert built == Counter(), built


def test_records_keep_their_values_and_stay_immutable() -> None:
    """What the named tuples replaced promised: fields by name, equality by value, no field
    assignment; a history entry still persists through its dict."""
    execution = Execution("j1", "t1", None, 1, 100.0, 100.0)
    delivery = Delivery(execution, {"operation": "noop"}, '{"operation":"noop"}', None)
    assert delivery.document_text == '{"operation":"noop"}'
    assert delivery == Delivery(execution, {"operation": "noop"}, '{"operation":"noop"}', None)
    with pytest.raises(AttributeError):
        delivery.document = {}  # type: ignore[misc]
    changed = JobExecutionsChanged("t1", None, [], [execution.summary()], 5.0)
    with pytest.raises(AttributeError):
        changed.timestamp = 6.0  # type: ignore[misc]
    entry = HistoryEntry(
        5.0, "j1", "t1", 1, None, ExecutionStatus.QUEUED, {"a": "b"}, Source.CONTROL, 1
    )
    assert store_module._history_from_json(store_module._history_to_json(entry)) == entry


async def test_a_drained_job_reads_no_member_off_its_enum_class(emulator: Emulator) -> None:
    """A member read off its enum class (`ExecutionStatus.QUEUED`) goes through the hook of
    `EnumType.__getattr__`: a few hundred instructions more than a module global, and no call
    `sys.setprofile` sees. The emulator's per-request paths read about 30 per job (statuses,
    operations, how a document travels); they read the members as globals now. Counted here by
    a counting `EnumType.__getattribute__` for the time of the drain."""
    drain = Drain(emulator, 12)
    reads: Counter[str] = Counter()
    counting = False

    def read(cls: type, name: str) -> Any:
        caller = sys._getframe(1).f_code
        if counting and caller.co_filename.startswith(EMULATOR_DIR) and name[:1] != "_":
            reads[f"{Path(caller.co_filename).name}:{caller.co_name}: {cls.__name__}.{name}"] += 1
        return type.__getattribute__(cls, name)

    enum.EnumType.__getattribute__ = read  # type: ignore[method-assign,assignment]
    try:
        for index, job_id in enumerate(drain.jobs):
            messages = drain.requests(job_id, f"t{index}")
            counting = index >= 2
            for message in messages:
                drain.transport._deliver(message)
            counting = False
    finally:
        del enum.EnumType.__getattribute__  # type: ignore[misc]
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert reads == Counter(), reads


@pytest.mark.parametrize(
    "summary",
    [
        ExecutionSummary("job-1", 1_700_000_000.0, None, 1_700_000_000.0, 1, 1),
        ExecutionSummary("job-1", 1_700_000_000.9, 1_700_000_001.5, 1_700_000_002.99, 2, 3),
        ExecutionSummary("a_b-C", 0.0, 0.0, 0.0, 10**12, 2**40),
        ExecutionSummary('quote " back \\ é \U0001f600 \n', 5.5, None, 7.25, 3, 1),
    ],
)
def test_a_summary_s_text_is_what_the_encoder_writes(summary: ExecutionSummary) -> None:
    assert shapes_module.summary_text(summary) == jsontext.compact(shapes_module.summary(summary))


async def test_a_drained_job_encodes_its_changed_summaries_without_the_encoder(
    emulator: Emulator,
) -> None:
    """Every payload of a job went through the JSON encoder: the two replies, `notify-next`,
    and each summary a `notify` had not sent before (one per job here, about two per job of
    a local drain), about 20 k instructions each (callgrind). Those summaries are filled into
    a template now (40 -> 30 encodes over these ten jobs), and so is the notify-next that
    says the queue is empty (30 -> 29, test_execution_shapes); the payloads are unchanged."""
    drain = Drain(emulator, 12)
    calls = Calls(OWN)
    drain.run(calls, range(2, 12))
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert calls.of("jsontext.py", "text") == 3 * 10 - 1, calls.by_name
    assert calls.of("shapes.py", "summary_text") == 10, calls.by_name


async def test_a_drained_job_makes_no_call_into_enum(emulator: Emulator) -> None:
    """The update's status was looked up as `ExecutionStatus(status)`: two Python calls in
    enum.py per job (its metaclass's `__call__` and `__new__`), now a dict lookup."""
    drain = Drain(emulator, 12)
    calls = Calls((enum.__file__,))
    drain.run(calls, range(2, 12))
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert calls.by_name == Counter(), calls.by_name


@pytest.mark.parametrize("status", ["NOT_A_STATUS", "succeeded", "", ["SUCCEEDED"], 1, None])
def test_an_update_to_what_is_not_a_status_is_refused(status: Any) -> None:
    service = JobsService(ManualClock(1_700_000_000.0))
    service.create_job("j1", [THING], {"operation": "noop"})
    with pytest.raises(ServiceError) as refused:
        service.update(THING, "j1", status)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert refused.value.message == f"status {status!r} is not a job execution status"
    done = service.update(THING, "j1", ExecutionStatus.SUCCEEDED)  # a member is its value
    assert done.execution.status is ExecutionStatus.SUCCEEDED
