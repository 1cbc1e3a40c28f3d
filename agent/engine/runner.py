"""Running one execution, in the order its record allows.

The record says where the execution is (`lifecycle`), `recovery.recover` says what that means
now (run it, continue it, fail it, send its outcome again, settle it), and this module does
that: resolve the handler, record RUNNING, launch it under the supervisor, then decide the
outcome or hand a reboot request over. A new kind of action (waiting for a maintenance window,
an update phase) is one more branch of `_act` and, when it runs a handler, one more way into
`_launch`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Mapping
from typing import Any, Final

import structlog

from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.context import EngineJobContext
from jobs_agent.engine.deferral import CONSENT, Deferrals, Request
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import RECEIVED, RUNNING, STARTED, ExecutionState
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.packages import PackageReports
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.engine.reboot import Reboots

# Loaded with this module, which loads with the first record processed (`Engine._runner`):
# the recovery decision is needed then. An import statement in a function runs at every job,
# about 8 k instructions even for a loaded module (issue 18).
from jobs_agent.engine.recovery import Action, Fail, Limits, Resend, Run, Settle, Wait, recover
from jobs_agent.engine.refresh import DocumentRefresher, has_presigned_urls
from jobs_agent.engine.shared import Shared, StopRequested
from jobs_agent.engine.store import ExecutionRecord, Store
from jobs_agent.engine.supervision import Running, Supervisor, watched
from jobs_agent.engine.turns import Turns
from jobs_agent.inventory.model import InventoryError
from jobs_agent.log import LazyBound
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from jobs_agent_handlers.api import (
    Handler,
    JobDeferred,
    JobFailed,
    JobRejected,
    Outcome,
    point_of_no_return,
)

log = structlog.get_logger("jobs_agent.engine")

_FRESH = (RECEIVED, STARTED)
"""The states of a record that has not run yet."""
_SUCCEEDED: Final = JobExecutionStatus.SUCCEEDED
"""Read as a global, not off its class (`lifecycle.RECEIVED`'s note)."""


class Runner:
    def __init__(
        self,
        shared: Shared,
        store: AsyncStore,
        outbox: Outbox,
        reboots: Reboots,
        files: JobFiles,
        supervisor: Supervisor,
        deferrals: Deferrals,
        refresher: DocumentRefresher,
        packages: PackageReports,
        turns: Turns,
        *,
        heartbeat_interval: float | None = None,
    ) -> None:
        self._deferrals = deferrals
        self._turns = turns
        self._shared = shared
        self._store = store
        self._outbox = outbox
        self._reboots = reboots
        self._files = files
        self._supervisor = supervisor
        self._refresher = refresher
        self._packages = packages
        self._heartbeat_interval = heartbeat_interval
        self._limits = Limits(max_agent_restarts=shared.settings.max_agent_restarts_per_job)
        """Recovery's bounds, made again only when a reload changed them (not at each job)."""
        deferrals.on_resume(self._refresh_after_wait)

    async def _refresh_after_wait(
        self, record: ExecutionRecord, document: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """A job that waited (deferred, across restarts too) may hold presigned URLs that have
        expired meanwhile: it resumes with the service's copy fetched again (None: keep)."""
        if not has_presigned_urls(record.document):
            return None
        return await self.fresh_copy(record)

    async def process(self, record: ExecutionRecord, document: Mapping[str, Any] | None) -> None:
        """Do what `record` calls for; `document` is the one just delivered (None: recorded)."""
        ref = record.key
        # Built at the first line the level lets through: a job that logs nothing at the
        # configured level (a plugin job at `warning`) builds no structlog logger (issue 18).
        bound = LazyBound(
            log, job_id=ref.job_id, execution_number=ref.execution_number, namespace=ref.namespace
        )
        if self._shared.stopping and record.state is STARTED:
            bound.info("stopping: the job starts after the restart")
            return
        limits = self._limits
        if limits.max_agent_restarts != self._shared.settings.max_agent_restarts_per_job:
            limits = self._limits = Limits(
                max_agent_restarts=self._shared.settings.max_agent_restarts_per_job
            )
        # Only a record that has run may need this boot's id (a read of /proc per job else).
        fresh = record.state in _FRESH
        action = recover(record, None if fresh else self._reboots.boot_id(), limits)
        await self._act(record, action, document, bound)

    async def _act(
        self,
        record: ExecutionRecord,
        action: Action,
        document: Mapping[str, Any] | None,
        bound: Any,
    ) -> None:
        ref = record.key
        if isinstance(action, Resend):
            bound.info("outcome already decided; re-sending it")
            self._shared.wake()
        elif isinstance(action, Settle):
            if record.state is ExecutionState.REPORTED:
                bound.warning("service still offers a reported execution; reporting it again")
            await self._outbox.settle(ref, action)
        elif isinstance(action, Fail):
            if action.stop_leftovers:
                await self._files.stop_leftovers(ref, bound)
            await self._outbox.decide(ref, Outcome.failed(action.reason), bound)
        elif isinstance(action, Wait):
            await self._wait_and_run(record, None, document or record.document, bound)
        else:
            if action.stop_leftovers:
                await self._files.stop_leftovers(ref, bound)
            if not document:  # before the record says it runs again: a stop may end it here
                document = await self._unless_failed(ref, self.fresh_copy(record), bound)
                if document is None:
                    return
            record = await self._continue(record, action, bound)
            await self._launch(record, action, document, bound)

    async def fresh_copy(self, record: ExecutionRecord) -> dict[str, Any]:
        """The document to run `record` with when no copy was just delivered (a run resumed
        after a wait): the recorded one, or, when it has presigned URLs (stored without their
        credentials), the service's copy fetched again (`refresh.DocumentRefresher`). Raises
        `JobFailed` with the reason when that copy cannot be had or is not the same job, and
        `StopRequested` when a stop comes first: a read, its answer not waited for."""
        if not has_presigned_urls(record.document):
            return record.document
        return await self._shared.unless_stopping(self._refresher.refresh(record))

    async def _unless_failed(
        self, ref: ExecutionRef, copy: Awaitable[Mapping[str, Any]], bound: Any
    ) -> Mapping[str, Any] | None:
        """The document `copy` gives a run; None: no run, FAILED decided (`JobFailed`) or a
        stop came as it was fetched again (the record left as it was for the next start)."""
        try:
            return await copy
        except JobFailed as exc:
            await self._outbox.decide(ref, Outcome.failed(exc.reason, **exc.details), bound)
        except StopRequested:
            bound.info("stopping: the job runs again after the restart")
        return None

    async def _continue(self, record: ExecutionRecord, run: Run, bound: Any) -> ExecutionRecord:
        """Record how a run that continues an earlier one starts again."""
        ref = record.key
        if run.confirm_reboot_step is not None:
            # The device went down while a step that reboots it the Device Client's way ran:
            # the boot id changed, so this is the re-delivery after the boot it wants.
            from jobs_agent.dispatch.devicec import confirm_reboot_checkpoint

            checkpoint = confirm_reboot_checkpoint(run.confirm_reboot_step)
            await self._store.call(Store.save_checkpoint, ref, checkpoint)
            record = await self._store.call(Store.transition, ref, ExecutionState.RUNNING, note="")
            bound.info("the device rebooted during its reboot step; running it again to confirm")
        elif run.restarts is not None:
            record = await self._store.call(
                Store.transition, ref, ExecutionState.RUNNING, restarts=run.restarts, note=""
            )
            bound.info("resuming after an agent restart", restarts=run.restarts)
        elif run.rebooted:
            bound.info("continuing after reboot")
        return record

    async def _launch(
        self, record: ExecutionRecord, run: Run, document: Mapping[str, Any], bound: Any
    ) -> None:
        handler = await self._resolve(record, document, bound)
        if handler is None:
            return
        if not run.resumed and await self._needs_no_run(record, document, bound):
            return
        ref = record.key
        if run.resumed:
            record = await self._store.call(Store.transition, ref, ExecutionState.RUNNING)
        else:
            gate = self._deferrals.gate(document)
            if isinstance(gate, Outcome):
                await self._outbox.decide(ref, gate, bound)
                return
            if gate is not None:
                await self._wait_and_run(record, gate, document, bound)
                return
            record = await self._store.call(
                Store.transition, ref, RUNNING, **_handler_fields(handler)
            )
            self._shared.crash.reached("running")
        deferred = await self._execute(record, handler, document, run, bound)
        if deferred is not None:
            request = self._deferrals.from_handler(deferred, document)
            await self._wait_and_run(record, request, document, bound)

    async def _wait_and_run(
        self,
        record: ExecutionRecord,
        request: Request | None,
        document: Mapping[str, Any],
        bound: Any,
    ) -> None:
        """Record the deferral (None: it is recorded already), wait for its end, and run the
        job again; as often as it is deferred again. With `jobs.run_others_while_deferred` the
        deferral is recorded here and the rest goes aside (`engine/turns.py`), so that the
        engine's loop takes other work meanwhile."""
        if not self._shared.settings.run_others_while_deferred:
            await self._deferred_loop(record, request, document, bound, aside=False)
            return
        if request is not None:
            current = await self._store.call(Store.get, record.key) or record
            deferred = await self._deferrals.defer(current, request, bound)
            if deferred is None:
                return  # the limit: decided FAILED
            record = deferred
        bound.info("the deferred job waits aside; other jobs may run meanwhile")
        self._turns.start_aside(
            record.key, self._deferred_loop(record, None, document, bound, aside=True)
        )

    async def _deferred_loop(
        self,
        record: ExecutionRecord,
        request: Request | None,
        document: Mapping[str, Any],
        bound: Any,
        *,
        aside: bool,
    ) -> None:
        ref = record.key
        consented = False
        turns = self._turns if aside else None
        while True:
            if request is not None:
                current = await self._store.call(Store.get, ref) or record
                deferred = await self._deferrals.defer(current, request, bound)
                if deferred is None:
                    return  # the limit: decided FAILED
                record = deferred
                if consented:
                    await self._deferrals.forget_consent(record)
            reporter, running = self._prepare(record, document, Run(resumed=True), bound)
            ready = await self._deferrals.wait(record, document, running, reporter, bound, turns)
            if ready is None:
                return
            try:  # with `turns`, `ready` holds the turn until the run ends
                consented = ready.deferral is not None and ready.deferral.kind == CONSENT
                if consented:
                    gate = self._deferrals.window_gate(document)
                    if isinstance(gate, Outcome):
                        await self._outbox.decide(ref, gate, bound)
                        await self._deferrals.forget_consent(ready)
                        return
                    if gate is not None:
                        record, request = ready, gate
                        continue
                resumed = self._deferrals.resumed_document(ready, document)
                if (copy := await self._unless_failed(ref, resumed, bound)) is None:
                    return  # still DEFERRED after a stop: the next start resumes it
                document = copy
                handler = await self._resolve(ready, document, bound)
                if handler is None:
                    return
                fresh = ready.handler is None  # deferred before anything ran
                fields = _handler_fields(handler) if fresh else {}
                record = await self._deferrals.resume(ready, **fields)
                if consented:
                    await self._deferrals.forget_consent(record)
                deferred_again = await self._execute(
                    record, handler, document, Run(resumed=not fresh), bound
                )
                if deferred_again is None:
                    return
                request = self._deferrals.from_handler(deferred_again, document)
            finally:
                if turns is not None:
                    turns.release()

    async def _needs_no_run(
        self, record: ExecutionRecord, document: Mapping[str, Any], bound: Any
    ) -> bool:
        """Before the first step: a document whose package fields are wrong is REJECTED, and a
        job whose versions are all installed already SUCCEEDS without running (decided here)."""
        try:
            reason = await self._packages.skip_reason(document)
        except InventoryError as exc:
            await self._outbox.decide(record.key, Outcome.rejected(str(exc)), bound)
            return True
        if reason is None:
            return False
        bound.info("the job's versions are installed already; its steps do not run")
        rows = self._packages.rows_for(document)
        await self._outbox.decide(record.key, Outcome.succeeded(reason=reason), bound, rows)
        self._packages.recorded()
        return True

    async def _resolve(
        self, record: ExecutionRecord, document: Mapping[str, Any], bound: Any
    ) -> Handler | None:
        """The handler for the document; None when the outcome is already decided (REJECTED)."""
        ref = record.key
        # dict first: the ABC's check is a Python frame per job (issue 18)
        if not isinstance(document, (dict, Mapping)) or not document:
            await self._outbox.decide(
                ref, Outcome.rejected("the execution has no job document"), bound
            )
            return None
        try:
            return self._shared.dispatcher.resolve(
                document, job_id=ref.job_id, taken_at=record.received_at
            )
        except JobRejected as exc:
            outcome = Outcome("REJECTED", {"reason": exc.reason, **exc.details})
        except Exception as exc:  # a broken plugin must not stop the agent
            bound.exception("handler resolution failed")
            outcome = Outcome.failed(f"cannot load the handler: {exc}")
        await self._outbox.decide(ref, outcome, bound)
        return None

    async def _execute(
        self,
        record: ExecutionRecord,
        handler: Handler,
        document: Mapping[str, Any],
        run: Run,
        bound: Any,
    ) -> JobDeferred | None:
        """Launch the handler under the supervisor; then decide, or hand a reboot over. The
        handler's "not now" is returned (not an outcome: the caller records the deferral)."""
        reporter, running = self._prepare(record, document, run, bound)
        ref = record.key
        self._supervisor.running = running
        self._shared.note_status("running", str(ref))  # announced once it outlasts a loop turn
        handler_task = asyncio.create_task(
            watched(self._shared.dispatcher.run(handler, running.ctx), running), name=f"job-{ref}"
        )
        bound.info(
            "handler started", handler=handler.name, resumed=run.resumed, rebooted=run.rebooted
        )
        announced = False
        deferred: JobDeferred | None = None
        try:
            # Most plugins end within their first step: such a run needs no progress reporter
            # (what it reported goes with the outcome), no supervising and no STATUS= for
            # systemd, running then idle again before anyone could read it (issue 18). A
            # handler that writes an output log runs a step's processes and never does: the
            # look would only cost it a turn of the loop.
            if not getattr(handler, "writes_output_log", True):
                await asyncio.sleep(0)
            if not handler_task.done():
                self._shared.announce_status()
                announced = True
                reporter.start()
            outcome = await self._supervisor.supervise(handler_task, running, bound)
        except JobDeferred as not_now:
            deferred, outcome = not_now, None
        finally:
            await self._end_run(reporter, announced)
        if deferred is not None:
            await self._supervisor.keep_last_progress(ref, reporter.latest)
            return deferred
        if outcome is None:
            return None  # cancelled by the cloud or suspended for a stop; already recorded
        self._shared.crash.reached("handler_done")
        if running.ctx.reboot_requested and outcome.status == JobExecutionStatus.SUCCEEDED:
            held = point_of_no_return(running.ctx.checkpoint_data) is not None
            await self._reboots.request(ref, reporter, bound, held=held)
            return None
        self._note_no_files(ref, handler, running, run)
        progress = reporter.latest
        if run.rebooted and progress.get("reboot") == "requested":
            progress["reboot"] = "done"  # the boot id changed: say so in the final report
        succeeded = outcome.status == _SUCCEEDED
        rows = self._packages.rows_for(document) if succeeded else ()
        await self._outbox.decide(ref, with_last_progress(outcome, progress), bound, rows)
        if rows:
            self._packages.recorded()
        return None

    def _note_no_files(
        self, ref: ExecutionRef, handler: Handler, running: Running, run: Run
    ) -> None:
        """A first run (nothing ran before it, in this process or an earlier one) of a handler
        that writes no output log and never asked for its directories made no files: its
        cleanup need not look for any (`JobFiles.made_nothing`)."""
        if not (
            run.resumed
            or running.ctx.made_directories
            or getattr(handler, "writes_output_log", True)
        ):
            self._files.made_nothing(ref)

    async def _end_run(self, reporter: ProgressReporter, announced: bool) -> None:
        """Whatever way the handler ended: no progress update left, nothing supervised, and
        systemd told the agent is idle only if it was told it ran."""
        await reporter.close()
        self._supervisor.running = None
        (self._shared.set_status if announced else self._shared.note_status)("idle")

    def _prepare(
        self, record: ExecutionRecord, document: Mapping[str, Any], run: Run, bound: Any
    ) -> tuple[ProgressReporter, Running]:
        """The execution's directories, progress reporter and handler context."""
        ref = record.key
        scratch, state_dir = self._files.dirs(ref)  # made when the handler asks for them
        settings = self._shared.settings
        # The reporter's sender finds its `Running` through a weak reference: `Running` holds the
        # context, which holds the reporter, which holds the sender. A strong one made a cycle
        # of some 22 objects per job that only the cyclic collector could free (a young
        # collection every ten jobs or so). The run's own frames hold `Running` for as long as
        # anything may report; a send after it is gone has nothing left to report on.
        running_ref: list[weakref.ref[Running]] = []

        async def send(details: Mapping[str, Any] | None, step_timeout: int | None) -> bool:
            running = running_ref[0]()
            if running is None:
                return False
            return await self._supervisor.send_progress(running, details, step_timeout)

        reporter = ProgressReporter(
            send,
            interval=settings.progress_interval_seconds,
            step_timeout_minutes=settings.step_timeout_minutes,
            heartbeat_interval=self._heartbeat_interval,
        )
        if run.resumed and record.progress:
            reporter.seed(record.progress)  # the last progress survives a restart or a boot
        ctx = EngineJobContext(
            key=ref,
            thing_name=settings.thing_name,
            document=document,
            checkpoint_data=record.checkpoint,
            resumed=run.resumed,
            rebooted=run.rebooted,
            log=bound,
            scratch_dir=scratch,
            state_dir=state_dir,
            store=self._store,
            reporter=reporter,
            mqtt_link=self._shared.mqtt_link,
            refresh=lambda: self._refresher.refresh(record),
            max_refreshes=settings.max_document_refreshes,
        )
        running = Running(ref, ctx)
        running_ref.append(weakref.ref(running))
        return reporter, running


def _handler_fields(handler: Handler) -> dict[str, Any]:
    return {"handler": handler.name, "resumable": bool(getattr(handler, "resumable", False))}


def with_last_progress(outcome: Outcome, progress: Mapping[str, Any]) -> Outcome:
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
    succeeded = outcome.status == JobExecutionStatus.SUCCEEDED
    if succeeded and "percent" in progress and "percent" not in outcome.details:
        merged["percent"] = "100"
    return Outcome(outcome.status, merged)
