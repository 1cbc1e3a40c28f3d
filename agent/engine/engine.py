"""The execution engine: take the next job, run it, report it exactly once, repeat.

One job runs at a time. Work is looked for on start, after every resync (reconnect) and on every
`notify`/`notify-next` event; events that arrive while a job runs only set a flag that is acted
on when it ends. Executions are identified by (namespace, jobId, executionNumber), never by their
document (AWS re-signs presigned URLs on every delivery).

Every transition is written to the store before its side effect (see `agent.engine.store`), so
that a restart at any point continues correctly: a decided outcome is re-sent, a resumable
handler continues from its checkpoint, and a non-resumable step is never run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobs_agent.aio import wait_event
from jobs_agent.config import AgentConfig
from jobs_agent.dispatch.containment import ContainmentError, containment_for, group_name
from jobs_agent.dispatch.devicec import confirm_reboot_checkpoint, interrupted_reboot_step
from jobs_agent.dispatch.output import log_path, output_logs_over_limits, prune_output_logs
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.context import EngineJobContext
from jobs_agent.engine.crashpoints import CrashPoints
from jobs_agent.engine.orphans import kill_handler_processes
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.engine.store import (
    ExecutionKey,
    ExecutionRecord,
    ExecutionState,
    StoreError,
    StoreLost,
)
from jobs_agent.jobs.client import (
    JobExecutionsChanged,
    JobsClient,
    NextJobExecutionChanged,
    Resync,
)
from jobs_agent.jobs.errors import CLOUD_ENDED_CODES, ErrorCode, JobsError, JobsRejected
from jobs_agent.jobs.models import TERMINAL_STATUSES, JobExecution
from jobs_agent.jobs.status_details import sanitize_status_details
from jobs_agent.redact import redact_mapping
from jobs_agent.transport import TransportError
from jobs_agent_handlers.api import Handler, JobRejected, Outcome

log = structlog.get_logger("jobs_agent.engine")

OUTCOMES_KEPT = 256
PRUNE_EVERY = 200
"""Finished executions are pruned from the database every this many outcomes (500 are kept)."""
LOOP_TICK_SECONDS = 30.0
"""The main loop wakes at least this often to prove to the watchdog that it is alive."""
REBOOT_GRACE_SECONDS = 900.0
"""How long the agent waits for a successful reboot command to actually reboot the device."""
LOST_RECORD_REASON = (
    "the device lost its record of this execution (its state database was deleted or replaced,"
    " or the agent stopped between taking the job and recording it): not run again, so that no"
    " step runs twice"
)


class Dispatcher(Protocol):
    """What the engine needs from `agent.dispatch` (structural, so tests can pass their own)."""

    def resolve(
        self,
        document: Mapping[str, Any],
        *,
        job_id: str | None = None,
        taken_at: float | None = None,
    ) -> Handler: ...

    async def run(self, handler: Handler, ctx: EngineJobContext) -> Outcome: ...


@dataclass
class EngineStatus:
    """A snapshot for `STATUS=` (sd_notify) and logs."""

    state: str = "starting"
    job: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    jobs_done: int = 0

    def describe(self) -> str:
        if self.job is None:
            return f"{self.state}; {self.jobs_done} jobs done"
        percent = self.progress.get("percent")
        message = self.progress.get("message")
        parts = [f"running {self.job}"]
        if percent is not None:
            parts.append(f"{percent}%")
        if message:
            parts.append(str(message)[:80])
        return " ".join(parts)


class _CloudEnded(Exception):
    """The service ended the execution we are working on; stop and report nothing."""


@dataclass
class _Running:
    key: ExecutionKey
    ctx: EngineJobContext
    cloud_ended: asyncio.Event
    reason: str = ""


class Engine:
    def __init__(
        self,
        config: AgentConfig,
        client: JobsClient,
        store: AsyncStore,
        dispatcher: Dispatcher,
        *,
        heartbeat_interval: float | None = None,
        boot_id_path: Path | None = None,
        on_status: Callable[[EngineStatus], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.store = store
        self.dispatcher = dispatcher
        self._heartbeat_interval = heartbeat_interval
        self._boot_id_path_override = boot_id_path
        self._on_status = on_status
        self._crash = CrashPoints(config.state_dir)
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_now = asyncio.Event()
        self._running: _Running | None = None
        self._awaiting_reboot = False
        self._reconciled = False
        self._reported = 0
        self._undecided: dict[ExecutionKey, Outcome] = {}
        self._outbox_dirty = True
        """False only while this process knows the outbox is empty (saves a read per loop)."""
        self._store_broken = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._prune_soon = False
        self._last_acquire = 0.0
        self.status = EngineStatus()
        self.outcomes: OrderedDict[ExecutionKey, str] = OrderedDict()
        """What this process reported (or noted) for its most recent executions."""
        self.loop_heartbeat = time.monotonic()
        """Refreshed by the main loop; the systemd watchdog checks it is recent."""

    # -- public control -----------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def request_stop(self, *, immediate: bool = False) -> None:
        """Stop taking jobs; with `immediate`, also abandon the running handler now."""
        self._stopping = True
        self._wake.set()
        if immediate:
            self._stop_now.set()

    @property
    def running_job(self) -> ExecutionKey | None:
        return self._running.key if self._running else None

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a side task, keeping a reference so it is not garbage-collected mid-flight."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note_outcome(self, key: ExecutionKey, note: str) -> None:
        self.outcomes[key] = note
        self.outcomes.move_to_end(key)
        while len(self.outcomes) > OUTCOMES_KEPT:
            self.outcomes.popitem(last=False)
        self._reported += 1
        if self._reported % PRUNE_EVERY == 0:
            self._prune_soon = True

    def _set_status(self, state: str, job: str | None = None, **progress: Any) -> None:
        self.status.state = state
        self.status.job = job
        self.status.progress = dict(progress)
        if self._on_status is not None:
            self._on_status(self.status)

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        swept = await asyncio.to_thread(self._sweep_all)
        if swept:
            log.warning(
                "stopped the handler an earlier agent left running",
                processes=swept,
                where="its job groups, at start",
            )
        events = asyncio.create_task(self._consume_events(), name="engine-events")
        self._wake.set()
        backoff = 0.5
        try:
            while not self._stopping:
                self.loop_heartbeat = time.monotonic()
                await self._wait_for_wake()
                if self._stopping:
                    break
                self._wake.clear()
                try:
                    if self._prune_soon:
                        self._prune_soon = False
                        await self.store.prune()
                    await self._decide_undecided()
                    if not await self._flush_outbox():
                        await self._retry_later(backoff)
                        backoff = min(backoff * 2, 60.0)
                        continue
                    if not self._reconciled:
                        await self._reconcile()
                        self._reconciled = True
                    if self._awaiting_reboot:
                        continue
                    if self._store_broken:
                        await self.store.probe()  # take no job the database cannot record
                        self._store_broken = False
                        log.info("state database writable again")
                    found = await self._acquire_and_run()
                    backoff = 0.5
                    if found:
                        self._wake.set()  # there may be more
                except (JobsError, TransportError) as exc:
                    log.warning("jobs service not reachable, will retry", error=str(exc))
                    await self._retry_later(backoff)
                    backoff = min(backoff * 2, 60.0)
                except StoreError as exc:
                    self._store_broken = True
                    if isinstance(exc, StoreLost):
                        self._set_status("not taking jobs: the state database was lost")
                    log.error(
                        "state database error; no job is taken until it works", error=str(exc)
                    )
                    await self._retry_later(backoff)
                    backoff = min(backoff * 2, 60.0)
                except Exception:
                    # A bug must not turn into a crash loop that strands the outbox: log it
                    # with its traceback and carry on after a pause.
                    log.exception("unexpected error in the engine; continuing after a pause")
                    await self._retry_later(backoff)
                    backoff = min(backoff * 2, 60.0)
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            self._set_status("stopped")

    async def _wait_for_wake(self) -> None:
        """Wait for an event; idle, look for work every `jobs.idle_poll_seconds` anyway (a
        safety net against a lost notification; 0 = never: keep-alives only)."""
        while not await wait_event(self._wake, LOOP_TICK_SECONDS):
            self.loop_heartbeat = time.monotonic()
            poll = self.config.jobs.idle_poll_seconds
            if poll and time.monotonic() - self._last_acquire >= poll:
                self._wake.set()
                return

    async def _retry_later(self, delay: float) -> None:
        self._wake.clear()
        await wait_event(self._wake, delay)
        self._wake.set()

    # -- events -------------------------------------------------------------------------------
    async def _consume_events(self) -> None:
        async for event in self.client.events():
            if isinstance(event, Resync):
                log.info("resync after reconnect", session_present=event.session_present)
                self._wake.set()
            elif isinstance(event, NextJobExecutionChanged):
                self._wake.set()
            elif isinstance(event, JobExecutionsChanged):
                self._wake.set()
                self._check_still_listed(event)

    def _check_still_listed(self, event: JobExecutionsChanged) -> None:
        running = self._running
        if running is None or (running.key.namespace or None) != event.namespace:
            return
        if not event.lists(running.key.job_id, running.key.execution_number):
            # Delivery order is not guaranteed: confirm with the service before stopping.
            self._background(self._confirm_cloud_ended(running))

    async def _confirm_cloud_ended(self, running: _Running) -> None:
        key = running.key
        try:
            execution = await self.client.describe(
                key.job_id,
                namespace=key.namespace or None,
                execution_number=key.execution_number,
                include_job_document=False,
            )
        except JobsRejected as exc:
            # Describing an ended execution answers TerminalStateReached (or ResourceNotFound
            # once it is deleted): either way the cloud is done with it.
            if exc.code in CLOUD_ENDED_CODES:
                self._cloud_ended(running, f"the service ended the execution ({exc.code})")
            return
        except (JobsError, TransportError):
            return
        if execution is not None and str(execution.status) in TERMINAL_STATUSES:
            self._cloud_ended(running, f"the service ended the execution as {execution.status}")

    def _cloud_ended(self, running: _Running, reason: str) -> None:
        if self._running is running and not running.cloud_ended.is_set():
            running.reason = reason
            running.cloud_ended.set()

    # -- outbox -------------------------------------------------------------------------------
    async def _flush_outbox(self) -> bool:
        """Send queued outcomes in order; False if one could not be delivered yet."""
        if not self._outbox_dirty:
            return True  # emptied by this process and nothing decided since
        for entry in await self.store.outbox():
            key = entry.key
            try:
                await self.client.update(
                    key.job_id,
                    entry.status,
                    status_details=entry.status_details,
                    execution_number=key.execution_number,
                    namespace=key.namespace or None,
                )
            except JobsRejected as exc:
                note = await self._explain_refused_report(key, entry.status, exc)
                if note is None:
                    await self.store.outbox_attempt_failed(entry.id, f"{exc.code}: {exc.message}")
                    return False
                await self.store.reported(entry.id, key, note=note)
                self._note_outcome(key, note)
                continue
            except (JobsError, TransportError) as exc:
                await self.store.outbox_attempt_failed(entry.id, str(exc))
                return False
            self._crash.reached("report_accepted")
            await self.store.reported(entry.id, key)
            self._note_outcome(key, entry.status)
            self.status.jobs_done += 1
            log.info(
                "outcome reported",
                job_id=key.job_id,
                execution_number=key.execution_number,
                namespace=key.namespace or None,
                status=entry.status,
            )
            await self._cleanup_dirs(key)
        self._outbox_dirty = False
        return True

    async def _explain_refused_report(
        self, key: ExecutionKey, status: str, exc: JobsRejected
    ) -> str | None:
        """Decide what a refused outcome means; None: keep it queued and try later."""
        bound = log.bind(job_id=key.job_id, execution_number=key.execution_number)
        if exc.code in CLOUD_ENDED_CODES:
            current = exc.execution_state.status if exc.execution_state else None
            if current is None:
                with contextlib.suppress(JobsError, TransportError):
                    described = await self.client.describe(
                        key.job_id,
                        namespace=key.namespace or None,
                        execution_number=key.execution_number,
                        include_job_document=False,
                    )
                    current = described.status if described else None
            if current is not None and str(current) == status:
                bound.info("outcome was already delivered (repeat refused as terminal)")
                return status
            note = f"not reported: service answered {exc.code} (execution is {current or 'gone'})"
            bound.warning("outcome refused by the service", code=str(exc.code), current=current)
            return note
        if exc.code == ErrorCode.INVALID_REQUEST:
            bound.error("outcome refused as invalid; sending a minimal report", message=exc.message)
            try:
                await self.client.update(
                    key.job_id,
                    status,
                    status_details={"reason": "the full report was refused by the service"},
                    execution_number=key.execution_number,
                    namespace=key.namespace or None,
                )
            except JobsRejected as second:
                bound.error("minimal report refused too; giving up", code=str(second.code))
                return f"not reported: {second.code}: {second.message}"
            return status
        bound.warning("outcome not accepted yet", code=str(exc.code), message=exc.message)
        return None

    # -- acquiring work -----------------------------------------------------------------------
    async def _reconcile(self) -> None:
        """Close local records of executions the service ended while the agent was away."""
        for record in await self.store.active():
            key = record.key
            try:
                execution = await self.client.describe(
                    key.job_id,
                    namespace=key.namespace or None,
                    execution_number=key.execution_number,
                    include_job_document=False,
                )
            except JobsRejected as exc:
                if exc.code in CLOUD_ENDED_CODES:
                    await self._stop_leftover_handlers(key, log.bind(job_id=key.job_id))
                    await self.store.cancelled(
                        key, f"service ended the execution while away ({exc.code})"
                    )
                    self._note_outcome(key, f"ended by the service ({exc.code})")
                continue
            if execution is not None and str(execution.status) in TERMINAL_STATUSES:
                await self._stop_leftover_handlers(key, log.bind(job_id=key.job_id))
                await self.store.cancelled(
                    key, f"service ended the execution as {execution.status} while away"
                )
                self._note_outcome(key, f"ended by the service ({execution.status})")
        pending = await self.client.get_pending()
        unknown = [
            (ExecutionKey("", s.job_id, s.execution_number or 0), s.version_number)
            for s in pending.in_progress
        ]
        unknown = [(key, version) for key, version in unknown if await self.store.get(key) is None]
        if len(unknown) == 1 and await self.store.was_taking():
            # The agent stopped between the service starting it and the record: never run.
            key = unknown[0][0]
            log.info("an execution taken just before the agent stopped runs now", job_id=key.job_id)
            return
        for key, version in unknown:
            await self._fail_lost(key, version)

    async def _fail_lost(self, key: ExecutionKey, version_number: int | None) -> None:
        """The service says this device is running an execution the device has no record of:
        whatever it is, it must not run again. Stop what may be left of it, report FAILED."""
        bound = log.bind(
            job_id=key.job_id,
            execution_number=key.execution_number,
            namespace=key.namespace or None,
        )
        bound.error("the service has an execution in progress that this device has no record of")
        await self._stop_leftover_handlers(key, bound)
        await self.store.record_received(key, {}, version_number, ExecutionState.STARTED)
        await self._decide(key, Outcome.failed(LOST_RECORD_REASON), bound)

    async def _acquire_and_run(self) -> bool:
        if self._stopping:
            return False
        await self.store.verify()  # never take a job the database could not keep track of
        self._last_acquire = time.monotonic()
        step_timeout = self.config.jobs.step_timeout_minutes
        await self.store.mark_taking()
        execution = await self.client.start_next(step_timeout=step_timeout)
        if execution is not None:
            self._crash.reached("taken")
            await self._process(execution, namespace="")
            return True
        await self.store.taken()
        for namespace in self.config.jobs.namespaces:
            if self._stopping:
                return False
            execution = await self._take_next_in_namespace(namespace)
            if execution is not None:
                await self._process(execution, namespace=namespace)
                return True
        self._set_status("idle")
        return False

    async def _take_next_in_namespace(self, namespace: str) -> JobExecution | None:
        """Describe `$next` and move it to IN_PROGRESS (the reference's namespaced flow)."""
        try:
            execution = await self.client.describe("$next", namespace=namespace)
        except JobsRejected as exc:
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND:
                return None  # some readings of the API answer "nothing next" this way
            raise
        if execution is None:
            return None
        if str(execution.status) != "QUEUED":
            return execution
        key = ExecutionKey(namespace, execution.job_id, execution.execution_number or 0)
        if await self.store.get(key) is None:
            await self.store.record_received(
                key, execution.job_document or {}, execution.version_number
            )
        version = execution.version_number
        for attempt in range(2):
            try:
                reply = await self.client.update(
                    execution.job_id,
                    "IN_PROGRESS",
                    expected_version=version,
                    step_timeout=self.config.jobs.step_timeout_minutes,
                    execution_number=execution.execution_number,
                    include_job_execution_state=True,
                    namespace=namespace,
                )
            except JobsRejected as exc:
                if exc.code == ErrorCode.VERSION_MISMATCH and exc.execution_state and attempt == 0:
                    if str(exc.execution_state.status) != "QUEUED":
                        return None  # someone else moved it; look again on the next wake
                    version = exc.execution_state.version_number
                    continue
                if exc.code in CLOUD_ENDED_CODES:
                    await self.store.cancelled(key, f"not started: {exc.code}")
                    return None
                raise
            state = reply.execution_state
            new_version = state.version_number if state else None
            await self.store.transition(key, ExecutionState.STARTED, version_number=new_version)
            return execution
        return None

    # -- running one execution ----------------------------------------------------------------
    async def _process(self, execution: JobExecution, namespace: str) -> None:
        key = ExecutionKey(namespace, execution.job_id, execution.execution_number or 0)
        bound = log.bind(
            job_id=key.job_id, execution_number=key.execution_number, namespace=namespace or None
        )
        if key in self._undecided:
            return  # finished; its outcome is written as soon as the database works
        document = execution.job_document
        record = await self.store.get(key)
        if record is None and namespace and str(execution.status) == "IN_PROGRESS":
            # A namespaced execution is recorded before it is moved to IN_PROGRESS: one that
            # already is, without a record, was taken by a database this device has lost.
            await self._fail_lost(key, execution.version_number)
            return
        if record is None:
            record = await self.store.record_received(
                key, document or {}, execution.version_number, ExecutionState.STARTED
            )
            self._crash.reached("started")
            bound.info("job started")
        if not namespace:
            await self.store.taken()
        elif record.state == ExecutionState.RECEIVED:
            record = await self.store.transition(key, ExecutionState.STARTED)
        if self._stopping and record.state == ExecutionState.STARTED:
            bound.info("stopping: the job starts after the restart")
            return

        if record.state in (ExecutionState.DECIDED,):
            bound.info("outcome already decided; re-sending it")
            self._wake.set()
            return
        if record.state in (ExecutionState.REPORTED, ExecutionState.CANCELLED):
            await self._finish_stale(record, bound)
            return

        resumed = False
        rebooted = False
        if record.state == ExecutionState.AWAITING_REBOOT:
            current_boot = self._read_boot_id()
            if record.boot_id is not None and current_boot == record.boot_id:
                await self._decide(
                    key,
                    Outcome.failed(
                        "reboot was requested but the device did not reboot (boot id unchanged)"
                    ),
                    bound,
                )
                return
            bound.info("continuing after reboot")
            resumed = rebooted = True
        elif record.state == ExecutionState.RUNNING:
            await self._stop_leftover_handlers(key, bound)
            suspended = record.note == "suspended"
            restarts = record.restarts + (0 if suspended else 1)
            rerun = self._rerun_after_reboot(record)
            if rerun is not None:
                # The device went down while a step that reboots it the Device Client's way
                # ran: the boot id changed, so this is the re-delivery after the boot it wants.
                await self.store.save_checkpoint(key, confirm_reboot_checkpoint(rerun))
                await self.store.transition(key, ExecutionState.RUNNING, note="")
                record = await self.store.get(key) or record
                bound.info(
                    "the device rebooted during its reboot step; running it again to confirm"
                )
                resumed = rebooted = True
            elif not record.resumable:
                await self._decide(
                    key, Outcome.failed("agent restarted while the step was running"), bound
                )
                return
            elif restarts > self.config.jobs.max_agent_restarts_per_job:
                await self._decide(
                    key,
                    Outcome.failed(
                        f"agent restarted {restarts} times while running this job (boot-loop guard)"
                    ),
                    bound,
                )
                return
            else:
                await self.store.transition(key, ExecutionState.RUNNING, restarts=restarts, note="")
                resumed = True
                bound.info("resuming after an agent restart", restarts=restarts)

        if document is None:
            document = record.document
        if not isinstance(document, Mapping) or not document:
            await self._decide(key, Outcome.rejected("the execution has no job document"), bound)
            return
        try:
            handler = self.dispatcher.resolve(
                document, job_id=key.job_id, taken_at=record.received_at
            )
        except JobRejected as exc:
            await self._decide(
                key, Outcome("REJECTED", {"reason": exc.reason, **exc.details}), bound
            )
            return
        except Exception as exc:  # a broken plugin must not stop the agent
            bound.exception("handler resolution failed")
            await self._decide(key, Outcome.failed(f"cannot load the handler: {exc}"), bound)
            return

        if not resumed:
            record = await self.store.transition(
                key,
                ExecutionState.RUNNING,
                handler=handler.name,
                resumable=bool(getattr(handler, "resumable", False)),
            )
            self._crash.reached("running")
        else:
            record = await self.store.transition(key, ExecutionState.RUNNING)
        await self._run_handler(record, handler, document, resumed, rebooted, bound)

    def _rerun_after_reboot(self, record: ExecutionRecord) -> int | None:
        """The step to run again when `record` was in a Device Client reboot step and the boot
        id has changed since it started; None otherwise."""
        interrupted = interrupted_reboot_step(record.checkpoint)
        if interrupted is None:
            return None
        index, boot_id = interrupted
        current = self._read_boot_id()
        return index if current is not None and current != boot_id else None

    async def _finish_stale(self, record: ExecutionRecord, bound: Any) -> None:
        """The service offers an execution we already closed locally: settle it, never rerun."""
        self._outbox_dirty = True
        if record.state == ExecutionState.REPORTED and record.outcome_status:
            bound.warning("service still offers a reported execution; reporting it again")
            await self.store.decide(record.key, record.outcome_status, record.outcome_details or {})
        else:
            await self.store.decide(
                record.key,
                "FAILED",
                {"reason": "stopped on the device after the service ended it; not run again"},
            )
        self._wake.set()

    async def _stop_leftover_handlers(self, key: ExecutionKey, bound: Any) -> None:
        """A killed agent leaves its handler running (own session): stop it first, so that a
        step is neither reported while it still runs nor run twice at once. What is left in
        the execution's containment group goes (every process, whatever session or environment
        it has), then whatever still carries the execution's environment."""
        swept = await asyncio.to_thread(self._sweep_group, key)
        killed = await asyncio.to_thread(
            kill_handler_processes, self.config.thing_name, key.job_id, key.execution_number
        )
        if swept or killed:
            bound.warning(
                "stopped the handler an earlier agent left running",
                processes=swept,
                groups=killed,
            )

    def _sweep_all(self) -> int:
        try:
            containment = containment_for(self.config.jobs.containment, self.config.state_dir)
        except ContainmentError as exc:
            log.error("cannot sweep the job groups of an earlier agent", error=str(exc))
            return 0
        return containment.sweep_all()

    def _sweep_group(self, key: ExecutionKey) -> int:
        try:
            containment = containment_for(self.config.jobs.containment, self.config.state_dir)
        except ContainmentError as exc:
            log.error("cannot sweep the job's containment group", error=str(exc))
            return 0
        return containment.sweep(group_name(key.namespace, key.job_id, key.execution_number))

    def _job_dirs(self, key: ExecutionKey) -> tuple[Path, Path]:
        base = self.config.state_dir / "jobs" / (key.namespace or "default") / key.job_id
        return base / f"scratch-{key.execution_number}", base / "state"

    async def _cleanup_dirs(self, key: ExecutionKey) -> None:
        scratch, _state = self._job_dirs(key)
        base = scratch.parent
        if base.exists():
            await asyncio.to_thread(shutil.rmtree, base, True)
        await self._prune_output_logs()

    async def _prune_output_logs(self) -> None:
        """Keep the per-job output logs within `jobs.output_logs_max_*` (oldest go first)."""
        jobs = self.config.jobs
        logs_dir = self.config.state_dir / "logs"
        limits = {
            "max_count": jobs.output_logs_max_count,
            "max_total_bytes": jobs.output_logs_max_total_bytes,
        }
        try:
            if not await asyncio.to_thread(output_logs_over_limits, logs_dir, **limits):
                return  # the usual case: no database read, one directory listing
            active = [
                log_path(self.config.state_dir, r.key.job_id, r.key.execution_number)
                for r in await self.store.active()
            ]
            deleted = await asyncio.to_thread(prune_output_logs, logs_dir, keep=active, **limits)
        except OSError as exc:
            log.warning("cannot prune the output logs", path=str(logs_dir), error=str(exc))
            return
        if deleted:
            log.info("old output logs deleted", count=len(deleted), path=str(logs_dir))

    async def _run_handler(
        self,
        record: ExecutionRecord,
        handler: Handler,
        document: Mapping[str, Any],
        resumed: bool,
        rebooted: bool,
        bound: Any,
    ) -> None:
        key = record.key
        scratch, state_dir = self._job_dirs(key)
        scratch.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        cloud_ended = asyncio.Event()
        running_ref: list[_Running] = []

        async def send(details: Mapping[str, Any] | None, step_timeout: int | None) -> bool:
            return await self._send_progress(running_ref[0], details, step_timeout)

        reporter = ProgressReporter(
            send,
            interval=self.config.jobs.progress_interval_seconds,
            step_timeout_minutes=self.config.jobs.step_timeout_minutes,
            heartbeat_interval=self._heartbeat_interval,
        )
        if resumed and record.progress:
            reporter.seed(record.progress)  # the last progress survives a restart or a boot
        ctx = EngineJobContext(
            key=key,
            thing_name=self.config.thing_name,
            document=document,
            checkpoint_data=record.checkpoint,
            resumed=resumed,
            rebooted=rebooted,
            log=bound,
            scratch_dir=scratch,
            state_dir=state_dir,
            store=self.store,
            reporter=reporter,
            mqtt_link=self.client.transport,
        )
        running = _Running(key=key, ctx=ctx, cloud_ended=cloud_ended)
        running_ref.append(running)
        self._running = running
        self._set_status("running", str(key))
        reporter_task = asyncio.create_task(reporter.run(), name=f"progress-{key}")
        handler_task = asyncio.create_task(self.dispatcher.run(handler, ctx), name=f"job-{key}")
        bound.info("handler started", handler=handler.name, resumed=resumed, rebooted=rebooted)
        try:
            outcome = await self._supervise(handler_task, running, reporter, bound)
        finally:
            reporter.stop()
            reporter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter_task
            self._running = None
            self._set_status("idle")
        if outcome is None:
            return  # cancelled by the cloud or suspended for a stop; already recorded
        self._crash.reached("handler_done")
        if ctx.reboot_requested and outcome.status == "SUCCEEDED":
            await self._reboot(key, reporter, bound)
            return
        progress = reporter.latest
        if rebooted and progress.get("reboot") == "requested":
            progress["reboot"] = "done"  # the boot id changed: say so in the final report
        await self._decide(key, _with_last_progress(outcome, progress), bound)

    async def _supervise(
        self,
        handler_task: asyncio.Task[Outcome],
        running: _Running,
        reporter: ProgressReporter,
        bound: Any,
    ) -> Outcome | None:
        """Wait for the handler, or stop it when the cloud ends the execution or we stop."""
        ended_wait = asyncio.create_task(running.cloud_ended.wait())
        stop_wait = asyncio.create_task(self._stop_now.wait())
        stop_timeout_task: asyncio.Task[None] | None = None
        try:
            while True:
                self.loop_heartbeat = time.monotonic()
                waiters: set[asyncio.Future[Any]] = {handler_task, ended_wait, stop_wait}
                if self._stopping and stop_timeout_task is None:
                    stop_timeout_task = asyncio.create_task(
                        asyncio.sleep(self.config.jobs.stop_timeout_seconds)
                    )
                if stop_timeout_task is not None:
                    waiters.add(stop_timeout_task)
                done, _ = await asyncio.wait(
                    waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                if handler_task in done:
                    break
                if ended_wait in done:
                    bound.warning(
                        "the service ended the execution; stopping the handler",
                        reason=running.reason,
                    )
                    await self._stop_handler(handler_task, running.ctx)
                    await self.store.cancelled(running.key, running.reason)
                    self._note_outcome(running.key, f"cancelled: {running.reason}")
                    await self._cleanup_dirs(running.key)
                    return None
                if stop_wait in done or (
                    stop_timeout_task is not None and stop_timeout_task in done
                ):
                    return await self._stop_for_shutdown(handler_task, running, bound)
        finally:
            for task in (ended_wait, stop_wait, stop_timeout_task):
                if task is not None:
                    task.cancel()
        try:
            return handler_task.result()
        except asyncio.CancelledError:
            return Outcome.failed("the handler was cancelled")
        except Exception as exc:  # the dispatcher maps handler errors; this is a last resort
            bound.exception("handler crashed")
            return Outcome.failed(f"{type(exc).__name__}: {exc}")

    async def _stop_handler(
        self, handler_task: asyncio.Task[Outcome], ctx: EngineJobContext
    ) -> None:
        ctx.cancelled.set()
        grace = self.config.jobs.kill_grace_seconds + 5.0
        done, _ = await asyncio.wait({handler_task}, timeout=grace)
        if not done:
            handler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler_task

    async def _stop_for_shutdown(
        self, handler_task: asyncio.Task[Outcome], running: _Running, bound: Any
    ) -> Outcome | None:
        record = await self.store.get(running.key)
        resumable = bool(record and record.resumable)
        await self._stop_handler(handler_task, running.ctx)
        if resumable:
            await self.store.transition(running.key, ExecutionState.RUNNING, note="suspended")
            bound.info("resumable handler suspended for shutdown; it continues after restart")
            return None
        record = await self.store.get(running.key)
        if record is not None and interrupted_reboot_step(record.checkpoint) is not None:
            # Stopped during a Device Client reboot step: the device is most likely going
            # down. After the boot the step runs again; without a reboot it is FAILED then.
            bound.warning("stopped during a reboot step; it is decided after the restart")
            return None
        if handler_task.done() and not handler_task.cancelled():
            with contextlib.suppress(Exception):
                outcome = handler_task.result()
                if not running.ctx.cancelled.is_set():
                    return outcome
        return Outcome.failed("the agent was stopped while the step was running")

    async def _send_progress(
        self, running: _Running, details: Mapping[str, Any] | None, step_timeout: int | None
    ) -> bool:
        key = running.key
        sanitized = None
        if details is not None:
            sanitized = sanitize_status_details(redact_mapping(details))
            self._set_status("running", str(key), **sanitized)
        try:
            await self.client.update(
                key.job_id,
                "IN_PROGRESS",
                status_details=sanitized,
                step_timeout=step_timeout,
                execution_number=key.execution_number,
                namespace=key.namespace or None,
            )
        except JobsRejected as exc:
            if exc.code in CLOUD_ENDED_CODES:
                self._cloud_ended(running, f"the service refused an update: {exc.code}")
                return False
            log.warning("progress update refused", job_id=key.job_id, code=str(exc.code))
            return True
        except (JobsError, TransportError) as exc:
            log.info("progress update not delivered", job_id=key.job_id, error=str(exc))
            return True
        if sanitized:
            with contextlib.suppress(StoreError):
                await self.store.save_progress(key, sanitized)
        return True

    # -- outcome and reboot -------------------------------------------------------------------
    async def _decide(self, key: ExecutionKey, outcome: Outcome, bound: Any) -> None:
        details = sanitize_status_details(redact_mapping(dict(outcome.details)))
        try:
            self._outbox_dirty = True
            await self.store.decide(key, outcome.status, details)
        except StoreLost:
            # Nothing can be recorded any more: tell the service now, once, rather than leave
            # the execution for the restarted agent to report as lost.
            if await self._report_without_record(key, outcome.status, details, bound):
                return
            self._undecided[key] = Outcome(outcome.status, details)
            raise
        except StoreError:
            # Keep the real outcome until it can be written; never let a full disk turn a
            # finished job into "agent restarted while the step was running".
            self._undecided[key] = Outcome(outcome.status, details)
            raise
        self._crash.reached("decided")
        # A job that did not succeed is what an operator filters for (`journalctl -p warning`).
        level = bound.info if outcome.status == "SUCCEEDED" else bound.warning
        level("outcome decided", status=outcome.status, reason=details.get("reason"))
        if not await self._flush_outbox():
            bound.info("outcome queued until the service is reachable")

    async def _report_without_record(
        self, key: ExecutionKey, status: str, details: Mapping[str, str], bound: Any
    ) -> bool:
        try:
            await self.client.update(
                key.job_id,
                status,
                status_details=details,
                execution_number=key.execution_number,
                namespace=key.namespace or None,
            )
        except (JobsError, TransportError) as exc:
            bound.error("outcome not reported and the database is gone", error=str(exc))
            return False
        bound.warning("outcome reported without a database record", status=status)
        self._note_outcome(key, status)
        return True

    async def _decide_undecided(self) -> None:
        for key, outcome in list(self._undecided.items()):
            self._outbox_dirty = True
            await self.store.decide(key, outcome.status, dict(outcome.details))
            del self._undecided[key]
            self._crash.reached("decided")
            log.info(
                "outcome decided after the database recovered",
                job_id=key.job_id,
                execution_number=key.execution_number,
                status=outcome.status,
            )

    @property
    def _boot_id_path(self) -> Path:
        return self._boot_id_path_override or self.config.jobs.boot_id_path

    def _read_boot_id(self) -> str | None:
        try:
            return self._boot_id_path.read_text(encoding="ascii").strip() or None
        except OSError:
            return None

    async def _reboot(self, key: ExecutionKey, reporter: ProgressReporter, bound: Any) -> None:
        boot_id = self._read_boot_id()
        if boot_id is None:
            await self._decide(
                key,
                Outcome.failed(f"cannot reboot safely: boot id unreadable at {self._boot_id_path}"),
                bound,
            )
            return
        await self.store.transition(key, ExecutionState.AWAITING_REBOOT, boot_id=boot_id)
        self._crash.reached("awaiting_reboot")
        details = sanitize_status_details({**reporter.latest, "reboot": "requested"})
        with contextlib.suppress(StoreError):  # the run after the boot starts from it
            await self.store.save_progress(key, details)
        try:
            await self.client.update(
                key.job_id,
                "IN_PROGRESS",
                status_details=details,
                step_timeout=reporter.step_timeout_minutes,
                execution_number=key.execution_number,
                namespace=key.namespace or None,
            )
        except JobsRejected as exc:
            if exc.code in CLOUD_ENDED_CODES:
                # Cancelled (or timed out) just now: the device must not reboot for it.
                note = f"not rebooted: the service ended the execution ({exc.code})"
                bound.warning("reboot cancelled", reason=note)
                await self.store.cancelled(key, note)
                self._note_outcome(key, note)
                return
            bound.warning("reboot announcement refused; rebooting anyway", code=str(exc.code))
        except (JobsError, TransportError) as exc:
            # Offline: the job asked for the reboot; the outcome is reported after the boot.
            bound.warning("reboot announcement not delivered; rebooting anyway", error=str(exc))
        if self._stopping:
            # Being stopped right now: the device is already going down (the Device Client's
            # reboot.sh calls `reboot` itself), or an operator stops the agent. Either way the
            # boot id after the restart says whether the reboot happened.
            self._awaiting_reboot = True
            bound.warning("not running the reboot command: the agent is being stopped")
            return
        command = list(self.config.jobs.reboot_command)
        bound.warning("rebooting the device for the job", command=command)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
            async with asyncio.timeout(120):
                _, stderr = await process.communicate()
        except (OSError, TimeoutError) as exc:
            await self._decide(key, Outcome.failed(f"reboot command failed: {exc}"), bound)
            return
        if process.returncode != 0 and self._stopping:
            # Refused because the device is already shutting down (a reboot the handler
            # started itself): the boot id after the restart decides, as above.
            self._awaiting_reboot = True
            bound.warning("reboot command failed while the agent is being stopped; see after boot")
            return
        if process.returncode != 0:
            tail = stderr.decode(errors="replace")[-500:]
            await self._decide(
                key,
                Outcome.failed(
                    f"reboot command exited with code {process.returncode}", stderr=tail
                ),
                bound,
            )
            return
        self._awaiting_reboot = True
        self._set_status("awaiting reboot", str(key))
        asyncio.get_running_loop().call_later(
            REBOOT_GRACE_SECONDS, lambda: self._background(self._reboot_overdue(key))
        )

    async def _reboot_overdue(self, key: ExecutionKey) -> None:
        if not self._awaiting_reboot or self._stopping:
            return
        self._awaiting_reboot = False
        await self._decide(
            key,
            Outcome.failed(
                f"the reboot command succeeded but the device did not reboot within"
                f" {REBOOT_GRACE_SECONDS:.0f} s"
            ),
            log.bind(job_id=key.job_id, execution_number=key.execution_number),
        )
        self._wake.set()


def _with_last_progress(outcome: Outcome, progress: Mapping[str, Any]) -> Outcome:
    """The final report carries the last progress too (a job shorter than one progress interval
    would otherwise never show it); success means 100 %.

    The outcome's own keys (`reason`, `stdout`, `stderr`, ...) come first and win: only 10
    pairs fit, and a handler's progress `details` must never push out why the job ended.
    """
    if not progress:
        return outcome
    merged = dict(outcome.details)
    for key, value in progress.items():
        merged.setdefault(key, value)
    if outcome.status == "SUCCEEDED" and "percent" in progress and "percent" not in outcome.details:
        merged["percent"] = "100"
    return Outcome(outcome.status, merged)
