"""Watching one running execution: its handler, its progress, the service's view of it, and the
agent's stop requests.

The handler runs as a task; the supervisor waits for the first of: the handler ends, the service
ended the execution (cancelled, removed, timed out: stop the handler, record CANCELLED, report
nothing), or the agent is stopping (a resumable handler is suspended and continues after the
restart; anything else gets `jobs.stop_timeout_seconds` to finish). A `notify` event that no
longer lists the running execution is confirmed with the service before anything is stopped,
since events may arrive out of order.

It waits in one plain future (`Running.woken`) that each of those completes directly: the
handler's task as its coroutine ends (`watched`), `cloud_ended`, the agent's `stop_now` (a
callback registered once) and the stop's time limit (a timer). A task per event and an
`asyncio.wait` over them cost every script job two tasks made, stepped, cancelled and stepped
again, and the wait's done-callbacks (issue 18). The engine's heartbeat while a handler runs is
one timer for the whole process (`_tick`), re-armed only while something is supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.datamodel import model
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import Store, StoreError
from jobs_agent.jobs.client import JobExecutionsChanged, JobsClient
from jobs_agent.jobs.errors import CLOUD_ENDED_CODES, JobsError, JobsRejected, RequestTimeout
from jobs_agent.jobs.status_details import sanitize_status_details
from jobs_agent.redact import redact_mapping
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from jobs_agent_handlers.api import JobDeferred, Outcome, point_of_no_return

if TYPE_CHECKING:
    from jobs_agent.engine.context import EngineJobContext  # built at the first job

log = structlog.get_logger("jobs_agent.engine")

POLL_SECONDS = 1.0
"""How often the supervisor refreshes the engine's heartbeat while a handler runs."""
CONFIRM_RETRY_MIN_SECONDS = 1.0
CONFIRM_RETRY_MAX_SECONDS = 60.0
"""Between a timed-out "did the service end it?" and the next (each waits its request timeout
too): one question a minute at worst, for as long as the execution is watched."""


@model(frozen=False)
class Running:
    """The execution whose handler runs now."""

    ref: ExecutionRef
    ctx: EngineJobContext
    cloud_ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    woken: asyncio.Future[None] | None = None
    """What the supervisor awaits while the handler runs; anything it must look at completes
    it (`wake`)."""
    stop_timed_out: bool = False
    """The agent is stopping and `jobs.stop_timeout_seconds` have passed."""

    def wake(self) -> None:
        woken = self.woken
        if woken is not None and not woken.done():
            woken.set_result(None)


async def watched(run: Coroutine[Any, Any, Outcome], running: Running) -> Outcome:
    """The handler's run, waking its supervisor from within its last step: the task's end then
    schedules nothing but the supervisor's wake-up (no done-callback to chain it)."""
    try:
        return await run
    finally:
        running.wake()


class Supervisor:
    def __init__(
        self, shared: Shared, store: AsyncStore, client: JobsClient, files: JobFiles
    ) -> None:
        self._shared = shared
        self._store = store
        self._client = client
        self._files = files
        self.running: Running | None = None
        """The execution whose handler runs (or, deferred, whose wait holds the loop)."""
        self.waiting: dict[ExecutionRef, Running] = {}
        """Deferred executions whose wait watches the service too (`Deferrals.wait`)."""
        self._confirming: dict[int, bool] = {}
        """Executions (by `id` of their `Running`) the service is being asked about: True when
        another reason to ask came meanwhile."""
        self._supervised: Running | None = None
        """The execution `supervise` waits on (one at a time: `engine/turns.py`)."""
        self._ticking: asyncio.TimerHandle | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        shared.on_stop_now.append(self._wake_supervised)

    # -- the handler -------------------------------------------------------------------------
    async def supervise(
        self, handler_task: asyncio.Task[Outcome], running: Running, bound: Any
    ) -> Outcome | None:
        """The handler's outcome; None when the execution was cancelled by the service or
        suspended for a stop (both already recorded). The handler's task runs `watched`."""
        shared = self._shared
        shared.beat()
        if handler_task.done():  # the handler's outcome wins over a cancel or a stop that came
            return _result(handler_task, bound)  # with it, as in the loop below
        loop = asyncio.get_running_loop()
        self._supervised = running
        if self._ticking is None:
            self._ticking = loop.call_later(POLL_SECONDS, self._tick, loop)
        carried_on = False
        try:
            while not handler_task.done():
                if running.cloud_ended.is_set() and not carried_on:
                    if self._carried_on(running, bound):
                        carried_on = True
                        continue
                    await self._cancelled_by_service(handler_task, running, bound)
                    return None
                if shared.stop_now.is_set() or running.stop_timed_out:
                    return await self._stop_for_shutdown(handler_task, running, bound)
                self._arm_stop_timer(loop, running)
                running.woken = loop.create_future()
                await running.woken
        finally:
            running.woken = None
            self._supervised = None
            if self._stop_timer is not None:
                self._stop_timer.cancel()
                self._stop_timer = None
        return _result(handler_task, bound)

    def _wake_supervised(self) -> None:
        if self._supervised is not None:
            self._supervised.wake()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every `POLL_SECONDS` while a handler is supervised: the engine's heartbeat, and the
        stop's time limit armed once the agent is stopping. Not re-armed once nothing is: the
        next `supervise` arms it again (no timer made and cancelled per job)."""
        running = self._supervised
        if running is None:
            self._ticking = None
            return
        self._shared.beat()
        self._arm_stop_timer(loop, running)
        self._ticking = loop.call_later(POLL_SECONDS, self._tick, loop)

    def _arm_stop_timer(self, loop: asyncio.AbstractEventLoop, running: Running) -> None:
        if self._shared.stopping and self._stop_timer is None:
            seconds = self._shared.settings.stop_timeout_seconds
            self._stop_timer = loop.call_later(seconds, _stop_timed_out, running)

    def _carried_on(self, running: Running, bound: Any) -> bool:
        """The service ended an execution whose handler is past its point of no return: it is
        not stopped (handlers/api.py `POINT_OF_NO_RETURN`); its outcome is reported once."""
        reason = point_of_no_return(running.ctx.checkpoint_data)
        if reason is None:
            return False
        bound.warning(
            "the service ended the execution after the handler's point of no return;"
            " it runs to its end",
            reason=running.reason,
            point_of_no_return=reason,
        )
        self._shared.note_outcome(
            running.ref, f"ended by the service after its point of no return: {running.reason}"
        )
        return True

    async def _cancelled_by_service(
        self, handler_task: asyncio.Task[Outcome], running: Running, bound: Any
    ) -> None:
        bound.warning(
            "the service ended the execution; stopping the handler", reason=running.reason
        )
        await self._stop_handler(handler_task, running.ctx)
        await self._store.call(Store.cancelled, running.ref, running.reason)
        self._shared.note_outcome(running.ref, f"cancelled: {running.reason}")
        await self._files.cleanup(running.ref)

    async def _stop_handler(
        self, handler_task: asyncio.Task[Outcome], ctx: EngineJobContext
    ) -> None:
        ctx.cancelled.set()
        grace = self._shared.settings.kill_grace_seconds + 5.0
        done, _ = await asyncio.wait({handler_task}, timeout=grace)
        if not done:
            handler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler_task

    async def _stop_for_shutdown(
        self, handler_task: asyncio.Task[Outcome], running: Running, bound: Any
    ) -> Outcome | None:
        record = await self._store.call(Store.get, running.ref)
        resumable = bool(record and record.resumable)
        await self._stop_handler(handler_task, running.ctx)
        if resumable:
            from jobs_agent.engine.recovery import SUSPENDED  # loaded by then (`Runner.process`)

            await self._store.call(
                Store.transition, running.ref, ExecutionState.RUNNING, note=SUSPENDED
            )
            bound.info("resumable handler suspended for shutdown; it continues after restart")
            return None
        from jobs_agent.dispatch.devicec import interrupted_reboot_step  # loaded by then

        record = await self._store.call(Store.get, running.ref)
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

    # -- progress ------------------------------------------------------------------------------
    async def send_progress(
        self, running: Running, details: Mapping[str, Any] | None, step_timeout: int | None
    ) -> bool:
        """One IN_PROGRESS update (the reporter's sender); False once the service ended it."""
        ref = running.ref
        sanitized = None
        if details is not None:
            sanitized = sanitize_status_details(redact_mapping(details))
            if self.running is running:  # not a deferred one waiting beside it
                self._shared.set_status("running", str(ref), **sanitized)
        try:
            await self._client.update(
                ref,
                JobExecutionStatus.IN_PROGRESS,
                status_details=sanitized,
                step_timeout=step_timeout,
            )
        except JobsRejected as exc:
            if exc.code in CLOUD_ENDED_CODES:
                self.cloud_ended(running, f"the service refused an update: {exc.code}")
                return False
            log.warning("progress update refused", job_id=ref.job_id, code=str(exc.code))
            return True
        except JobsError as exc:
            log.info("progress update not delivered", job_id=ref.job_id, error=str(exc))
            return True
        if sanitized:
            await self._save_progress(ref, sanitized)
        return True

    async def keep_last_progress(self, ref: ExecutionRef, progress: Mapping[str, Any]) -> None:
        """Record a step's last progress, sent or not, when it defers: the announcement carries
        it (`deferral.Deferrals.wait`), so what the service sees does not depend on whether the
        step outlived one progress interval (as the final report: `runner.with_last_progress`)."""
        if progress:
            await self._save_progress(ref, sanitize_status_details(redact_mapping(progress)))

    async def _save_progress(self, ref: ExecutionRef, sanitized: dict[str, Any]) -> None:
        """The last progress is a convenience for later reports: a database that cannot take
        it loses nothing the outcome depends on."""
        with contextlib.suppress(StoreError):
            await self._store.call(Store.save_progress, ref, sanitized)

    # -- the service's view ----------------------------------------------------------------------
    def _watched(self) -> list[Running]:
        watched = list(self.waiting.values())
        if self.running is not None and all(w is not self.running for w in watched):
            watched.append(self.running)
        return watched

    def check_still_listed(self, event: JobExecutionsChanged) -> None:
        for running in self._watched():
            if running.ref.namespace != event.namespace:
                continue
            if not event.lists(running.ref.job_id, running.ref.execution_number):
                # Delivery order is not guaranteed: confirm with the service before stopping.
                self._confirm(running)

    def recheck(self) -> None:
        """After a resync (reconnect): the notification that the service ended the running
        execution, or one waiting aside, may have been lost with the link, and without a step
        timer nothing else asks before the handler ends (or its wait does). Ask for each."""
        for running in self._watched():
            self._confirm(running)

    def _is_watched(self, running: Running) -> bool:
        return self.running is running or self.waiting.get(running.ref) is running

    def _confirm(self, running: Running) -> None:
        """Ask the service whether it ended `running`, once at a time per execution: a reason
        to ask that comes while a question is out makes it ask once more after its answer (the
        answer may predate what prompted the second reason)."""
        key = id(running)
        if key in self._confirming:
            self._confirming[key] = True
            return
        self._confirming[key] = False
        self._shared.background(self._confirm_cloud_ended(running, key))

    async def _confirm_cloud_ended(self, running: Running, key: int) -> None:
        """A question that times out is asked again, with backoff, for as long as the execution
        is watched: its answer can be lost (a reply the service sent while the link came back,
        a dropped packet), and nothing else asks before the handler ends, which may be never."""
        backoff = Backoff(CONFIRM_RETRY_MIN_SECONDS, CONFIRM_RETRY_MAX_SECONDS)
        try:
            while self._is_watched(running) and not running.cloud_ended.is_set():
                self._confirming[key] = False
                try:
                    ended = await self._client.ended(running.ref)
                except RequestTimeout:
                    await asyncio.sleep(backoff.next_delay())
                    continue
                except JobsError:
                    ended = None  # refused or the link is down: a resync asks again
                if ended is not None:
                    self.cloud_ended(running, f"the service ended the execution ({ended})")
                if not self._confirming[key]:
                    return
        finally:
            del self._confirming[key]

    def cloud_ended(self, running: Running, reason: str) -> None:
        if self._is_watched(running) and not running.cloud_ended.is_set():
            running.reason = reason
            running.cloud_ended.set()
            running.wake()


def _stop_timed_out(running: Running) -> None:
    running.stop_timed_out = True
    running.wake()


def _result(handler_task: asyncio.Task[Outcome], bound: Any) -> Outcome:
    try:
        return handler_task.result()
    except JobDeferred:
        raise  # not an outcome: the runner records the deferral
    except asyncio.CancelledError:
        return Outcome.failed("the handler was cancelled")
    except Exception as exc:  # the dispatcher maps handler errors; this is a last resort
        bound.exception("handler crashed")
        return Outcome.failed(f"{type(exc).__name__}: {exc}")
