"""The execution engine: take the next job, run it, report it exactly once, repeat.

This module is the loop; each job of it lives in its own module: `outbox` (outcomes decided once
and reported exactly once), `acquisition` (taking work, reconciling with the service),
`runner` (one execution, in the order its record allows), `supervision` (the running handler,
its progress, cancellation), `reboot` (reboots jobs ask for), `jobfiles` (directories, logs and
leftovers). The lifecycle they move an execution through is declared in `lifecycle`, and what a
record means after a crash is decided in `recovery`.

One job runs at a time (`turns`: with `jobs.run_others_while_deferred`, a deferred execution
waits beside the loop, which takes other work meanwhile; a handler runs only with the turn).
Work is looked for on start, after every resync (reconnect: records are first reconciled with
the service again, `acquisition`) and on every `notify`/`notify-next` event that names an
execution this device has not taken (`wakes`); events that arrive while a job runs only set a
flag that is acted on when it ends. Executions are identified by (namespace, jobId,
executionNumber), never by their document (AWS re-signs presigned URLs on every delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from jobs_agent.aio import wait_event
from jobs_agent.dispatch.containment import release as release_job_groups
from jobs_agent.engine.acquisition import LOST_RECORD_REASON as LOST_RECORD_REASON
from jobs_agent.engine.acquisition import Acquisition, Offer
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.orphans import remove_left_job_directories
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.packages import PackageReports
from jobs_agent.engine.reboot import Reboots
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.engine.shared import Dispatcher, Shared, StopRequested
from jobs_agent.engine.shared import EngineStatus as EngineStatus
from jobs_agent.engine.store import Store, StoreError, StoreLost, Taking
from jobs_agent.engine.turns import NEW_WORK, Turns
from jobs_agent.engine.wakes import named
from jobs_agent.inventory.reading import InventorySource
from jobs_agent.jobs.client import (
    JobExecutionsChanged,
    JobsClient,
    JobsEvent,
    NextJobExecutionChanged,
    Resync,
)
from jobs_agent.jobs.errors import JobsError
from jobs_agent.vocabulary import ExecutionRef

if TYPE_CHECKING:
    from jobs_agent.consent.server import ConsentDesk  # only when the socket is served
    from jobs_agent.engine.runner import Runner  # built at the first job
    from jobs_agent.engine.supervision import Supervisor  # built with the runner
    from jobs_agent.shadow.client import ShadowClient  # built at its first request
    from jobs_agent_handlers.api import MqttLink

log = structlog.get_logger("jobs_agent.engine")

LOOP_TICK_SECONDS = 30.0
"""The main loop wakes at least this often to prove to the watchdog that it is alive."""
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0


class Engine:
    _event_loop: asyncio.AbstractEventLoop
    """The loop `run` runs in, held for the idle wait (`Shared.parked`)."""

    def __init__(
        self,
        settings: EngineSettings,
        client: JobsClient,
        store: AsyncStore,
        dispatcher: Dispatcher,
        *,
        heartbeat_interval: float | None = None,
        on_status: Callable[[EngineStatus], None] | None = None,
        mqtt_link: MqttLink | None = None,
        consent: ConsentDesk | None = None,
        shadows: ShadowClient | None = None,
        inventory_sources: Sequence[InventorySource] = (),
        report_inventory_on_start: bool = True,
    ) -> None:
        """`mqtt_link`: the device's MQTT connection, lent to Python plugins (a stream
        download's own protocol client); `client` is the Jobs client on it. `consent`: the
        desk of the consent socket the daemon serves (None: a job asking for consent FAILS).
        `shadows`: the shadow client the software inventory is reported with (None: not
        reported), and `inventory_sources` where it is read (`engine/packages.py`)."""
        self.client = client
        self.store = store
        self._shared = shared = Shared(settings, dispatcher, on_status, mqtt_link)
        self._turns = Turns(shared.beat, shared.wake)
        self._files = JobFiles(shared, store)
        self._outbox = Outbox(shared, store, client, self._files)
        self._acquisition = Acquisition(shared, store, client, self._outbox, self._files)
        self._reboots = Reboots(shared, store, client, self._outbox)
        self._consent = consent
        self._heartbeat_interval = heartbeat_interval
        self._supervisor: Supervisor | None = None
        self._job_runner: Runner | None = None
        self._packages = PackageReports(
            shared,
            store,
            shadows,
            inventory_sources,
            report_on_start=report_inventory_on_start,
        )
        self._reconcile_needed = True
        """Square the records with the service before the next job: on start, and after every
        resync (reconnect), since the service may have ended executions meanwhile that
        start-next will never offer again (a record left RUNNING until a restart)."""
        self._first = True  # no reconciliation has ended yet in this process
        self._store_broken = False
        self._last_acquire = 0.0
        self._retry_delay = RETRY_MIN_SECONDS
        self._coalesced = 0  # the client's count of events replaced unread, as last seen

    @property
    def _runner(self) -> Runner:
        """The runner, with the supervisor, the deferrals and the document refresher it alone
        uses: built when the first record is processed (a job taken, or one recovery acts on),
        so that an idle agent holds none of their code (issue 18); the same code runs the first
        job as every later one."""
        if self._job_runner is None:
            from jobs_agent.engine.deferral import Deferrals
            from jobs_agent.engine.refresh import DocumentRefresher
            from jobs_agent.engine.runner import Runner
            from jobs_agent.engine.supervision import Supervisor

            shared, store, files = self._shared, self.store, self._files
            self._supervisor = supervisor = Supervisor(shared, store, self.client, files)
            deferrals = Deferrals(shared, store, self._outbox, files, supervisor, self._consent)
            self._job_runner = Runner(
                shared,
                store,
                self._outbox,
                self._reboots,
                files,
                supervisor,
                deferrals,
                DocumentRefresher(shared, self.client),
                self._packages,
                self._turns,
                heartbeat_interval=self._heartbeat_interval,
            )
        return self._job_runner

    async def _first_runner(self) -> Runner:
        """The runner, for the first record processed: once the start-up sweep of the job
        groups an earlier agent left has ended (`JobFiles.start_sweep`), which the engine's
        first request does not wait for, but containment needs done before any handler."""
        await self._files.swept()
        return self._runner

    # -- public control -----------------------------------------------------------------------
    def reconfigure(self, settings: EngineSettings, dispatcher: Dispatcher) -> None:
        """New settings and handlers (a SIGHUP reload), read from here on; a job already running
        keeps the handler it resolved and its progress reporter. The state directory and the
        namespaces stay as started (the caller keeps them: they change only with a restart)."""
        self._shared.settings = settings
        self._shared.dispatcher = dispatcher
        self._shared.wake()

    def wake(self) -> None:
        self._shared.wake()

    def request_stop(self, *, immediate: bool = False) -> None:
        """Stop taking jobs; with `immediate`, also abandon the running handler now."""
        self._shared.request_stop(immediate=immediate)

    @property
    def settings(self) -> EngineSettings:
        return self._shared.settings

    @property
    def running_job(self) -> ExecutionRef | None:
        running = None if self._supervisor is None else self._supervisor.running
        return running.ref if running else None

    @property
    def status(self) -> EngineStatus:
        return self._shared.status

    @property
    def outcomes(self) -> OrderedDict[ExecutionRef, str]:
        """What this process reported (or noted) for its most recent executions."""
        return self._shared.outcomes

    def listen_outcomes(self, listener: Callable[[ExecutionRef, str], None]) -> None:
        """Tell `listener` every outcome noted from now on, as `outcomes` gets it: `sim fleet`
        counts a rollout's outcomes as they come, where looking at every engine's `outcomes`
        twenty times a second cost a thing more the bigger its fleet (issue 18)."""
        self._shared.outcome_listeners.append(listener)

    @property
    def loop_heartbeat(self) -> float:
        """Refreshed by the main loop; the systemd watchdog checks it is recent."""
        return self._shared.loop_heartbeat

    @property
    def idle(self) -> bool:
        """Waiting for an event, with none unread and no request out: this engine makes no
        request until the service (or the idle poll, or a signal) says something. `sim fleet`
        counts a rollout's requests once its devices are idle: a device that has just reported
        still asks for its next job (issue 18)."""
        shared = self._shared
        return (
            shared.waiting
            and not shared.wake_event.is_set()
            and not self.client.events_unread
            and not self.client.requests_waiting
        )

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._files.start_sweep()  # the first handler waits for its end (`_first_runner`)
        await remove_left_job_directories(self._shared.settings.state_dir, self.store)
        await self._packages.start()
        self._event_loop = asyncio.get_running_loop()  # asked once: `Shared.parked`
        events = asyncio.create_task(self._consume_events(), name="engine-events")
        self._shared.wake()
        try:
            await self._loop()
        finally:
            await self._turns.close()
            await self._packages.close()
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            await self._files.sweep_ended()  # a failed one was said where it failed
            # The jobs' processes are stopped by now: the cgroup base goes if it is empty.
            release_job_groups(self._shared.settings.state_dir)
            self._shared.set_status("stopped")

    async def _loop(self) -> None:
        shared = self._shared
        while not shared.stopping:
            shared.beat()
            if not shared.wake_event.is_set():
                await self._settle()
            await self._wait_for_wake()
            if shared.stopping:
                break
            shared.wake_event.clear()
            try:
                done = await self._round()
            except StopRequested:
                break
            except Exception as exc:  # every kind is logged, and the loop goes on
                self._failed(exc)
                done = False
            if not done:
                await self._settle()
                await self._retry_later(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    async def _round(self) -> bool:
        """One pass: housekeeping, the outbox, reconciliation, then the next job. False when
        something could not be done yet (retried after a growing pause)."""
        if self._shared.prune_soon:
            self._shared.prune_soon = False
            await self.store.call(Store.prune)
        if self._outbox.undecided:
            await self._outbox.decide_undecided()
            self._packages.recorded()  # a SUCCEEDED job's packages may be among them
        if not await self._outbox.flush():
            return False
        self._packages.kick()
        if self._turns.take_free(NEW_WORK):  # nothing deferred waits for it: the usual case
            try:
                found = await self._with_turn()
            finally:
                self._turns.release()
        else:
            async with self._turns.turn(NEW_WORK):
                found = await self._with_turn()
        if found is None:
            return True
        self._retry_delay = RETRY_MIN_SECONDS
        if found:
            self._shared.hint()  # more, if events named more (or the job did not end)
        return True

    async def _with_turn(self) -> bool | None:
        """`_round`'s part with the turn held: no handler runs meanwhile (one waiting aside
        runs only with it). Whether a job was found; None: a reboot is awaited."""
        if self._reconcile_needed and not self._reboots.awaiting:
            await self._reconcile()
        if self._acquisition.suspected and not self._reboots.awaiting:
            await self._acquisition.recheck_suspected(set(self._turns.aside))
        await self._carry_on_held()
        if self._reboots.awaiting:
            return None
        if self._store_broken:
            await self.store.call(Store.probe)  # take no job the database cannot record
            self._store_broken = False
            log.info("state database writable again")
        return await self._take_and_run()

    async def _reconcile(self) -> None:
        self._reconcile_needed = False
        try:
            await self._acquisition.reconcile(watched=set(self._turns.aside), first=self._first)
            self._first = False
        except BaseException:
            self._reconcile_needed = True
            raise

    async def _carry_on_held(self) -> None:
        """Run what is past its point of no return (handlers/api.py `POINT_OF_NO_RETURN`) and
        was ended by the service while the agent was away (it will not be offered again), or
        whose reboot did not happen (its handler decides what that means)."""
        for held in (self._acquisition.held, self._reboots.handed_back):
            while held and not self._shared.stopping and not self._reboots.awaiting:
                record = await self.store.call(Store.get, held[0])
                if record is not None:
                    runner = self._job_runner or await self._first_runner()
                    await runner.process(record, None)
                held.pop(0)

    async def _take_and_run(self) -> bool:
        if self._shared.stopping:
            return False
        aside = set(self._turns.aside)
        if aside and not self._shared.settings.run_others_while_deferred:
            return False  # switched off by a reload: nothing else runs while they wait
        wakes = self._shared.wakes
        if not aside and not wakes.needed():
            # Events named only what this device took (engine/wakes.py). The database is
            # checked as the look after a job checked it (a file lost meanwhile is told now,
            # not at the next job), and idle is said as it said (a job that ended at once was
            # not announced).
            await self.store.call(Store.verify)
            self._shared.set_status("idle")
            return False
        self._last_acquire = time.monotonic()
        before = wakes.looking()
        try:
            offer = await self._acquisition.take_next(aside)
        except BaseException:
            wakes.failed()
            raise
        wakes.looked(before, found=offer is not None)
        if offer is not None:
            wakes.hold(offer.ref)
        # Read before the offer is recorded: a read after it would write the new start record
        # in a transaction of its own, where it goes with RUNNING's (issue 18). The record just
        # taken is left out of what was passed over either way.
        passed_over, taking = await self._passed_over(offer, aside)
        record = None if offer is None else await self._acquisition.record(offer, taking)
        if self._reconcile_needed or passed_over:
            await self._reconcile()
            if record is not None:  # the service may have ended it too: then closed
                self._acquisition.unsettled.pop(record.key, None)  # it runs now
                record = await self.store.call(Store.get, record.key)
                if record is not None and record.state is ExecutionState.CANCELLED:
                    record = None
        if offer is None:
            if not aside:
                self._shared.set_status("idle")
            return False
        if record is not None:
            runner = self._job_runner or await self._first_runner()
            await runner.process(record, offer.execution.job_document)
        if record is None or record.key not in self._shared.outcomes:
            wakes.look = True  # not ended by this device: the service published no end of it
        return True

    async def _passed_over(
        self, offer: Offer | None, aside: set[ExecutionRef]
    ) -> tuple[bool, Taking | None]:
        """Did the service end an execution this device has in progress after the last
        reconciliation? Start-next passed over one of its records (the service hands back
        IN_PROGRESS executions first: it ended it in between). The other sign, a resync that
        came while the next job was taken (a start-next out during a disconnect is sent again
        after it), is `_reconcile_needed`, looked at once the offer is recorded."""
        if self._reconcile_needed or aside:
            return False, None  # reconciled anyway, or taken by name: nothing was passed over
        taken = None if offer is None else offer.ref
        keys, taking = await self._acquisition.passed_over(taken)
        return bool(keys), taking

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, JobsError) and self._shared.stopping:
            # No retry follows: the loop ends. What the request was for is kept (the start-next
            # marker, the outbox) and the next start takes it up again.
            log.info("stopping: the request to the jobs service is given up", error=str(exc))
        elif isinstance(exc, JobsError):
            log.warning("jobs service not reachable, will retry", error=str(exc))
        elif isinstance(exc, StoreError):
            self._store_broken = True
            if isinstance(exc, StoreLost):
                self._shared.set_status("not taking jobs: the state database was lost")
            log.error("state database error; no job is taken until it works", error=str(exc))
        else:
            # A bug must not turn into a crash loop that strands the outbox: log it with its
            # traceback and carry on after a pause.
            log.exception("unexpected error in the engine; continuing after a pause", exc_info=exc)

    async def _settle(self) -> None:
        """Before a wait: what the store keeps for its next transaction (a job's REPORTED,
        which rides with the next job's RUNNING while work follows) is written now, so that
        nothing waits in memory while the agent does (`Store.settle`)."""
        if self.store.target.unsettled:
            try:
                await self.store.call(Store.settle)
            except StoreError as exc:  # kept for the next write; said as a round's failure
                self._failed(exc)

    async def _wait_for_wake(self) -> None:
        """Wait for an event; idle, look for work every `jobs.idle_poll_seconds` anyway (a
        safety net against a lost notification; 0 = never: keep-alives only)."""
        while not await self._shared.parked(self._event_loop, LOOP_TICK_SECONDS):
            self._shared.beat()
            poll = self._shared.settings.idle_poll_seconds
            if poll and time.monotonic() - self._last_acquire >= poll:
                self._shared.wake()
                return

    async def _retry_later(self, delay: float) -> None:
        """Pause after a failed round; not at all once stopping: the round may have failed
        because of the stop (a request given up, `Exchange.stop_waiting_for_link`), whose
        wake-up clearing the event here would lose (the stop waited the pause out)."""
        if self._shared.stopping:
            return
        self._shared.wake_event.clear()
        await wait_event(self._shared.wake_event, delay)
        self._shared.wake()

    # -- events -------------------------------------------------------------------------------
    async def _consume_events(self) -> None:
        """Events as they come: notifications straight from the client's delivery
        (`JobsClient.listen`), a resync (and what comes while one is unread) through
        `events()`, in the order they arrived either way."""
        self.client.listen(self._on_event)
        try:
            async for event in self.client.events():
                self._on_event(event)
        finally:
            self.client.listen(None)

    def _on_event(self, event: JobsEvent) -> None:
        """One event; nothing here waits. Called from inside the transport's delivery of a
        message, so a failure is logged here and never reaches the transport (it ended the
        events' task before, which left the engine deaf to events until its stop)."""
        try:
            if isinstance(event, Resync):
                log.info("resync after reconnect", session_present=event.session_present)
                self._reconcile_needed = True  # the records, before the next job is taken
                if self._supervisor is not None:  # none runs or waits before the first job
                    self._supervisor.recheck()  # the running one and those waiting aside
                self._packages.link_back()
                self._shared.wake()
            elif isinstance(event, NextJobExecutionChanged):
                self._heard(event)
            elif isinstance(event, JobExecutionsChanged):
                if self._supervisor is not None:
                    self._supervisor.check_still_listed(event)
                if self._acquisition.unsettled:  # an earlier agent's record not taken up yet
                    self._acquisition.suspect(event)
                self._heard(event)
        except Exception as exc:  # logged with its traceback; the next event is heard
            log.exception("an event of the jobs service could not be handled", exc_info=exc)

    def _heard(self, event: JobExecutionsChanged | NextJobExecutionChanged) -> None:
        """A round that looks for work if the event named an execution this device did not
        take, or if an event was replaced unread (engine/wakes.py); none if it named only
        what it took or nothing, unless a record it suspects must be checked: the round would
        have nothing to do (every other reason for one wakes the loop itself)."""
        wakes = self._shared.wakes
        coalesced = self.client.stats.events_coalesced
        if coalesced != self._coalesced:
            self._coalesced = coalesced
            wakes.look = True
        wakes.hear(named(event))
        if wakes.needed() or self._acquisition.suspected:
            self._shared.hint()
