"""The service's records, indexes and transitions, shared by the data plane and control plane.

`ServiceCore` owns every record and the one lock; `DataPlane` (data_plane.py) and `ControlPlane`
(control.py) are its operations, and `JobsService` (service.py) is the three together. Design
points (docs/emulator.md has the AWS sources for each choice):

* One re-entrant lock guards every record, because the HTTP server answers in its own threads
  while the MQTT front end runs on the asyncio loop. Every public method takes it for the whole
  operation, so each request is atomic, and returns snapshots (shallow copies), never the live
  records. Events are collected during the operation and handed to listeners after the lock is
  released, so a listener may call back into the service.
* Per-request work is proportional to the thing's own pending executions, never to all jobs,
  and an event costs at most the capped list it carries (queues.py): executions are indexed per
  (thing, namespace), and timers (execution timeouts, scheduled starts and ends, rollout
  batches) live in heaps that `tick()` pops.
* Every status change goes through `_set_status`: indexes, counts, notify, history, retries,
  job completion, abort criteria and jobExecution events are all decided there, once.

This module is longer than 500 lines because it is the service's one state machine: every status
change and what it sets off (indexes, counts, notifications, retries, completion, abort, rollout
batches, timers) is decided in `_set_status` and the helpers beside it, which are read together;
the operations built on it live in data_plane.py and control*.py.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.aio import wait_event
from jobs_agent.emulator import events as ev
from jobs_agent.emulator.clock import Clock, SystemClock
from jobs_agent.emulator.errors import ControlError, RequestLost, ServiceError
from jobs_agent.emulator.events import Delivery, EventListener, ServiceEvent
from jobs_agent.emulator.groups import GroupRegistry
from jobs_agent.emulator.model import (
    IN_PROGRESS,
    JOB_COMPLETED,
    JOB_IN_PROGRESS,
    QUEUED,
    SUCCEEDED,
    TERMINAL,
    Execution,
    ExecutionStatus,
    HistoryEntry,
    Job,
    JobStatus,
    Source,
    Thing,
    summaries,
)
from jobs_agent.emulator.packages import PackageCatalog, destinations_of
from jobs_agent.emulator.presign import resign_document
from jobs_agent.emulator.queues import Queue
from jobs_agent.emulator.readings import DOCUMENTED, Readings
from jobs_agent.emulator.rollout import (
    BATCH_SECONDS,
    abort_criterion_met,
    abort_reason,
    rate_per_minute,
)
from jobs_agent.emulator.s3 import ObjectStore
from jobs_agent.emulator.shadows import ShadowError, ShadowService
from jobs_agent.emulator.streams import StreamService
from jobs_agent.emulator.templates import JobTemplate
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.vocabulary import PACKAGE_SHADOW

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

log = structlog.get_logger(__name__)

Key = tuple[str, str | None]
NO_COUNTS: Counter[ExecutionStatus] = Counter()
"""Read-only stand-in for a job without executions (no allocation per lookup)."""
_RETRYABLE = (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT)


class Txn:
    """What one operation changed: events to build, records to persist. Two are made per
    drained job, empty: with literals for its dicts and lists, where a dataclass's eleven
    `default_factory` fields made a call each."""

    __slots__ = (
        "deleted_executions",
        "deleted_jobs",
        "executions",
        "heads",
        "history",
        "jobs",
        "lifecycle",
        "notify",
        "package_writes",
        "records",
        "things",
    )

    def __init__(self) -> None:
        self.notify: set[Key] = set()
        self.heads: set[Key] = set()
        self.executions: dict[tuple[str, str, int], Execution] = {}
        self.jobs: dict[str, Job] = {}
        self.things: dict[str, Thing] = {}
        self.deleted_jobs: set[str] = set()
        self.deleted_executions: set[tuple[str, str, int]] = set()
        self.history: list[HistoryEntry] = []
        self.lifecycle: list[ServiceEvent] = []
        self.records: dict[tuple[str, str], Any] = {}
        """Other persisted records: (kind, key) -> JSON, None to delete (groups, templates...)."""
        self.package_writes: list[tuple[str, list[str]]] = []
        """(thing, destinationPackageVersions) of executions that SUCCEEDED: `$package`
        updates."""


def snapshot(execution: Execution) -> Execution:
    # status_details is always replaced, never mutated in place, so a shallow copy is a
    # consistent snapshot. (`Execution.__copy__` directly: `copy.copy`'s dispatch is four
    # more calls.)
    return execution.__copy__()


class ServiceCore:
    def __init__(
        self,
        clock: Clock | None = None,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        throttle_rate: float = 0.0,
        internal_error_rate: float = 0.0,
        seed: int | None = None,
        store: StateStore | None = None,
        readings: Readings = DOCUMENTED,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.region = region
        self.account_id = account_id
        self.readings = readings
        self._lock = threading.RLock()
        self._emit_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.throttle_rate = throttle_rate
        self.internal_error_rate = internal_error_rate
        self._forced_faults: list[list[Any]] = []
        """[operation or None, code, requests still let through] in the order queued."""
        self.counters: Counter[str] = Counter()
        self._things: dict[str, Thing] = {}
        self._jobs: dict[str, Job] = {}
        self._job_counts: dict[str, Counter[ExecutionStatus]] = {}
        self._executions: dict[tuple[str, str], list[Execution]] = {}
        self._thing_jobs: dict[str, dict[str, None]] = {}
        self._queues: dict[Key, Queue] = {}
        self._timers: list[tuple[float, str, str, int, int]] = []
        self._job_timers: list[tuple[float, int, str]] = []
        self._timer_seq = itertools.count()
        self._seq: Iterator[int] = itertools.count(1)
        self._history: list[HistoryEntry] = []
        self._listeners: list[EventListener] = []
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._pending_events: list[ServiceEvent] = []
        self.groups = GroupRegistry()
        self._templates: dict[str, JobTemplate] = {}
        self._event_config: dict[str, bool] = {ev.JOB: False, ev.JOB_EXECUTION: False}
        self.s3 = ObjectStore()
        """S3 objects the account reads (documentSource, stream files): s3.py."""
        self._store = store
        self.shadows = ShadowService(self.clock, store=store, counters=self.counters)
        """The Device Shadow service of the same account (the Jobs service writes `$package`)."""
        self.packages = PackageCatalog(
            self.clock, region=region, account_id=account_id, store=store
        )
        """The Software Package Catalog of the same account."""
        self.streams = StreamService(
            self.clock,
            self.s3,
            region=region,
            account_id=account_id,
            store=store,
            counters=self.counters,
        )
        """MQTT-based file delivery's streams."""
        self._package_writes: list[tuple[str, list[str]]] = []

    # -- configuration --------------------------------------------------------------------------
    @staticmethod
    def _rate(value: float, name: str) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
        return value

    @property
    def throttle_rate(self) -> float:
        return self._throttle_rate

    @throttle_rate.setter
    def throttle_rate(self, value: float) -> None:
        self._throttle_rate = self._rate(value, "throttle_rate")

    @property
    def internal_error_rate(self) -> float:
        return self._internal_error_rate

    @internal_error_rate.setter
    def internal_error_rate(self, value: float) -> None:
        self._internal_error_rate = self._rate(value, "internal_error_rate")

    def fail_next(
        self,
        operation: str | None = None,
        code: ErrorCode = ErrorCode.INTERNAL_ERROR,
        *,
        after: int = 0,
    ) -> None:
        """Answer the next device request (of `operation`, or any) with `code`, once `after`
        such requests went through: how a test provokes InternalError (or RequestThrottled)
        exactly where it wants it, also past a first request the device must see answered."""
        with self._lock:
            self._forced_faults.append([operation, code, after])

    def lose_next(self, operation: str | None = None, *, after: int = 0) -> None:
        """Lose the next device request (of `operation`, or any) once `after` such requests
        went through: over MQTT it gets no answer, as if lost with a link that came back (how
        a test makes a device's question time out exactly where it wants)."""
        with self._lock:
            self._forced_faults.append([operation, None, after])

    def clear_faults(self) -> None:
        """Drop the faults `fail_next` queued that no request has met yet."""
        with self._lock:
            self._forced_faults.clear()

    def add_listener(self, listener: EventListener) -> None:
        """Called (outside the lock, in the thread that made the change) with each batch."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def admit(self, operation: str) -> None:
        """Count one device request; refuse it if a fault is due (forced, throttled, internal).

        Called by the front ends at their edge (MQTT and HTTP data plane), before parsing, so
        every request a device makes is counted once, even the malformed ones.
        """
        with self._lock:
            self.counters[operation] += 1
            for index, fault in enumerate(self._forced_faults):
                wanted, code, after = fault
                if wanted is None or wanted == operation:
                    if after > 0:
                        fault[2] = after - 1
                        break
                    del self._forced_faults[index]
                    if code is None:
                        self.counters["lost"] += 1
                        raise RequestLost(operation)
                    self.counters[str(code)] += 1
                    raise ServiceError(code, f"{code} (injected)")
            if self._throttle_rate > 0 and self._rng.random() < self._throttle_rate:
                self.counters["throttled"] += 1
                raise ServiceError(ErrorCode.REQUEST_THROTTLED, "Request throttled")
            if self._internal_error_rate > 0 and self._rng.random() < self._internal_error_rate:
                self.counters[str(ErrorCode.INTERNAL_ERROR)] += 1
                raise ServiceError(ErrorCode.INTERNAL_ERROR, "Internal error")

    def count(self, name: str) -> None:
        """Bump a counter that is not a device operation (e.g. `InvalidTopic`)."""
        with self._lock:
            self.counters[name] += 1

    # -- helpers --------------------------------------------------------------------------------
    def thing_arn(self, thing_name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:thing/{thing_name}"

    def job_arn(self, job_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:job/{job_id}"

    def group_arn(self, group: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:thinggroup/{group}"

    def template_arn(self, template_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:jobtemplate/{template_id}"

    def now(self) -> float:
        return self.clock.now()

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ControlError("ResourceNotFoundException", f"Job {job_id} not found")
        return job

    def _counts_json(self, job_id: str) -> dict[str, int]:
        counts = self._job_counts.get(job_id, NO_COUNTS)
        return {
            "numberOf" + "".join(w.title() for w in status.value.split("_")) + "Things": counts[
                status
            ]
            for status in ExecutionStatus
        }

    def _finish(self, txn: Txn) -> None:
        """End of a mutating operation (lock held): persist, build events, wake waiters."""
        now = self.clock.now()
        events: list[ServiceEvent] = []
        for key in txn.notify:
            queue = self._queues.get(key)
            in_progress, queued = ([], []) if queue is None else queue.pending()
            events.append(
                ev.JobExecutionsChanged(
                    thing_name=key[0],
                    namespace=key[1],
                    in_progress=summaries(in_progress),
                    queued=summaries(queued),
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
                ev.NextJobExecutionChanged(
                    thing_name=key[0],
                    namespace=key[1],
                    execution=None if head is None else self._deliver(head, now),
                    timestamp=now,
                )
            )
        events.extend(txn.lifecycle)
        self._history.extend(txn.history)
        self._package_writes.extend(txn.package_writes)
        if self._store is not None and (
            txn.executions
            or txn.jobs
            or txn.things
            or txn.history
            or txn.deleted_jobs
            or txn.deleted_executions
            or txn.records
        ):
            self._store.save(
                things=list(txn.things.values()),
                jobs=list(txn.jobs.values()),
                executions=list(txn.executions.values()),
                history=txn.history,
                deleted_jobs=txn.deleted_jobs,
                deleted_executions=txn.deleted_executions,
                records=txn.records,
            )
        self._pending_events.extend(events)

    def _emit(self) -> None:
        """Hand the collected events to listeners and wake `wait_for` (lock NOT held)."""
        with self._emit_lock:
            # The emit lock keeps batches in the order they were made when two threads (the
            # loop and an HTTP worker) change state at once; listeners must not block.
            with self._lock:
                events, self._pending_events = self._pending_events, []
                writes, self._package_writes = self._package_writes, []
                waiters = list(self._waiters)
            if events:
                for listener in list(self._listeners):
                    listener(events)
            for thing, arns in writes:
                self._write_package_shadow(thing, arns)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def _write_package_shadow(self, thing: str, arns: list[str]) -> None:
        """After an execution of a job with destinationPackageVersions SUCCEEDED: the
        `$package` update the Jobs service makes when the package configuration asks for it
        (packages.py). Made after the execution's own events are handed out, outside the Jobs
        lock, as another service's call would be; over MQTT its shadow messages therefore come
        after `notify`/`notify-next` and before the device's UpdateJobExecution reply."""
        try:
            report = self.packages.shadow_report(destinations_of(arns))
            if report is not None:
                self.shadows.update(thing, PACKAGE_SHADOW, report)
        except (ControlError, ShadowError) as exc:
            self.count("PackageShadowUpdateFailed")
            log.warning("emulator_package_shadow_update_failed", thing=thing, error=str(exc))

    def _deliver(self, execution: Execution, now: float) -> Delivery:
        job = self._jobs[execution.job_id]
        if job.has_presigned_urls:
            text = resign_document(job.document_text, now, job.presigned_expires_in_sec)
            document: dict[str, Any] = json.loads(text)
        else:
            text, document = job.document_text, job.document
        return Delivery(
            execution=snapshot(execution),
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

    def _ensure_thing(self, name: str, txn: Txn) -> Thing:
        thing = self._things.get(name)
        if thing is None:
            thing = Thing(name=name, created_at=self.clock.now())
            self._things[name] = thing
            txn.things[name] = thing
        return thing

    def _queue(self, key: Key) -> Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = Queue()
        return queue

    def _current(self, job_id: str, thing_name: str) -> Execution | None:
        chain = self._executions.get((job_id, thing_name))
        return chain[-1] if chain else None

    def _record(
        self, txn: Txn, execution: Execution, from_status: ExecutionStatus | None, source: Source
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
                    deadline + self.readings.timeout_delay_seconds,
                    execution.job_id,
                    execution.thing_name,
                    execution.execution_number,
                    execution.version_number,
                ),
            )

    def _arm_job_timer(self, when: float, job_id: str) -> None:
        heapq.heappush(self._job_timers, (when, next(self._timer_seq), job_id))

    def _is_scheduled(self, job: Job) -> bool:
        return job.scheduling is not None

    def _set_status(
        self,
        txn: Txn,
        execution: Execution,
        status: ExecutionStatus,
        source: Source,
        details: dict[str, str] | None = None,
    ) -> None:
        """Every status change goes through here: indexes, counts, events, history, retries."""
        now = self.clock.now()
        old = execution.status
        key: Key = (execution.thing_name, execution.namespace)
        queue = self._queue(key)
        job = self._jobs[execution.job_id]
        counts = self._job_counts[execution.job_id]
        counts[old] -= 1
        counts[status] += 1
        execution.status = status
        execution.version_number += 1
        execution.last_updated_at = now
        if details is not None:
            if self.readings.merge_status_details:
                execution.status_details = {**execution.status_details, **details}
            else:
                execution.status_details = dict(details)
        if status is IN_PROGRESS and old is QUEUED:
            execution.started_at = now
            if job.in_progress_timeout_minutes:
                execution.in_progress_deadline = now + job.in_progress_timeout_minutes * 60
            queue.start(execution)
        elif status in TERMINAL:
            if status is SUCCEEDED and job.destination_package_versions:
                txn.package_writes.append(
                    (execution.thing_name, list(job.destination_package_versions))
                )
            execution.step_deadline = None
            execution.in_progress_deadline = None
            queue.discard(execution, self._is_scheduled(job))
        started = old is QUEUED and status is IN_PROGRESS
        if status != old and (self.readings.notify_on_start or not started):
            txn.notify.add(key)
        txn.heads.add(key)
        self._record(txn, execution, old, source)
        if status in TERMINAL:
            if self._event_config[ev.JOB_EXECUTION]:
                txn.lifecycle.append(
                    ev.execution_event(
                        execution, status.value.lower(), now, self.thing_arn(execution.thing_name)
                    )
                )
            self._maybe_retry(txn, execution)
            self._maybe_abort(txn, job)
            self._maybe_complete(txn, execution.job_id)

    def _queue_execution(
        self, txn: Txn, job: Job, thing_name: str, number: int, retry_attempt: int
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
            seq=next(self._seq),
        )
        self._executions.setdefault((job.job_id, thing_name), []).append(execution)
        self._thing_jobs.setdefault(thing_name, {})[job.job_id] = None
        self._job_counts[job.job_id][ExecutionStatus.QUEUED] += 1
        key: Key = (thing_name, job.namespace)
        self._queue(key).add_queued(execution, self._is_scheduled(job))
        txn.notify.add(key)
        txn.heads.add(key)
        self._record(txn, execution, None, Source.CONTROL)
        return execution

    def _maybe_retry(self, txn: Txn, execution: Execution) -> None:
        """Re-queue a FAILED/TIMED_OUT execution as a new executionNumber if the job allows it.

        Retries are counted per failure type: a criterion for the type itself wins over `ALL`,
        and `ALL` counts both kinds of failure. A TIMED_OUT execution is retried only when the
        job has a timeout configuration ("To retry execution because of a timeout failure, you
        must enable the timeout configuration", How job configurations work).
        """
        status = execution.status
        if status not in _RETRYABLE:
            return
        job = self._jobs[execution.job_id]
        if job.status is not JobStatus.IN_PROGRESS or not job.retry_criteria:
            return
        if status is ExecutionStatus.TIMED_OUT and job.in_progress_timeout_minutes is None:
            return
        by_type = {c.failure_type: c.number_of_retries for c in job.retry_criteria}
        chain = self._executions[(execution.job_id, execution.thing_name)]
        # A CONTINUOUS job's count starts again when the thing re-joins (REMOVED resets it).
        start = max(
            (i for i, e in enumerate(chain) if e.status is ExecutionStatus.REMOVED), default=-1
        )
        recent = chain[start + 1 :]
        failed = sum(1 for e in recent if e.status is ExecutionStatus.FAILED)
        timed_out = sum(1 for e in recent if e.status is ExecutionStatus.TIMED_OUT)
        if status.value in by_type:
            used = failed if status is ExecutionStatus.FAILED else timed_out
            allowed = by_type[status.value]
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

    def _maybe_complete(self, txn: Txn, job_id: str) -> None:
        job = self._jobs[job_id]
        if job.status is not JOB_IN_PROGRESS or job.target_selection == "CONTINUOUS":
            return
        if job.pending_targets:
            return
        counts = self._job_counts.get(job_id, NO_COUNTS)
        if counts[QUEUED] > 0 or counts[IN_PROGRESS] > 0:
            return
        now = self.clock.now()
        job.status = JOB_COMPLETED
        job.completed_at = now
        job.last_updated_at = now
        txn.jobs[job_id] = job
        if self._event_config[ev.JOB]:
            txn.lifecycle.append(ev.job_event(job, "completed", now, self._counts_json(job_id)))

    def _maybe_abort(self, txn: Txn, job: Job) -> None:
        if job.abort is None or job.status is not JobStatus.IN_PROGRESS:
            return
        criterion = abort_criterion_met(
            job.abort, job.notified, self._job_counts.get(job.job_id, NO_COUNTS)
        )
        if criterion is not None:
            reason, comment = abort_reason(criterion)
            self._cancel(txn, job, force=False, reason_code=reason, comment=comment)

    def _cancel(
        self, txn: Txn, job: Job, *, force: bool, reason_code: str | None, comment: str | None
    ) -> None:
        """CancelJob's effect: job CANCELED, QUEUED executions (and IN_PROGRESS ones with
        `force`) CANCELED, no further rollout."""
        now = self.clock.now()
        job.status = JobStatus.CANCELED
        job.force_canceled = job.force_canceled or force
        job.reason_code = reason_code or job.reason_code
        job.comment = comment or job.comment
        job.last_updated_at = now
        job.completed_at = now
        job.pending_targets = []
        txn.jobs[job.job_id] = job
        if self._event_config[ev.JOB]:
            txn.lifecycle.append(ev.job_event(job, "cancellation_in_progress", now))
        for name in job.thing_names:
            execution = self._current(job.job_id, name)
            if execution is None:
                continue
            if execution.status is ExecutionStatus.QUEUED or (
                force and execution.status is ExecutionStatus.IN_PROGRESS
            ):
                execution.force_canceled = execution.status is ExecutionStatus.IN_PROGRESS
                self._set_status(txn, execution, ExecutionStatus.CANCELED, Source.CONTROL)
        if self._event_config[ev.JOB]:
            txn.lifecycle.append(ev.job_event(job, "canceled", now))

    # -- rollout ----------------------------------------------------------------------------------
    def _begin_rollout(self, txn: Txn, job: Job, targets: list[str]) -> None:
        """Hand `targets` to the rollout: released now, or batch by batch by the job timer."""
        known = set(job.pending_targets)
        for name in targets:
            if name not in known:
                job.pending_targets.append(name)
                known.add(name)
        if job.status is JobStatus.IN_PROGRESS:
            self._release(txn, job, self.clock.now())

    def _release(self, txn: Txn, job: Job, now: float) -> None:
        """Create the executions the rollout allows at `now` and arm the next batch."""
        if not job.pending_targets or job.status is not JobStatus.IN_PROGRESS:
            return
        if job.next_release_at is not None and now < job.next_release_at:
            return
        scheduling = job.scheduling
        if scheduling is not None and not scheduling.window_open(now):
            opens = scheduling.next_window_start(now)
            if opens is not None:
                job.next_release_at = opens
                self._arm_job_timer(opens, job.job_id)
            return
        limit: int | None = None
        if job.rollout is not None:
            succeeded = self._job_counts.get(job.job_id, NO_COUNTS)[ExecutionStatus.SUCCEEDED]
            limit = rate_per_minute(job.rollout, job.notified, succeeded)
        batch = job.pending_targets[:limit]
        del job.pending_targets[: len(batch)]
        for name in batch:
            self._roll_out_to(txn, job, name)
        job.next_release_at = now + BATCH_SECONDS if job.pending_targets else None
        if job.next_release_at is not None:
            self._arm_job_timer(job.next_release_at, job.job_id)
        txn.jobs[job.job_id] = job
        self._maybe_complete(txn, job.job_id)

    def _roll_out_to(self, txn: Txn, job: Job, name: str) -> None:
        self._ensure_thing(name, txn)
        chain = self._executions.get((job.job_id, name))
        if chain and chain[-1].status not in TERMINAL:
            return  # already pending (a CONTINUOUS job's thing joined a second target group)
        number = chain[-1].execution_number + 1 if chain else 1
        if not chain:
            job.thing_names.append(name)
        self._queue_execution(txn, job, name, number, 0)
        job.notified += 1

    def _job_timer_due(self, txn: Txn, job: Job, now: float) -> None:
        """A scheduled start, a scheduled end or a rollout batch is due for `job`."""
        scheduling = job.scheduling
        start = None if scheduling is None else scheduling.start_time
        if job.status is JobStatus.SCHEDULED and start is not None and now >= start:
            job.status = JobStatus.IN_PROGRESS
            job.last_updated_at = now
            txn.jobs[job.job_id] = job
        if (
            scheduling is not None
            and scheduling.end_time is not None
            and now >= scheduling.end_time
            and job.status is JobStatus.IN_PROGRESS
        ):
            behavior = scheduling.end_behavior or "STOP_ROLLOUT"
            if behavior == "STOP_ROLLOUT":
                job.pending_targets = []
                job.last_updated_at = now
                txn.jobs[job.job_id] = job
                self._maybe_complete(txn, job.job_id)
            else:
                self._cancel(
                    txn,
                    job,
                    force=behavior == "FORCE_CANCEL",
                    reason_code=None,
                    comment=f"schedulingConfig endTime reached ({behavior})",
                )
            return
        self._release(txn, job, now)

    # -- timers -----------------------------------------------------------------------------------
    def tick(self) -> int:
        """Run every due timer: execution timeouts (returns how many timed out), scheduled
        starts and ends, rollout batches."""
        with self._lock:
            now = self.clock.now()
            txn = Txn()
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
                if deadline is None or deadline + self.readings.timeout_delay_seconds > now:
                    continue
                self._set_status(txn, execution, ExecutionStatus.TIMED_OUT, Source.TIMER)
                count += 1
            while self._job_timers and self._job_timers[0][0] <= now:
                _, _, job_id = heapq.heappop(self._job_timers)
                job = self._jobs.get(job_id)
                if job is not None:
                    if job.next_release_at is not None and job.next_release_at <= now:
                        job.next_release_at = None
                    self._job_timer_due(txn, job, now)
            self._finish(txn)
        self._emit()
        return count

    def next_deadline(self) -> float | None:
        """When `tick()` next has something to do (a hint; stale entries are skipped)."""
        with self._lock:
            due = [heap[0][0] for heap in (self._timers, self._job_timers) if heap]
            return min(due) if due else None

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
                    found.append(snapshot(execution))
                    return True
            return False

        await self.wait_for(reached, timeout)
        return found[-1]
