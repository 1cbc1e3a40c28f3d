"""What the Jobs client tells its one consumer (the engine), and what it counts.

Events are wake-ups: `notify`, `notify-next`, and a resync after a reconnect (events may have
been missed, so look at the service again). Their payloads are checked only as far as the
consumer reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import field
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.jobs.errors import ProtocolError
from jobs_agent.jobs.models import (
    JobExecutionsChangedEvent,
    JobExecutionSummary,
    NextJobExecutionChangedEvent,
)

NOTIFY_LIST_LIMIT = 10
"""The fewest pending executions a `notify` may be cut to: the older API reference's limit (the
notifications page now says 15). A list this long may be cut, so absence from it proves nothing."""


class UnreadBody(Mapping[str, Any]):
    """A `notify` payload decoded at its first read: one that names `NOTIFY_LIST_LIMIT`
    executions or more (counted in its bytes) may be cut, so it wakes a look whatever it lists,
    and with a deep queue every `notify` is that long: decoding each at its arrival was about
    160,000 instructions an event, two events a plugin job, for a body nothing read while no
    handler ran (issue 18). A payload that is not the JSON object `notify` is reads as an
    empty object, naming nothing (its `event` raises `ProtocolError`)."""

    __slots__ = ("_decoded", "_malformed", "_payload")

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self._decoded: Mapping[str, Any] | None = None
        self._malformed: str | None = None

    def _read(self) -> Mapping[str, Any]:
        if self._decoded is None:
            body = decode_object(self._payload)
            try:
                if body is None:
                    raise ProtocolError("payload is not a JSON object in UTF-8")
                check_jobs_shape(body)
            except ProtocolError as exc:
                self._malformed = str(exc)
                body = {}
            self._decoded = body
        return self._decoded

    def problem(self) -> str | None:
        """Why the payload is not a `notify`; None when it is one."""
        self._read()
        return self._malformed

    def __getitem__(self, key: str) -> Any:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


def may_be_cut(payload: bytes) -> bool:
    """Whether a `notify` payload names `NOTIFY_LIST_LIMIT` executions or more, counted
    without decoding it: each summary has one `"jobId"` key, and the text `"jobId"` appears
    in a JSON text only as a key or at the end of a string (then counted too much: a look
    more, never one less)."""
    return payload.count(b'"jobId"') >= NOTIFY_LIST_LIMIT


@model(slots=True)
class JobExecutionsChanged:
    """A `notify` event; `namespace` None is the default namespace.

    `notify` carries every pending execution of the thing, so with a deep queue each event is
    large and most are read only to wake the engine. The summaries are therefore parsed on
    first use of `event` (a `ProtocolError` then), and `lists()` answers the one question the
    engine asks of every event without building the models. `cut`: the list is as long as
    the limit or longer, and may have been cut; its `body` is then an `UnreadBody`, decoded
    only if something asks (a running handler's check that it is still listed).
    """

    namespace: str | None
    body: Mapping[str, Any]
    _parsed: list[JobExecutionsChangedEvent] = field(default_factory=list, compare=False)
    cut: bool = False

    @property
    def event(self) -> JobExecutionsChangedEvent:
        if not self._parsed:
            body = self.body
            problem = body.problem() if isinstance(body, UnreadBody) else None
            if problem is not None:
                raise ProtocolError(problem)
            self._parsed.append(JobExecutionsChangedEvent.from_json(body))
        return self._parsed[0]

    def lists(self, job_id: str, execution_number: int | None = None) -> bool:
        """Whether the execution is among the pending ones this event lists."""
        jobs = self.body.get("jobs")
        if not isinstance(jobs, Mapping):
            return False
        for summaries in jobs.values():
            if not isinstance(summaries, list):
                continue
            for summary in summaries:
                if (
                    isinstance(summary, Mapping)
                    and summary.get("jobId") == job_id
                    and summary.get("executionNumber") in (None, execution_number)
                ):
                    return True
        return False

    def no_longer_lists(
        self, executions: Iterable[tuple[str, int, bool]]
    ) -> list[tuple[str, int, bool]]:
        """Those of `executions` (job id, execution number, in progress on the service) that
        this event proves are no longer pending: absent from a list that cannot have been cut.

        The list is sorted IN_PROGRESS first and cut to at most `NOTIFY_LIST_LIMIT` (10, or
        15): a shorter list is complete; a longer one that still lists QUEUED executions, with
        fewer than the limit in progress (were the cut per status), lists every IN_PROGRESS one.
        Delivery order is not guaranteed: the caller confirms with the service."""
        jobs = self.body.get("jobs")
        if not isinstance(jobs, Mapping):
            return []  # nothing listed ("jobs": {} is listed, and empty)
        listed: set[tuple[object, object]] = set()
        total = 0
        for summaries in jobs.values():
            if not isinstance(summaries, list):
                return []
            total += len(summaries)
            for summary in summaries:
                if isinstance(summary, Mapping):
                    listed.add((summary.get("jobId"), summary.get("executionNumber")))
        in_progress = jobs.get("IN_PROGRESS") or []
        complete = total < NOTIFY_LIST_LIMIT
        started_complete = complete or (
            len(in_progress) < NOTIFY_LIST_LIMIT and bool(jobs.get("QUEUED"))
        )
        return [
            (job_id, number, started)
            for job_id, number, started in executions
            if (job_id, number) not in listed
            and (job_id, None) not in listed
            and (complete or (started and started_complete))
        ]


@model(slots=True)
class NextJobExecutionChanged:
    """A `notify-next` event; `namespace` None is the default namespace."""

    namespace: str | None
    event: NextJobExecutionChangedEvent


@model(slots=True)
class Resync:
    """The link came back: events may have been missed, so look at the service again."""

    session_present: bool


JobsEvent = JobExecutionsChanged | NextJobExecutionChanged | Resync


@model(slots=True)
class PendingJobs:
    """The executions a `notify` event lists, by whether they already started."""

    in_progress: tuple[JobExecutionSummary, ...]
    queued: tuple[JobExecutionSummary, ...]


@model(frozen=False, slots=True)
class ClientStats:
    """Counters for benchmarks and the status command."""

    requests: int = 0
    """Operations called (one per start_next/describe/get_pending/update call)."""
    publishes: int = 0
    """Request messages published, including retries and re-publishes."""
    retries: int = 0
    """Attempts repeated after RequestThrottled or InternalError."""
    republishes: int = 0
    """Requests published again because the link dropped while they waited."""
    timeouts: int = 0
    rejections: int = 0
    """Requests that ended in JobsRejected."""
    replies_ignored: int = 0
    events: int = 0
    events_dropped: int = 0
    """Malformed event payloads."""
    events_coalesced: int = 0
    """Unread events replaced by a newer one of the same kind and namespace."""


def check_jobs_shape(body: Mapping[str, Any]) -> None:
    """The cheap part of validating `notify`: the container shapes, not every summary."""
    jobs = body.get("jobs")
    # dict first: the ABC's check is a Python frame (`ABCMeta.__instancecheck__`) per event
    if jobs is not None and not isinstance(jobs, (dict, Mapping)):
        raise ProtocolError("'jobs' must be an object")
    for key, summaries in (jobs or {}).items():
        if not isinstance(summaries, list):
            raise ProtocolError(f"'jobs.{key}' must be a list")
    timestamp = body.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))  # no union built
    ):
        raise ProtocolError("'timestamp' must be a number")


_DECODER = json.JSONDecoder()
_BLANKS = " \t\n\r"  # what `json.loads` skips around the value


def decode_object(payload: bytes) -> Mapping[str, Any] | None:
    """A payload's JSON object, or None: what `json.loads` takes, decoded by the decoder's
    `raw_decode` without `loads` and `decode` around it (two Python calls fewer per reply
    and event; issue 18)."""
    try:
        text = payload.decode("utf-8")
        obj, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_BLANKS)))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    if end != len(text) and text[end:].strip(_BLANKS):
        return None  # more than one value
    return obj if isinstance(obj, dict) else None


def decode_event(notify: bool, namespace: str | None, payload: bytes) -> JobsEvent:
    """The `notify` (`notify` True) or `notify-next` event of `payload`; `ProtocolError` when
    it is malformed. A `notify` that may be cut is a look whatever it lists: left unread
    (`UnreadBody`)."""
    if notify and may_be_cut(payload):
        return JobExecutionsChanged(namespace, UnreadBody(payload), cut=True)
    body = decode_object(payload)
    if body is None:
        raise ProtocolError("payload is not a JSON object in UTF-8")
    if notify:
        check_jobs_shape(body)
        return JobExecutionsChanged(namespace, body)
    return NextJobExecutionChanged(namespace, NextJobExecutionChangedEvent.from_json(body))
