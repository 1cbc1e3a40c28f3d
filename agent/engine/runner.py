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
import contextlib
from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.dispatch.devicec import confirm_reboot_checkpoint
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.context import EngineJobContext
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.engine.reboot import Reboots
from jobs_agent.engine.recovery import Action, Fail, Limits, Resend, Run, Settle, recover
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import ExecutionRecord, Store
from jobs_agent.engine.supervision import Running, Supervisor
from jobs_agent.vocabulary import JobExecutionStatus
from jobs_agent_handlers.api import Handler, JobRejected, Outcome

log = structlog.get_logger("jobs_agent.engine")


class Runner:
    def __init__(
        self,
        shared: Shared,
        store: AsyncStore,
        outbox: Outbox,
        reboots: Reboots,
        files: JobFiles,
        supervisor: Supervisor,
        *,
        heartbeat_interval: float | None = None,
    ) -> None:
        self._shared = shared
        self._store = store
        self._outbox = outbox
        self._reboots = reboots
        self._files = files
        self._supervisor = supervisor
        self._heartbeat_interval = heartbeat_interval

    async def process(self, record: ExecutionRecord, document: Mapping[str, Any] | None) -> None:
        """Do what `record` calls for; `document` is the one just delivered (None: recorded)."""
        ref = record.key
        bound = log.bind(
            job_id=ref.job_id, execution_number=ref.execution_number, namespace=ref.namespace
        )
        if self._shared.stopping and record.state is ExecutionState.STARTED:
            bound.info("stopping: the job starts after the restart")
            return
        limits = Limits(max_agent_restarts=self._shared.settings.max_agent_restarts_per_job)
        action = recover(record, self._reboots.boot_id(), limits)
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
        else:
            if action.stop_leftovers:
                await self._files.stop_leftovers(ref, bound)
            record = await self._continue(record, action, bound)
            await self._launch(record, action, document or record.document, bound)

    async def _continue(self, record: ExecutionRecord, run: Run, bound: Any) -> ExecutionRecord:
        """Record how a run that continues an earlier one starts again."""
        ref = record.key
        if run.confirm_reboot_step is not None:
            # The device went down while a step that reboots it the Device Client's way ran:
            # the boot id changed, so this is the re-delivery after the boot it wants.
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
        ref = record.key
        if run.resumed:
            record = await self._store.call(Store.transition, ref, ExecutionState.RUNNING)
        else:
            record = await self._store.call(
                Store.transition,
                ref,
                ExecutionState.RUNNING,
                handler=handler.name,
                resumable=bool(getattr(handler, "resumable", False)),
            )
            self._shared.crash.reached("running")
        await self._execute(record, handler, document, run, bound)

    async def _resolve(
        self, record: ExecutionRecord, document: Mapping[str, Any], bound: Any
    ) -> Handler | None:
        """The handler for the document; None when the outcome is already decided (REJECTED)."""
        ref = record.key
        if not isinstance(document, Mapping) or not document:
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
    ) -> None:
        """Launch the handler under the supervisor; then decide, or hand a reboot over."""
        reporter, running = self._prepare(record, document, run, bound)
        ref = record.key
        self._supervisor.running = running
        self._shared.set_status("running", str(ref))
        reporter_task = asyncio.create_task(reporter.run(), name=f"progress-{ref}")
        handler_task = asyncio.create_task(
            self._shared.dispatcher.run(handler, running.ctx), name=f"job-{ref}"
        )
        bound.info(
            "handler started", handler=handler.name, resumed=run.resumed, rebooted=run.rebooted
        )
        try:
            outcome = await self._supervisor.supervise(handler_task, running, bound)
        finally:
            reporter.stop()
            reporter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter_task
            self._supervisor.running = None
            self._shared.set_status("idle")
        if outcome is None:
            return  # cancelled by the cloud or suspended for a stop; already recorded
        self._shared.crash.reached("handler_done")
        if running.ctx.reboot_requested and outcome.status == JobExecutionStatus.SUCCEEDED:
            await self._reboots.request(ref, reporter, bound)
            return
        progress = reporter.latest
        if run.rebooted and progress.get("reboot") == "requested":
            progress["reboot"] = "done"  # the boot id changed: say so in the final report
        await self._outbox.decide(ref, with_last_progress(outcome, progress), bound)

    def _prepare(
        self, record: ExecutionRecord, document: Mapping[str, Any], run: Run, bound: Any
    ) -> tuple[ProgressReporter, Running]:
        """The execution's directories, progress reporter and handler context."""
        ref = record.key
        scratch, state_dir = self._files.dirs(ref)  # made when the handler asks for them
        settings = self._shared.settings
        running_ref: list[Running] = []

        async def send(details: Mapping[str, Any] | None, step_timeout: int | None) -> bool:
            return await self._supervisor.send_progress(running_ref[0], details, step_timeout)

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
        )
        running_ref.append(Running(ref, ctx))
        return reporter, running_ref[0]


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
