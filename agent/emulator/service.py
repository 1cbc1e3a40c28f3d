"""The AWS IoT Jobs service as a pure state machine: no sockets, no topics, no event loop.

The MQTT front end and the HTTP planes are thin adapters around `JobsService`; tests drive it
directly too. Design points (docs/emulator.md has the AWS sources for each choice):

* One re-entrant lock guards every record, because the HTTP server answers in its own threads
  while the MQTT front end runs on the asyncio loop. Every public method takes it for the whole
  operation, so each request is atomic, and returns snapshots (shallow copies), never the live
  records. Events are collected during the operation and handed to listeners after the lock is
  released, so a listener may call back into the service.
* Per-request work is proportional to the thing's own pending executions, never to all jobs:
  executions are indexed per (thing, namespace) in two insertion-ordered dicts (IN_PROGRESS,
  QUEUED), and timers live in a heap that `tick()` pops.
* `notify` (JobExecutionsChanged) is emitted when an execution is queued, changes non-terminal
  status or becomes terminal; `notify-next` (NextJobExecutionChanged) only when the head of the
  thing's queue (IN_PROGRESS first, else the oldest QUEUED) is a different execution than the
  last one announced.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs_agent.aio import wait_event
from jobs_agent.emulator.clock import Clock, SystemClock
from jobs_agent.emulator.model import (
    DEVICE_SETTABLE,
    TERMINAL,
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    HistoryEntry,
    Job,
    JobStatus,
    RetryCriterion,
    Source,
    Thing,
)
from jobs_agent.emulator.presign import DEFAULT_EXPIRES_IN_SEC, has_placeholders, resign_document
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.jobs.status_details import validate_status_details

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

MIN_STEP_TIMEOUT = 1
MAX_STEP_TIMEOUT = 10080
MAX_DOCUMENT_BYTES = 32768

_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_NAMESPACE = re.compile(r"[a-zA-Z0-9_-]+")
_THING_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):thing/([a-zA-Z0-9:_-]{1,128})")


class ServiceError(Exception):
    """A device (data-plane) request refused with one of the Jobs error codes.

    `execution_state` is set for InvalidStateTransition and VersionMismatch, as AWS does.
    """

    def __init__(
        self, code: ErrorCode, message: str, execution_state: Execution | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution_state = execution_state


class ControlError(Exception):
    """A control-plane request refused; `exception` is the AWS error shape name."""

    STATUS = {
        "InvalidRequestException": 400,
        "ResourceNotFoundException": 404,
        "ResourceAlreadyExistsException": 409,
        "InvalidStateTransitionException": 409,
        "VersionConflictException": 409,
        "LimitExceededException": 410,
        "ThrottlingException": 400,
        "ServiceUnavailableException": 503,
    }

    def __init__(self, exception: str, message: str) -> None:
        super().__init__(f"{exception}: {message}")
        self.exception = exception
        self.message = message

    @property
    def http_status(self) -> int:
        return self.STATUS.get(self.exception, 400)


@dataclass(frozen=True, slots=True)
class Delivery:
    """An execution as handed to a device, with its document freshly re-signed."""

    execution: Execution
    document: dict[str, Any]
    document_text: str
    seconds_before_timed_out: int | None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    execution: Execution
    document: dict[str, Any] | None
    document_text: str | None


@dataclass(frozen=True, slots=True)
class JobExecutionsChanged:
    thing_name: str
    namespace: str | None
    in_progress: list[ExecutionSummary]
    queued: list[ExecutionSummary]
    timestamp: float


@dataclass(frozen=True, slots=True)
class NextJobExecutionChanged:
    thing_name: str
    namespace: str | None
    execution: Delivery | None
    timestamp: float


ServiceEvent = JobExecutionsChanged | NextJobExecutionChanged
EventListener = Callable[[list[ServiceEvent]], None]
_Key = tuple[str, str | None]


@dataclass(slots=True)
class _Queue:
    """The pending executions of one thing in one namespace, in queue order."""

    in_progress: dict[str, Execution] = field(default_factory=dict)
    queued: dict[str, Execution] = field(default_factory=dict)
    announced_head: tuple[str, int] | None = None

    def head(self) -> Execution | None:
        for execution in self.in_progress.values():
            return execution
        for execution in self.queued.values():
            return execution
        return None


@dataclass(slots=True)
class _Txn:
    notify: set[_Key] = field(default_factory=set)
    heads: set[_Key] = field(default_factory=set)
    executions: dict[tuple[str, str, int], Execution] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    things: dict[str, Thing] = field(default_factory=dict)
    deleted_jobs: set[str] = field(default_factory=set)
    deleted_executions: set[tuple[str, str, int]] = field(default_factory=set)
    history: list[HistoryEntry] = field(default_factory=list)


def _snapshot(execution: Execution) -> Execution:
    # status_details is always replaced, never mutated in place, so a shallow copy is a
    # consistent snapshot.
    return copy.copy(execution)


def _check_step_timeout(value: int | None, allow_clear: bool) -> None:
    if value is None:
        return
    if allow_clear and value == -1:
        return
    if not (MIN_STEP_TIMEOUT <= value <= MAX_STEP_TIMEOUT):
        raise ServiceError(
            ErrorCode.INVALID_REQUEST,
            f"stepTimeoutInMinutes must be between {MIN_STEP_TIMEOUT} and {MAX_STEP_TIMEOUT}"
            + (" (or -1 to clear it)" if allow_clear else ""),
        )


def check_status_details(details: Mapping[str, Any] | None) -> str | None:
    """Why `details` breaks the API's DetailsMap constraints (None when it fits): the protocol
    module's validator, so the emulator refuses exactly what the device side avoids sending."""
    if details is None:
        return None
    return validate_status_details(details)


class JobsService:
    """AWS IoT Jobs, service side. See the module docstring for the design."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        throttle_rate: float = 0.0,
        seed: int | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.region = region
        self.account_id = account_id
        self._lock = threading.RLock()
        self._emit_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.throttle_rate = throttle_rate
        self.counters: Counter[str] = Counter()
        self._things: dict[str, Thing] = {}
        self._jobs: dict[str, Job] = {}
        self._job_counts: dict[str, Counter[ExecutionStatus]] = {}
        self._executions: dict[tuple[str, str], list[Execution]] = {}
        self._thing_jobs: dict[str, dict[str, None]] = {}
        self._queues: dict[_Key, _Queue] = {}
        self._timers: list[tuple[float, str, str, int, int]] = []
        self._history: list[HistoryEntry] = []
        self._listeners: list[EventListener] = []
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._pending_events: list[ServiceEvent] = []
        self._store = store
        if store is not None:
            self._load(store)

    # -- configuration ------------------------------------------------------------------------
    @property
    def throttle_rate(self) -> float:
        return self._throttle_rate

    @throttle_rate.setter
    def throttle_rate(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError("throttle_rate must be between 0 and 1")
        self._throttle_rate = value

    def add_listener(self, listener: EventListener) -> None:
        """Called (outside the lock, in the thread that made the change) with each batch."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def admit(self, operation: str) -> None:
        """Count one device request and throttle it with probability `throttle_rate`.

        Called by the front ends at their edge (MQTT and HTTP data plane), before parsing, so
        every request a device makes is counted once, even the malformed ones.
        """
        with self._lock:
            self.counters[operation] += 1
            if self._throttle_rate > 0 and self._rng.random() < self._throttle_rate:
                self.counters["throttled"] += 1
                raise ServiceError(ErrorCode.REQUEST_THROTTLED, "Request throttled")

    def count(self, name: str) -> None:
        """Bump a counter that is not a device operation (e.g. `InvalidTopic`)."""
        with self._lock:
            self.counters[name] += 1

    # -- helpers --------------------------------------------------------------------------------
    def thing_arn(self, thing_name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:thing/{thing_name}"

    def job_arn(self, job_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:job/{job_id}"

    def now(self) -> float:
        return self.clock.now()

    def _finish(self, txn: _Txn) -> None:
        """End of a mutating operation (lock held): persist, build events, wake waiters."""
        now = self.clock.now()
        events: list[ServiceEvent] = []
        for key in txn.notify:
            queue = self._queues.get(key)
            events.append(
                JobExecutionsChanged(
                    thing_name=key[0],
                    namespace=key[1],
                    in_progress=[]
                    if queue is None
                    else [e.summary() for e in queue.in_progress.values()],
                    queued=[] if queue is None else [e.summary() for e in queue.queued.values()],
                    timestamp=now,
                )
            )
        for key in txn.heads:
            queue = self._queues.get(key)
            head = None if queue is None else queue.head()
            identity = None if head is None else (head.job_id, head.execution_number)
            announced = None if queue is None else queue.announced_head
            if identity == announced:
                continue
            if queue is not None:
                queue.announced_head = identity
            events.append(
                NextJobExecutionChanged(
                    thing_name=key[0],
                    namespace=key[1],
                    execution=None if head is None else self._deliver(head, now),
                    timestamp=now,
                )
            )
        self._history.extend(txn.history)
        if self._store is not None and (
            txn.executions or txn.jobs or txn.things or txn.history or txn.deleted_jobs
        ):
            self._store.save(
                things=list(txn.things.values()),
                jobs=list(txn.jobs.values()),
                executions=list(txn.executions.values()),
                history=txn.history,
                deleted_jobs=txn.deleted_jobs,
                deleted_executions=txn.deleted_executions,
            )
        self._pending_events.extend(events)

    def _emit(self) -> None:
        """Hand the collected events to listeners and wake `wait_for` (lock NOT held)."""
        with self._emit_lock:
            # The emit lock keeps batches in the order they were made when two threads (the
            # loop and an HTTP worker) change state at once; listeners must not block.
            with self._lock:
                events, self._pending_events = self._pending_events, []
                waiters = list(self._waiters)
            if events:
                for listener in list(self._listeners):
                    listener(events)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def _deliver(self, execution: Execution, now: float) -> Delivery:
        job = self._jobs[execution.job_id]
        if job.has_presigned_urls:
            text = resign_document(job.document_text, now, job.presigned_expires_in_sec)
            document: dict[str, Any] = json.loads(text)
        else:
            text, document = job.document_text, job.document
        return Delivery(
            execution=_snapshot(execution),
            document=document,
            document_text=text,
            seconds_before_timed_out=self._seconds_left(execution, now),
        )

    @staticmethod
    def _seconds_left(execution: Execution, now: float) -> int | None:
        deadline = execution.deadline()
        if deadline is None or execution.status in TERMINAL:
            return None
        return max(0, int(deadline - now))

    def seconds_before_timed_out(self, execution: Execution) -> int | None:
        """`approximateSecondsBeforeTimedOut` of a snapshot, as of now."""
        return self._seconds_left(execution, self.clock.now())

    def _ensure_thing(self, name: str, txn: _Txn) -> Thing:
        thing = self._things.get(name)
        if thing is None:
            thing = Thing(name=name, created_at=self.clock.now())
            self._things[name] = thing
            txn.things[name] = thing
        return thing

    def _queue(self, key: _Key) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        return queue

    def _current(self, job_id: str, thing_name: str) -> Execution | None:
        chain = self._executions.get((job_id, thing_name))
        return chain[-1] if chain else None

    def _record(
        self,
        txn: _Txn,
        execution: Execution,
        from_status: ExecutionStatus | None,
        source: Source,
    ) -> None:
        txn.executions[execution.key] = execution
        txn.history.append(
            HistoryEntry(
                time=execution.last_updated_at,
                job_id=execution.job_id,
                thing_name=execution.thing_name,
                execution_number=execution.execution_number,
                from_status=from_status,
                to_status=execution.status,
                status_details=execution.status_details,
                source=source,
                version_number=execution.version_number,
            )
        )

    def _arm_timer(self, execution: Execution) -> None:
        deadline = execution.deadline()
        if deadline is not None and execution.status not in TERMINAL:
            heapq.heappush(
                self._timers,
                (
                    deadline,
                    execution.job_id,
                    execution.thing_name,
                    execution.execution_number,
                    execution.version_number,
                ),
            )

    def _set_status(
        self,
        txn: _Txn,
        execution: Execution,
        status: ExecutionStatus,
        source: Source,
        details: dict[str, str] | None = None,
    ) -> None:
        """Every status change goes through here: indexes, counts, events, history, retries."""
        now = self.clock.now()
        old = execution.status
        key: _Key = (execution.thing_name, execution.namespace)
        queue = self._queue(key)
        counts = self._job_counts.setdefault(execution.job_id, Counter())
        counts[old] -= 1
        counts[status] += 1
        execution.status = status
        execution.version_number += 1
        execution.last_updated_at = now
        if details is not None:
            execution.status_details = dict(details)
        if status is ExecutionStatus.IN_PROGRESS and old is ExecutionStatus.QUEUED:
            execution.started_at = now
            job = self._jobs[execution.job_id]
            if job.in_progress_timeout_minutes:
                execution.in_progress_deadline = now + job.in_progress_timeout_minutes * 60
            queue.queued.pop(execution.job_id, None)
            queue.in_progress[execution.job_id] = execution
        elif status in TERMINAL:
            execution.step_deadline = None
            execution.in_progress_deadline = None
            queue.queued.pop(execution.job_id, None)
            queue.in_progress.pop(execution.job_id, None)
        if status != old:
            txn.notify.add(key)
        txn.heads.add(key)
        self._record(txn, execution, old, source)
        if status in TERMINAL:
            self._maybe_retry(txn, execution)
            self._maybe_complete(txn, execution.job_id)

    def _queue_execution(
        self, txn: _Txn, job: Job, thing_name: str, number: int, retry_attempt: int
    ) -> Execution:
        now = self.clock.now()
        execution = Execution(
            job_id=job.job_id,
            thing_name=thing_name,
            namespace=job.namespace,
            execution_number=number,
            queued_at=now,
            last_updated_at=now,
            retry_attempt=retry_attempt,
        )
        self._executions.setdefault((job.job_id, thing_name), []).append(execution)
        self._thing_jobs.setdefault(thing_name, {})[job.job_id] = None
        self._job_counts.setdefault(job.job_id, Counter())[ExecutionStatus.QUEUED] += 1
        key: _Key = (thing_name, job.namespace)
        self._queue(key).queued[job.job_id] = execution
        txn.notify.add(key)
        txn.heads.add(key)
        self._record(txn, execution, None, Source.CONTROL)
        return execution

    def _maybe_retry(self, txn: _Txn, execution: Execution) -> None:
        """Re-queue a FAILED/TIMED_OUT execution as a new executionNumber if the job allows it.

        Retries are counted per failure type: a criterion for the type itself wins over `ALL`,
        and `ALL` counts both kinds of failure.
        """
        status = execution.status
        if status not in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
            return
        job = self._jobs[execution.job_id]
        if job.status is not JobStatus.IN_PROGRESS or not job.retry_criteria:
            return
        by_type = {c.failure_type: c.number_of_retries for c in job.retry_criteria}
        chain = self._executions[(execution.job_id, execution.thing_name)]
        failed = sum(1 for e in chain if e.status is ExecutionStatus.FAILED)
        timed_out = sum(1 for e in chain if e.status is ExecutionStatus.TIMED_OUT)
        if status.value in by_type:
            used, allowed = (
                (failed if status is ExecutionStatus.FAILED else timed_out),
                by_type[status.value],
            )
        elif "ALL" in by_type:
            used, allowed = failed + timed_out, by_type["ALL"]
        else:
            return
        if used > allowed:
            return
        self._queue_execution(
            txn,
            job,
            execution.thing_name,
            execution.execution_number + 1,
            execution.retry_attempt + 1,
        )

    def _maybe_complete(self, txn: _Txn, job_id: str) -> None:
        job = self._jobs[job_id]
        if job.status is not JobStatus.IN_PROGRESS:
            return
        counts = self._job_counts.get(job_id, Counter())
        if counts[ExecutionStatus.QUEUED] > 0 or counts[ExecutionStatus.IN_PROGRESS] > 0:
            return
        now = self.clock.now()
        job.status = JobStatus.COMPLETED
        job.completed_at = now
        job.last_updated_at = now
        txn.jobs[job_id] = job

    def _visible(self, job_id: str, thing_name: str, namespace: str | None) -> Execution:
        job = self._jobs.get(job_id)
        current = self._current(job_id, thing_name)
        if job is None or current is None or job.namespace != namespace:
            raise ServiceError(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"Job execution {job_id} for thing {thing_name} not found",
            )
        return current

    # -- data plane (what a device calls) ---------------------------------------------------
    def get_pending(
        self, thing_name: str, namespace: str | None = None
    ) -> tuple[list[Execution], list[Execution]]:
        """GetPendingJobExecutions: (inProgressJobs, queuedJobs) snapshots, in queue order."""
        with self._lock:
            queue = self._queues.get((thing_name, namespace))
            if queue is None:
                return [], []
            return (
                [_snapshot(e) for e in queue.in_progress.values()],
                [_snapshot(e) for e in queue.queued.values()],
            )

    def start_next(
        self,
        thing_name: str,
        namespace: str | None = None,
        status_details: dict[str, str] | None = None,
        step_timeout_minutes: int | None = None,
    ) -> Delivery | None:
        """StartNextPendingJobExecution: the IN_PROGRESS execution unchanged, else the oldest
        QUEUED one moved to IN_PROGRESS; None when nothing is pending."""
        _check_step_timeout(step_timeout_minutes, allow_clear=False)
        reason = check_status_details(status_details)
        if reason:
            raise ServiceError(ErrorCode.INVALID_REQUEST, reason)
        with self._lock:
            txn = _Txn()
            self._ensure_thing(thing_name, txn)
            queue = self._queues.get((thing_name, namespace))
            head = None if queue is None else queue.head()
            if head is not None and head.status is ExecutionStatus.QUEUED:
                if step_timeout_minutes is not None:
                    head.step_deadline = self.clock.now() + step_timeout_minutes * 60
                self._set_status(
                    txn, head, ExecutionStatus.IN_PROGRESS, Source.DEVICE, status_details
                )
                self._arm_timer(head)
            result = None if head is None else self._deliver(head, self.clock.now())
            self._finish(txn)
        self._emit()
        return result

    def describe(
        self,
        thing_name: str,
        job_id: str,
        namespace: str | None = None,
        execution_number: int | None = None,
    ) -> Delivery | None:
        """DescribeJobExecution (data plane); `job_id` may be `$next` (None when nothing is
        pending). A terminal execution answers TerminalStateReached (see docs/emulator.md)."""
        with self._lock:
            now = self.clock.now()
            if job_id == "$next":
                queue = self._queues.get((thing_name, namespace))
                head = None if queue is None else queue.head()
                return None if head is None else self._deliver(head, now)
            execution = self._visible(job_id, thing_name, namespace)
            if execution_number is not None and execution_number != execution.execution_number:
                execution = self._by_number(job_id, thing_name, execution_number)
            if execution.status in TERMINAL:
                raise ServiceError(
                    ErrorCode.TERMINAL_STATE_REACHED,
                    f"Job execution {job_id} for thing {thing_name} is in terminal state "
                    f"{execution.status}",
                )
            return self._deliver(execution, now)

    def _by_number(self, job_id: str, thing_name: str, number: int) -> Execution:
        for candidate in self._executions.get((job_id, thing_name), []):
            if candidate.execution_number == number:
                return candidate
        raise ServiceError(
            ErrorCode.RESOURCE_NOT_FOUND,
            f"Job execution {job_id} #{number} for thing {thing_name} not found",
        )

    def update(
        self,
        thing_name: str,
        job_id: str,
        status: str,
        *,
        namespace: str | None = None,
        status_details: dict[str, str] | None = None,
        expected_version: int | None = None,
        execution_number: int | None = None,
        step_timeout_minutes: int | None = None,
        include_document: bool = False,
    ) -> UpdateResult:
        """UpdateJobExecution. Checks, in order: status value, statusDetails, step timeout,
        existence, expectedVersion, state transition."""
        try:
            new_status = ExecutionStatus(status)
        except ValueError:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST, f"status {status!r} is not a job execution status"
            ) from None
        reason = check_status_details(status_details)
        if reason:
            raise ServiceError(ErrorCode.INVALID_REQUEST, reason)
        _check_step_timeout(step_timeout_minutes, allow_clear=True)
        with self._lock:
            now = self.clock.now()
            execution = self._visible(job_id, thing_name, namespace)
            if execution_number is not None and execution_number != execution.execution_number:
                execution = self._by_number(job_id, thing_name, execution_number)
            if expected_version is not None and expected_version != execution.version_number:
                raise ServiceError(
                    ErrorCode.VERSION_MISMATCH,
                    f"expectedVersion {expected_version} does not match the current version "
                    f"{execution.version_number}",
                    _snapshot(execution),
                )
            if execution.status in TERMINAL or new_status not in DEVICE_SETTABLE:
                raise ServiceError(
                    ErrorCode.INVALID_STATE_TRANSITION,
                    f"Cannot update job execution from {execution.status} to {new_status}",
                    _snapshot(execution),
                )
            txn = _Txn()
            if new_status is ExecutionStatus.IN_PROGRESS and step_timeout_minutes is not None:
                execution.step_deadline = (
                    None if step_timeout_minutes == -1 else now + step_timeout_minutes * 60
                )
            self._set_status(txn, execution, new_status, Source.DEVICE, status_details)
            self._arm_timer(execution)
            if include_document:
                delivery = self._deliver(execution, now)
                result = UpdateResult(delivery.execution, delivery.document, delivery.document_text)
            else:
                result = UpdateResult(_snapshot(execution), None, None)
            self._finish(txn)
        self._emit()
        return result

    # -- timers ---------------------------------------------------------------------------------
    def tick(self) -> int:
        """Time out every execution whose step or in-progress timer is due; returns how many."""
        with self._lock:
            now = self.clock.now()
            txn = _Txn()
            count = 0
            while self._timers and self._timers[0][0] <= now:
                _, job_id, thing_name, number, version = heapq.heappop(self._timers)
                chain = self._executions.get((job_id, thing_name), [])
                execution = next((e for e in chain if e.execution_number == number), None)
                if (
                    execution is None
                    or execution.version_number != version
                    or execution.status in TERMINAL
                ):
                    continue  # superseded by a later update (it armed its own timer)
                deadline = execution.deadline()
                if deadline is None or deadline > now:
                    continue
                self._set_status(txn, execution, ExecutionStatus.TIMED_OUT, Source.TIMER)
                count += 1
            self._finish(txn)
        self._emit()
        return count

    def next_deadline(self) -> float | None:
        """When `tick()` next has something to do (a hint; stale entries are skipped)."""
        with self._lock:
            return self._timers[0][0] if self._timers else None

    # -- control plane (what an operator calls) -------------------------------------------------
    def create_thing(self, thing_name: str, attributes: dict[str, str] | None = None) -> Thing:
        if not _THING_NAME.fullmatch(thing_name):
            raise ControlError("InvalidRequestException", f"invalid thing name {thing_name!r}")
        with self._lock:
            txn = _Txn()
            existing = self._things.get(thing_name)
            if existing is not None:
                if attributes and attributes != existing.attributes:
                    raise ControlError(
                        "ResourceAlreadyExistsException",
                        f"Thing {thing_name} already exists with different attributes",
                    )
                return copy.copy(existing)
            thing = self._ensure_thing(thing_name, txn)
            if attributes:
                thing.attributes = dict(attributes)
            self._finish(txn)
            result = copy.copy(thing)
        self._emit()
        return result

    def describe_thing(self, thing_name: str) -> Thing:
        with self._lock:
            thing = self._things.get(thing_name)
            if thing is None:
                raise ControlError("ResourceNotFoundException", f"Thing {thing_name} not found")
            return copy.copy(thing)

    def _thing_name_of(self, target: str) -> str:
        if _THING_NAME.fullmatch(target) and not target.startswith("arn:"):
            return target
        match = _THING_ARN.fullmatch(target)
        if match is None:
            raise ControlError(
                "InvalidRequestException",
                f"target {target!r} is not a thing name or thing ARN (thing groups are not "
                "supported by the emulator)",
            )
        return match.group(3)

    def create_job(
        self,
        job_id: str,
        targets: Iterable[str],
        document: dict[str, Any] | str,
        *,
        namespace: str | None = None,
        description: str | None = None,
        in_progress_timeout_minutes: int | None = None,
        retry_config: Iterable[RetryCriterion | Mapping[str, Any]] | None = None,
        presigned_expires_in_sec: int | None = None,
    ) -> Job:
        """CreateJob (SNAPSHOT targets): one QUEUED execution per target thing.

        `targets` are thing names or thing ARNs; `document` a dict or its JSON text (stored as
        given). There is no job-level step timeout in AWS: devices set it per request.
        """
        if not _JOB_ID.fullmatch(job_id):
            raise ControlError("InvalidRequestException", f"invalid jobId {job_id!r}")
        if namespace is not None and not _NAMESPACE.fullmatch(namespace):
            raise ControlError("InvalidRequestException", f"invalid namespaceId {namespace!r}")
        target_list = list(targets)
        if not target_list:
            raise ControlError("InvalidRequestException", "targets must not be empty")
        names = [self._thing_name_of(t) for t in target_list]
        if isinstance(document, str):
            text = document
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise ControlError(
                    "InvalidRequestException", f"document is not valid JSON: {exc}"
                ) from None
        else:
            parsed = document
            text = json.dumps(document, separators=(",", ":"))
        if not isinstance(parsed, dict):
            raise ControlError("InvalidRequestException", "document must be a JSON object")
        if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
            raise ControlError(
                "InvalidRequestException", f"document is larger than {MAX_DOCUMENT_BYTES} bytes"
            )
        if in_progress_timeout_minutes is not None and not (
            1 <= in_progress_timeout_minutes <= MAX_STEP_TIMEOUT
        ):
            raise ControlError(
                "InvalidRequestException",
                f"inProgressTimeoutInMinutes must be between 1 and {MAX_STEP_TIMEOUT}",
            )
        criteria = [self._criterion(c) for c in (retry_config or [])]
        if len(criteria) > 2:
            raise ControlError("InvalidRequestException", "at most 2 retry criteria")
        with self._lock:
            if job_id in self._jobs:
                raise ControlError("ResourceAlreadyExistsException", f"Job {job_id} already exists")
            now = self.clock.now()
            txn = _Txn()
            job = Job(
                job_id=job_id,
                targets=[self.thing_arn(n) for n in names],
                thing_names=list(dict.fromkeys(names)),
                document=parsed,
                document_text=text,
                namespace=namespace,
                description=description,
                in_progress_timeout_minutes=in_progress_timeout_minutes,
                retry_criteria=criteria,
                presigned_expires_in_sec=presigned_expires_in_sec or DEFAULT_EXPIRES_IN_SEC,
                created_at=now,
                last_updated_at=now,
                has_presigned_urls=has_placeholders(text),
            )
            self._jobs[job_id] = job
            self._job_counts[job_id] = Counter()
            txn.jobs[job_id] = job
            for name in job.thing_names:
                self._ensure_thing(name, txn)
                self._queue_execution(txn, job, name, 1, 0)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    @staticmethod
    def _criterion(value: RetryCriterion | Mapping[str, Any]) -> RetryCriterion:
        if isinstance(value, RetryCriterion):
            criterion = value
        else:
            try:
                criterion = RetryCriterion(
                    failure_type=str(value["failureType"]),
                    number_of_retries=int(value["numberOfRetries"]),
                )
            except (KeyError, TypeError, ValueError):
                raise ControlError(
                    "InvalidRequestException",
                    "retry criteria need failureType and numberOfRetries",
                ) from None
        if criterion.failure_type not in ("FAILED", "TIMED_OUT", "ALL"):
            raise ControlError(
                "InvalidRequestException", f"invalid failureType {criterion.failure_type!r}"
            )
        if not 0 <= criterion.number_of_retries <= 10:
            raise ControlError("InvalidRequestException", "numberOfRetries must be 0..10")
        return criterion

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ControlError("ResourceNotFoundException", f"Job {job_id} not found")
        return job

    def job(self, job_id: str) -> Job:
        """DescribeJob: a snapshot of the job record."""
        with self._lock:
            return copy.copy(self._job(job_id))

    def job_counts(self, job_id: str) -> dict[ExecutionStatus, int]:
        """Current executions per status (`jobProcessDetails`)."""
        with self._lock:
            self._job(job_id)
            return {s: n for s, n in self._job_counts.get(job_id, Counter()).items() if n > 0}

    def job_document(self, job_id: str) -> str:
        """GetJobDocument: the document text, with presigned URL placeholders re-signed."""
        with self._lock:
            job = self._job(job_id)
            if job.has_presigned_urls:
                return resign_document(
                    job.document_text, self.clock.now(), job.presigned_expires_in_sec
                )
            return job.document_text

    def list_jobs(self, status: str | None = None, namespace: str | None = None) -> list[Job]:
        with self._lock:
            return [
                copy.copy(j)
                for j in self._jobs.values()
                if (status is None or j.status == status)
                and (namespace is None or j.namespace == namespace)
            ]

    def cancel_job(
        self,
        job_id: str,
        force: bool = False,
        reason_code: str | None = None,
        comment: str | None = None,
    ) -> Job:
        """CancelJob: QUEUED executions become CANCELED; IN_PROGRESS ones only with `force`."""
        with self._lock:
            job = self._job(job_id)
            if job.status is JobStatus.COMPLETED:
                raise ControlError(
                    "InvalidRequestException", f"Job {job_id} is COMPLETED and cannot be canceled"
                )
            if job.status is JobStatus.CANCELED and not force:
                return copy.copy(job)
            txn = _Txn()
            now = self.clock.now()
            job.status = JobStatus.CANCELED
            job.force_canceled = job.force_canceled or force
            job.reason_code = reason_code or job.reason_code
            job.comment = comment or job.comment
            job.last_updated_at = now
            job.completed_at = now
            txn.jobs[job_id] = job
            for name in job.thing_names:
                execution = self._current(job_id, name)
                if execution is None:
                    continue
                if execution.status is ExecutionStatus.QUEUED or (
                    force and execution.status is ExecutionStatus.IN_PROGRESS
                ):
                    execution.force_canceled = execution.status is ExecutionStatus.IN_PROGRESS
                    self._set_status(txn, execution, ExecutionStatus.CANCELED, Source.CONTROL)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    def delete_job(self, job_id: str, force: bool = False) -> None:
        """DeleteJob: refused while executions are IN_PROGRESS unless `force`."""
        with self._lock:
            job = self._job(job_id)
            counts = self._job_counts.get(job_id, Counter())
            if counts[ExecutionStatus.IN_PROGRESS] > 0 and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    f"Job {job_id} has IN_PROGRESS executions; use force to delete it",
                )
            txn = _Txn()
            job.status = JobStatus.DELETION_IN_PROGRESS
            now = self.clock.now()
            for name in job.thing_names:
                for execution in self._executions.pop((job_id, name), []):
                    txn.deleted_executions.add(execution.key)
                    if execution.status in TERMINAL:
                        continue
                    key: _Key = (name, job.namespace)
                    queue = self._queue(key)
                    queue.queued.pop(job_id, None)
                    queue.in_progress.pop(job_id, None)
                    txn.notify.add(key)
                    txn.heads.add(key)
                    old = execution.status
                    execution.status = ExecutionStatus.REMOVED
                    execution.version_number += 1
                    execution.last_updated_at = now
                    self._record(txn, execution, old, Source.CONTROL)
                    txn.executions.pop(execution.key, None)
                self._thing_jobs.get(name, {}).pop(job_id, None)
            del self._jobs[job_id]
            self._job_counts.pop(job_id, None)
            txn.deleted_jobs.add(job_id)
            self._finish(txn)
        self._emit()

    def execution(
        self, job_id: str, thing_name: str, execution_number: int | None = None
    ) -> Execution:
        """DescribeJobExecution (control plane): any status, by number or the latest."""
        with self._lock:
            chain = self._executions.get((job_id, thing_name))
            if not chain:
                raise ControlError(
                    "ResourceNotFoundException",
                    f"Job execution {job_id} for thing {thing_name} not found",
                )
            if execution_number is None:
                return _snapshot(chain[-1])
            for candidate in chain:
                if candidate.execution_number == execution_number:
                    return _snapshot(candidate)
            raise ControlError(
                "ResourceNotFoundException",
                f"Job execution {job_id} #{execution_number} for thing {thing_name} not found",
            )

    def executions_for_thing(
        self,
        thing_name: str,
        status: str | None = None,
        namespace: str | None = None,
        job_id: str | None = None,
    ) -> list[Execution]:
        """ListJobExecutionsForThing: the latest execution of every job (all numbers if
        `job_id` is given, as AWS does)."""
        with self._lock:
            result: list[Execution] = []
            for jid in self._thing_jobs.get(thing_name, {}):
                if job_id is not None and jid != job_id:
                    continue
                if namespace is not None and self._jobs[jid].namespace != namespace:
                    continue
                chain = self._executions.get((jid, thing_name), [])
                for execution in chain if job_id is not None else chain[-1:]:
                    if status is None or execution.status == status:
                        result.append(_snapshot(execution))
            return result

    def executions_for_job(self, job_id: str, status: str | None = None) -> list[Execution]:
        with self._lock:
            job = self._job(job_id)
            result: list[Execution] = []
            for name in job.thing_names:
                execution = self._current(job_id, name)
                if execution is not None and (status is None or execution.status == status):
                    result.append(_snapshot(execution))
            return result

    def cancel_execution(
        self,
        job_id: str,
        thing_name: str,
        force: bool = False,
        expected_version: int | None = None,
        status_details: dict[str, str] | None = None,
    ) -> Execution:
        """CancelJobExecution: QUEUED -> CANCELED; IN_PROGRESS only with `force` (the device's
        next update is then refused); a terminal execution cannot be canceled."""
        reason = check_status_details(status_details)
        if reason:
            raise ControlError("InvalidRequestException", reason)
        with self._lock:
            self._job(job_id)
            execution = self._current(job_id, thing_name)
            if execution is None:
                raise ControlError(
                    "ResourceNotFoundException",
                    f"Job execution {job_id} for thing {thing_name} not found",
                )
            if expected_version is not None and expected_version != execution.version_number:
                raise ControlError(
                    "VersionConflictException",
                    f"expectedVersion {expected_version} does not match {execution.version_number}",
                )
            if execution.status in TERMINAL:
                raise ControlError(
                    "InvalidStateTransitionException",
                    f"Job execution is already {execution.status}",
                )
            if execution.status is ExecutionStatus.IN_PROGRESS and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    "Job execution is IN_PROGRESS; use force to cancel it",
                )
            txn = _Txn()
            execution.force_canceled = execution.status is ExecutionStatus.IN_PROGRESS
            self._set_status(
                txn, execution, ExecutionStatus.CANCELED, Source.CONTROL, status_details
            )
            self._finish(txn)
            result = _snapshot(execution)
        self._emit()
        return result

    def delete_execution(
        self,
        job_id: str,
        thing_name: str,
        execution_number: int,
        force: bool = False,
        namespace: str | None = None,
    ) -> None:
        """DeleteJobExecution: the record disappears (a device update then gets
        ResourceNotFound). A non-terminal execution needs `force`; the history records it as
        REMOVED."""
        with self._lock:
            job = self._job(job_id)
            if namespace is not None and job.namespace != namespace:
                raise ControlError("ResourceNotFoundException", f"Job {job_id} not found")
            chain = self._executions.get((job_id, thing_name), [])
            execution = next((e for e in chain if e.execution_number == execution_number), None)
            if execution is None:
                raise ControlError(
                    "ResourceNotFoundException",
                    f"Job execution {job_id} #{execution_number} for {thing_name} not found",
                )
            if execution.status not in TERMINAL and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    f"Job execution is {execution.status}; use force to delete it",
                )
            txn = _Txn()
            if execution.status not in TERMINAL:
                self._set_status(txn, execution, ExecutionStatus.REMOVED, Source.CONTROL)
            chain.remove(execution)
            if not chain:
                self._executions.pop((job_id, thing_name), None)
                self._thing_jobs.get(thing_name, {}).pop(job_id, None)
            txn.executions.pop(execution.key, None)
            txn.deleted_executions.add(execution.key)
            self._finish(txn)
        self._emit()

    # -- verification helpers ---------------------------------------------------------------
    def history(self, job_id: str | None = None, thing: str | None = None) -> list[HistoryEntry]:
        with self._lock:
            return [
                h
                for h in self._history
                if (job_id is None or h.job_id == job_id)
                and (thing is None or h.thing_name == thing)
            ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` (evaluated under the service lock) is true.

        Re-evaluated after every change, whichever thread made it; raises TimeoutError.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        deadline = loop.time() + timeout
        with self._lock:
            self._waiters.add(waiter)
        try:
            while True:
                event.clear()
                with self._lock:
                    if predicate():
                        return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"condition not reached within {timeout:g} s")
                await wait_event(event, remaining)
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    async def wait_for_status(
        self,
        job_id: str,
        thing_name: str,
        status: ExecutionStatus | str,
        execution_number: int | None = None,
        timeout: float = 10.0,
    ) -> Execution:
        """Wait until the (latest, or numbered) execution has `status`; returns a snapshot."""
        wanted = ExecutionStatus(status)
        found: list[Execution] = []

        def reached() -> bool:
            for execution in self._executions.get((job_id, thing_name), []):
                if (
                    execution_number is None or execution.execution_number == execution_number
                ) and execution.status is wanted:
                    found.append(_snapshot(execution))
                    return True
            return False

        await self.wait_for(reached, timeout)
        return found[-1]

    # -- persistence ----------------------------------------------------------------------------
    def _load(self, store: StateStore) -> None:
        """Rebuild every index from the store (used once, at construction)."""
        state = store.load()
        self._things = {t.name: t for t in state.things}
        for job in state.jobs:
            self._jobs[job.job_id] = job
            self._job_counts[job.job_id] = Counter()
        for execution in sorted(state.executions, key=lambda e: (e.queued_at, e.execution_number)):
            if execution.job_id not in self._jobs:
                continue
            self._executions.setdefault((execution.job_id, execution.thing_name), []).append(
                execution
            )
            self._thing_jobs.setdefault(execution.thing_name, {})[execution.job_id] = None
        for chain in self._executions.values():
            chain.sort(key=lambda e: e.execution_number)
            current = chain[-1]
            self._job_counts[current.job_id][current.status] += 1
            key: _Key = (current.thing_name, current.namespace)
            if current.status is ExecutionStatus.QUEUED:
                self._queue(key).queued[current.job_id] = current
            elif current.status is ExecutionStatus.IN_PROGRESS:
                self._queue(key).in_progress[current.job_id] = current
                self._arm_timer(current)
        for queue in self._queues.values():
            queue.queued = dict(sorted(queue.queued.items(), key=lambda kv: kv[1].queued_at))
            queue.in_progress = dict(
                sorted(queue.in_progress.items(), key=lambda kv: kv[1].started_at or 0.0)
            )
            head = queue.head()
            queue.announced_head = None if head is None else (head.job_id, head.execution_number)
        self._history = list(state.history)
