"""Deferred executions: "not now" without timing out, losing the job or running another.

An execution is deferred by its handler (a script's exit 92 with a `defer` line, a plugin's
`JobDeferred`), by a closed maintenance window, or while it waits for a person's consent. It
stays IN_PROGRESS on the service, with statusDetails that say so (`deferred`: the kind,
`until`, `reason`, `deferrals`), and the agent keeps the step timer alive with heartbeats
(`stepTimeoutInMinutes` again every 0.4 of it), or clears it (`-1`) when the agent sets none.
The deferral is durable (the `deferred_*` columns, written before the update announces it), so a
restart or a reboot resumes the wait, never the step (`recovery.Wait`). The engine's loop waits
here as it would for a running handler: one job at a time holds, and nothing else is taken.
With `jobs.run_others_while_deferred` the wait runs aside instead, and an execution whose wait is
over asks for the one turn to run in (`engine/turns.py`), watched and kept alive meanwhile.

The total time an execution spends deferred is bounded by `jobs.max_deferral_minutes` (or the
job's lower `maxDeferralMinutes`): a deferral that would cross it, or a consent wait that does,
ends FAILED with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.consent.document import consent_requirement
from jobs_agent.datamodel import model
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import ExecutionRecord, Store
from jobs_agent.engine.supervision import Running, Supervisor
from jobs_agent.engine.turns import Turns
from jobs_agent.schedule import clock
from jobs_agent.schedule.maintenance import DOCUMENT_KEY, document_windows
from jobs_agent.schedule.windows import Timeline
from jobs_agent_handlers.api import JobDeferred, JobRejected, Outcome

if TYPE_CHECKING:
    from jobs_agent.consent.server import ConsentDesk  # only when the socket is served

log = structlog.get_logger("jobs_agent.engine")

HANDLER = "handler"
WINDOW = "window"
CONSENT = "consent"
DETAIL_KEYS = ("deferred", "until", "reason", "deferrals")
"""The statusDetails keys a deferral adds; dropped from the progress when the job runs again."""
MIN_HANDLER_WAIT_SECONDS = 30.0
"""A handler's "not now" waits at least this long (an `until` in the past, `after: 0`): a
handler that always defers must not turn the agent into a loop of runs and updates."""
POLL_SECONDS = 1.0
"""How often the wait looks at the clock (the clock may be moved: `schedule.clock`)."""


ResumeHook = Callable[[ExecutionRecord, Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]
"""Called when a deferred execution is about to run again, with its record and the document it
would run with; returns the document to run instead (None: unchanged). The place for what must
be fresh after a wait: newly signed presigned URLs (DescribeJobExecution with
`includeJobDocument`), as after a restart or a reboot."""


@model
class Request:
    """Why an execution waits, and until when (None: until consent is given)."""

    kind: str
    until: float | None
    reason: str


def iso(instant: float) -> str:
    return dt.datetime.fromtimestamp(instant, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_details(request: Request, deferrals: int) -> dict[str, str]:
    return {
        "deferred": request.kind,
        "until": "consent" if request.until is None else iso(request.until),
        "reason": request.reason,
        "deferrals": str(deferrals),
    }


def without_deferral(progress: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (progress or {}).items() if k not in DETAIL_KEYS}


class Deferrals:
    def __init__(
        self,
        shared: Shared,
        store: AsyncStore,
        outbox: Outbox,
        files: JobFiles,
        supervisor: Supervisor,
        consent: ConsentDesk | None,
    ) -> None:
        self._shared = shared
        self._store = store
        self._outbox = outbox
        self._files = files
        self._supervisor = supervisor
        self.consent = consent
        self._resume_hooks: list[ResumeHook] = []

    def on_resume(self, hook: ResumeHook) -> None:
        """Register `hook` for every resume from a deferral (`ResumeHook`), in order."""
        self._resume_hooks.append(hook)

    async def resumed_document(
        self, record: ExecutionRecord, document: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        for hook in self._resume_hooks:
            replaced = await hook(record, document)
            if replaced is not None:
                document = replaced
        return document

    # -- what to wait for -------------------------------------------------------------------
    def job_timeline(self, document: Mapping[str, Any]) -> Timeline:
        """Where the job may start: the device's windows and the document's own, together (the
        document was checked when its handler was resolved). A document without a window of
        its own (most jobs) has the device's: `document_windows` would read nothing in it
        (its reading and its `DocumentWindows` a job less; issue 18)."""
        device = self._shared.settings.maintenance_windows
        if DOCUMENT_KEY not in document and "steps" not in document:
            return device
        return document_windows(document).for_step(device)

    def gate(self, document: Mapping[str, Any]) -> Request | Outcome | None:
        """Before anything of the job runs: consent first (so that the person's answer is not
        held up by the window), then the window. None: run now. What reads the document's
        consent and windows is imported with this module, which loads with the runner at the
        first record processed: an import statement here ran at every job, about 8 k
        instructions even for a loaded module (issue 18)."""
        required = consent_requirement(document)
        if required is not None:
            if self.consent is None:
                return Outcome.failed("the job requires consent, and this agent serves no socket")
            return Request(CONSENT, None, required.prompt or "waiting for consent on the device")
        return self.window_gate(document)

    def window_gate(self, document: Mapping[str, Any]) -> Request | Outcome | None:
        timeline = self.job_timeline(document)
        now = clock.now()
        if timeline.is_open(now):
            return None
        opens = timeline.opens_at(now)
        if opens is None:
            return Outcome.failed("no maintenance window of the job opens within a year")
        return Request(WINDOW, opens, "waiting for the maintenance window")

    def from_handler(self, request: JobDeferred, document: Mapping[str, Any]) -> Request:
        """A handler's "not now" as a request: its time, else the next window, else the
        default wait."""
        now = clock.now()
        until = request.until
        if until is None and request.after is not None:
            until = now + request.after
        if until is None and request.window:
            until = self.job_timeline(document).next_opening(now)
        if until is None:
            until = now + self._shared.settings.defer_default_seconds
        least = 1.0 if request.window else MIN_HANDLER_WAIT_SECONDS  # a window is the agent's
        until = max(until, now + least)
        return Request(WINDOW if request.window else HANDLER, until, request.reason)

    # -- recording it -----------------------------------------------------------------------
    async def defer(
        self, record: ExecutionRecord, request: Request, bound: Any
    ) -> ExecutionRecord | None:
        """Record the deferral (durably, before it is announced); None when the limit on the
        total deferral is crossed and the outcome is decided FAILED instead."""
        now = clock.now()
        total = waited(record, now)
        if request.until is not None:
            problem = self._over_limit(
                total + max(0.0, request.until - now), request, record.document
            )
            if problem is not None:
                await self._outbox.decide(record.key, Outcome.failed(problem), bound)
                return None
        record = await self._store.call(
            Store.transition,
            record.key,
            ExecutionState.DEFERRED,
            deferred_kind=request.kind,
            deferred_until=request.until,
            deferred_reason=request.reason[:1024],
            deferred_since=now,
            deferred_total_seconds=total,
            deferrals=record.deferrals + 1,
        )
        self._shared.crash.reached("deferred")
        bound.info(
            "job deferred",
            kind=request.kind,
            until=None if request.until is None else iso(request.until),
            reason=request.reason,
        )
        return record

    def _over_limit(
        self, total: float, request: Request, document: Mapping[str, Any]
    ) -> str | None:
        """Why the total deferral is too long (None: it is not): the device's limit, or the
        job's own when it names a lower one."""
        from jobs_agent.dispatch.agent_fields import MAX_DEFERRAL_KEY, max_deferral_minutes

        limit, source = self._shared.settings.max_deferral_minutes, "jobs.max_deferral_minutes"
        with contextlib.suppress(JobRejected):  # checked when the document was resolved
            own = max_deferral_minutes(document)
            if own is not None and own < limit:
                limit, source = own, f"the job's {MAX_DEFERRAL_KEY}"
        if total <= limit * 60:
            return None
        minutes = f"{total / 60:.0f} min in all (limit {limit} min, {source})"
        return f"deferred for {minutes}: {request.reason}"

    async def resume(self, record: ExecutionRecord, **fields: Any) -> ExecutionRecord:
        """Deferred -> running: the wait is added to the total, its statusDetails keys go."""
        now = clock.now()
        await self._store.call(Store.save_progress, record.key, without_deferral(record.progress))
        return await self._store.call(
            Store.transition,
            record.key,
            ExecutionState.RUNNING,
            deferred_total_seconds=waited(record, now),
            note="",
            **fields,
        )

    # -- waiting ----------------------------------------------------------------------------
    async def wait(
        self,
        record: ExecutionRecord,
        document: Mapping[str, Any],
        running: Running,
        reporter: ProgressReporter,
        bound: Any,
        turns: Turns | None = None,
    ) -> ExecutionRecord | None:
        """Announce the deferral, keep the step timer alive and wait for its end: the record,
        ready to run (still DEFERRED), or None when it ended otherwise (decided, cancelled by
        the service, the agent stopping: each already recorded). With `turns` (waiting aside),
        the record is returned holding the turn: the caller releases it."""
        assert record.deferral is not None
        deferral = record.deferral
        request = Request(deferral.kind, deferral.until, deferral.reason)
        ref = record.key
        details = {**without_deferral(record.progress), **status_details(request, record.deferrals)}
        timeout = self._shared.settings.step_timeout_minutes
        aside = turns is not None
        if not aside:
            self._supervisor.running = running
        self._supervisor.waiting[ref] = running
        ended_task = asyncio.create_task(running.cloud_ended.wait())
        decision: asyncio.Future[Any] | None = None
        reporter_task: asyncio.Task[None] | None = None
        try:
            if request.kind == CONSENT and self.consent is not None:
                # On the desk before the wait is announced: whoever sees it in the cloud and
                # answers on the device finds the job in `jobs-agent consent --list`.
                decision = self._ask(record, document)
            await self._supervisor.send_progress(
                running, details, -1 if timeout is None else timeout
            )
            if self._supervisor.running in (None, running):
                self._shared.set_status("deferred", str(ref), until=details["until"])
            reporter_task = asyncio.create_task(reporter.run(), name=f"deferred-{ref}")
            if request.kind == CONSENT and self.consent is None:
                # the socket could not be served this time
                reason = "the job requires consent, and this agent serves no socket"
                await self._outbox.decide(ref, Outcome.failed(reason), bound)
                return None
            ready = await self._until_done(record, request, decision, ended_task, running, bound)
            if ready is None or turns is None:
                return ready
            return await self._await_turn(ready, request, turns, ended_task, running, bound)
        finally:
            reporter.stop()
            for task in (ended_task, reporter_task, decision):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            self._supervisor.waiting.pop(ref, None)
            if not aside:
                self._supervisor.running = None
                self._shared.set_status("idle")

    async def _await_turn(
        self,
        record: ExecutionRecord,
        request: Request,
        turns: Turns,
        ended_task: asyncio.Task[Any],
        running: Running,
        bound: Any,
    ) -> ExecutionRecord | None:
        """The wait is over, but another job may be running: wait for the turn, still
        heartbeating and watching the service (a cancel now still ends the wait)."""
        wake = clock.now() if request.until is None else request.until
        granted = turns.ask(wake)
        if not granted.done():
            bound.info("deferral over; the job runs when the running one ends")
        try:
            while not granted.done():
                self._shared.beat()
                if running.cloud_ended.is_set():
                    turns.withdraw(granted)
                    await self._ended(record, running.reason, bound)
                    return None
                if self._shared.stopping:
                    turns.withdraw(granted)
                    bound.info("stopping while deferred: the wait goes on after the restart")
                    return None
                await asyncio.wait(
                    {granted, ended_task}, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
        except BaseException:
            turns.withdraw(granted)
            raise
        if running.cloud_ended.is_set():
            turns.release()
            await self._ended(record, running.reason, bound)
            return None
        return record

    def _ask(self, record: ExecutionRecord, document: Mapping[str, Any]) -> asyncio.Future[Any]:
        assert self.consent is not None
        required = consent_requirement(document)
        prompt = required.prompt if required is not None else ""
        recorded = self.consent.request(record.key, prompt)
        if recorded is not None:  # decided while the agent was down
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(recorded)
            return future
        return asyncio.ensure_future(self.consent.wait(record.key))

    async def _until_done(
        self,
        record: ExecutionRecord,
        request: Request,
        decision: asyncio.Future[Any] | None,
        ended_task: asyncio.Task[Any],
        running: Running,
        bound: Any,
    ) -> ExecutionRecord | None:
        ref = record.key
        while True:
            self._shared.beat()
            if running.cloud_ended.is_set():
                await self._ended(record, running.reason, bound)
                return None
            if decision is not None and decision.done():
                return await self._decided(record, decision.result(), bound)
            now = clock.now()
            if request.until is not None and now >= request.until:
                bound.info("deferral over; running the job again", kind=request.kind)
                return record
            problem = self._over_limit(waited(record, now), request, record.document)
            if problem is not None:
                await self._forget(record)
                await self._outbox.decide(ref, Outcome.failed(problem), bound)
                return None
            if self._shared.stopping:
                bound.info("stopping while deferred: the wait goes on after the restart")
                if self.consent is not None:
                    self.consent.withdraw(ref)
                return None
            waiters: set[asyncio.Future[Any]] = {ended_task}
            if decision is not None:
                waiters.add(decision)
            await asyncio.wait(waiters, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)

    async def _decided(
        self, record: ExecutionRecord, decision: Any, bound: Any
    ) -> ExecutionRecord | None:
        """Consent given (run, after the window) or refused (REJECTED with the person's words)."""
        ref = record.key
        if not decision.accepted:
            reason = decision.reason or "rejected on the device"
            outcome = Outcome.rejected(reason, rejectedBy=decision.decided_by)
            await self._outbox.decide(ref, outcome, bound)
            await self._forget(record)
            return None
        bound.info("consent given", decided_by=decision.decided_by)
        return record

    async def forget_consent(self, record: ExecutionRecord) -> None:
        """The decision was acted on (recorded in the lifecycle): it is not needed again."""
        await self._forget(record)

    async def _forget(self, record: ExecutionRecord) -> None:
        if self.consent is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.consent.forget, record.key)

    async def _ended(self, record: ExecutionRecord, reason: str, bound: Any) -> None:
        bound.warning("the service ended the deferred execution", reason=reason)
        await self._store.call(Store.cancelled, record.key, reason)
        self._shared.note_outcome(record.key, f"cancelled: {reason}")
        await self._forget(record)
        await self._files.cleanup(record.key)


def waited(record: ExecutionRecord, now: float) -> float:
    """The execution's total deferral so far, the current one (if any) up to `now` included."""
    total = record.deferred_total_seconds
    if record.state is ExecutionState.DEFERRED and record.deferral is not None:
        total += max(0.0, now - record.deferral.since)
    return total
