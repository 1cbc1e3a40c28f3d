"""The execution's text (`shapes.execution_text`) and the replies and events built around it are
what the JSON encoder writes for the documented shape (`shapes.execution`), byte for byte.

A start-next reply and a notify-next carry an execution each per job; filling it into templates
instead of building a dict and encoding it saved about 30 k instructions each (issue 18). These
tests hold the templates to the encoder over generated executions (derandomized: every run tries
the same examples), and count that a drained job no longer builds the dict.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent.emulator import mqtt_frontend, shapes
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.events import Delivery
from jobs_agent.emulator.model import Execution, ExecutionStatus
from jobs_agent.emulator.shapes import DocumentAs
from jobs_agent.jsontext import compact
from tests.emulator.test_request_costs import OWN, Drain, emulator, execution_history
from tests.helpers.calls import Calls

__all__ = ["emulator"]  # the fixture, shared with the cost tests

_TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 2**40)
_NAMES = st.text(max_size=20)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
_DOCUMENTS = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=12,
    ),
    max_size=5,
)


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    execution = Execution(
        draw(_NAMES),
        draw(_NAMES),
        draw(st.none() | _NAMES),
        draw(st.integers(1, 2**40)),
        draw(_TIMES),
        draw(_TIMES),
        status=draw(st.sampled_from(list(ExecutionStatus))),
        version_number=draw(st.integers(1, 2**40)),
        status_details=draw(st.dictionaries(_NAMES, _NAMES, max_size=4)),
        started_at=draw(st.none() | _TIMES),
    )
    return Delivery(
        execution,
        draw(_DOCUMENTS),
        draw(st.text(max_size=40)),
        draw(st.none() | st.integers(0, 10**9)),
    )


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(deliveries(), st.sampled_from(list(DocumentAs)), st.booleans())
def test_an_execution_s_text_is_what_the_encoder_writes(
    delivery: Delivery, document: DocumentAs, seconds_before_timed_out: bool
) -> None:
    text = shapes.execution_text(delivery, document, seconds_before_timed_out)
    assert text == compact(shapes.execution(delivery, document, seconds_before_timed_out))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(deliveries(), st.none() | st.text(max_size=30), _TIMES)
def test_a_reply_and_an_event_with_an_execution_are_what_the_encoder_writes(
    delivery: Delivery, token: str | None, timestamp: float
) -> None:
    """The start-next (and describe) reply: the execution, then the request's clientToken and
    the timestamp; notify-next: the timestamp, then the execution, or the timestamp alone."""
    text = shapes.execution_text(delivery, DocumentAs.OBJECT)
    execution: dict[str, Any] = shapes.execution(delivery, DocumentAs.OBJECT)
    reply = mqtt_frontend._envelope_text('{"execution":' + text, token, timestamp)
    encoded = mqtt_frontend._encode
    assert reply == encoded(mqtt_frontend._envelope({"execution": execution}, token, timestamp))
    event = {"timestamp": int(timestamp), "execution": execution}
    assert mqtt_frontend._next_changed(timestamp, text) == encoded(event)
    assert mqtt_frontend._next_changed(timestamp, None) == encoded({"timestamp": int(timestamp)})


async def test_a_drained_job_writes_its_executions_without_building_their_dicts(
    emulator: Emulator,
) -> None:
    """The start-next reply and the notify-next of each job carry its execution as text: no
    `shapes.execution` dict is built (two per job before; the last notify-next says the queue
    is empty and carries none), and the document is still encoded by the encoder, once for
    each, beside the update's reply (30 encodes before: the empty queue's notify-next is a
    template now too)."""
    drain = Drain(emulator, 12)
    calls = Calls(OWN)
    drain.run(calls, range(2, 12))
    assert execution_history(emulator)[-1] == (drain.jobs[-1], ExecutionStatus.SUCCEEDED)
    assert calls.of("shapes.py", "execution") == 0, calls.by_name
    assert calls.of("shapes.py", "execution_text") == 2 * 10 - 1, calls.by_name
    assert calls.of("jsontext.py", "text") == 3 * 10 - 1, calls.by_name


def test_the_wire_text_decodes_to_the_documented_fields_in_order() -> None:
    """A reading check beside the byte comparison: the fields come in the API reference's
    order, absent ones left out, times in whole seconds."""
    live = Execution("j-1", "t-1", None, 3, 1_700_000_000.9, 1_700_000_002.2)
    live.status = ExecutionStatus.IN_PROGRESS
    live.started_at = 1_700_000_001.5
    live.status_details = {"step": "2"}
    delivery = Delivery(live, {"operation": "x"}, '{"operation": "x"}', 540)
    decoded = json.loads(shapes.execution_text(delivery, DocumentAs.OBJECT))
    assert list(decoded.items()) == [
        ("jobId", "j-1"),
        ("thingName", "t-1"),
        ("status", "IN_PROGRESS"),
        ("statusDetails", {"step": "2"}),
        ("queuedAt", 1_700_000_000),
        ("startedAt", 1_700_000_001),
        ("lastUpdatedAt", 1_700_000_002),
        ("versionNumber", 1),
        ("executionNumber", 3),
        ("jobDocument", {"operation": "x"}),
        ("approximateSecondsBeforeTimedOut", 540),
    ]
