"""Taking work from the service, and squaring the device's records with it.

Default namespace: StartNextPendingJobExecution, with the start-next marker around the request
(`Store.mark_taking`): the service moves the execution to IN_PROGRESS before the device can
record it, and the marker tells a restarted agent that the one execution it then finds in
progress without a record was never run. Namespaced jobs follow the Greengrass nucleus's flow:
DescribeJobExecution on `$next`, recorded (RECEIVED) before UpdateJobExecution to IN_PROGRESS.

While executions wait aside (`jobs.run_others_while_deferred`, `engine/turns.py`), start-next
would hand back the deferred one (IN_PROGRESS executions come first): work is then taken by name,
GetPendingJobExecutions then, for a QUEUED one, the namespaced flow above in the default
namespace (recorded RECEIVED, UpdateJobExecution to IN_PROGRESS with `expectedVersion`).

Reconciliation runs before the first job, and again whenever the agent may have missed what the
service did (start-next never offers an ended execution again): after every reconnect, and when
start-next passes over an execution the device has in progress (`passed_over`). Records of
executions the service ended while the agent was away (or not listening) are closed, and an
execution the service shows in progress but the device has no record of is reported FAILED,
never run (the record was lost). The records it leaves active that nothing else watches
(`unsettled`) are re-checked when a `notify` no longer lists them: the service may end one
while the link stays up, where no reconnect nor start-next would tell.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import structlog

from jobs_agent.datamodel import model
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.lifecycle import (
    ACTIVE_STATES,
    DEFERRED,
    RUNNING,
    STARTED,
    ExecutionState,
)
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import ExecutionRecord, Store, Taking
from jobs_agent.engine.turns import next_by_name
from jobs_agent.jobs.client import JobExecutionsChanged, JobsClient
from jobs_agent.jobs.errors import CLOUD_ENDED_CODES, ErrorCode, JobsRejected
from jobs_agent.jobs.models import JobExecution, JobExecutionSummary
from jobs_agent.log import enabled
from jobs_agent.vocabulary import (
    NEXT_JOB_ID,
    ExecutionRef,
    JobExecutionStatus,
)
from jobs_agent_handlers.outcome import Outcome, point_of_no_return

log = structlog.get_logger("jobs_agent.engine")

_IN_PROGRESS = (STARTED, RUNNING, DEFERRED)
"""The states of a record in progress on the service (read as globals: `lifecycle.RECEIVED`'s
note)."""

LOST_RECORD_REASON = (
    "the device lost its record of this execution (its state database was deleted or replaced,"
    " or the agent stopped between taking the job and recording it): not run again, so that no"
    " step runs twice"
)


@model
class Offer:
    """An execution the service gave this device, as it gave it."""

    ref: ExecutionRef
    execution: JobExecution


def _bound(ref: ExecutionRef) -> Any:
    return log.bind(
        job_id=ref.job_id, execution_number=ref.execution_number, namespace=ref.namespace
    )


class Acquisition:
    def __init__(
        self,
        shared: Shared,
        store: AsyncStore,
        client: JobsClient,
        outbox: Outbox,
        files: JobFiles,
    ) -> None:
        self._shared = shared
        self._store = store
        self._client = client
        self._outbox = outbox
        self._files = files
        self.held: list[ExecutionRef] = []
        """Executions the service ended while the agent was away, yet past their point of no
        return: the engine runs them to their end before it takes new work."""
        self.unsettled: dict[ExecutionRef, bool] = {}
        """Records the last reconciliation left active that no handler, wait or hold watches
        (an earlier agent's, until start-next or `$next` hands them back), with whether they
        are in progress on the service: a `notify` that no longer lists one has it re-checked
        (`suspect`), since nothing else would ask while the link stays up."""
        self.suspected: set[ExecutionRef] = set()
        """Unsettled records a `notify` no longer listed: re-checked before the next job."""

    # -- taking the next execution ------------------------------------------------------------
    async def take_next(self, aside: Collection[ExecutionRef] = ()) -> Offer | None:
        """The next execution for this device: the default namespace first, then each
        configured namespace in order. None when nothing is pending (or a stop came). With
        executions waiting `aside`, the default namespace's work is taken by name, and none of
        them is offered again."""
        settings = self._shared.settings
        if aside:
            offer = await self.take_by_name(aside)
            if offer is not None:
                return offer
        else:
            # Never take a job the database could not keep track of (verify); leave the marker.
            await self._store.call(Store.begin_taking)
            execution = await self._client.start_next(step_timeout=settings.step_timeout_minutes)
            if execution is not None:
                self._shared.crash.reached("taken")
                return Offer(_ref(None, execution), execution)
            await self._store.call(Store.taken)
        for namespace in settings.namespaces:
            if self._shared.stopping:
                return None
            execution = await self._take_next_in_namespace(namespace)
            if execution is not None and _ref(namespace, execution) not in aside:
                return Offer(_ref(namespace, execution), execution)
        return None

    async def take_by_name(self, aside: Collection[ExecutionRef]) -> Offer | None:
        """The default namespace's next execution other than those waiting aside: one in
        progress that this device must carry on (recovery decides how), else the first QUEUED
        one, started by name. Never StartNextPendingJobExecution: it returns the deferred
        execution again."""
        await self._store.call(Store.verify)  # take no job the database cannot record
        # Reads, given up on a stop (`Shared.unless_stopping`): nothing is taken until the
        # start by name, whose answer is waited for.
        pending = await self._shared.unless_stopping(self._client.get_pending())
        if not self._shared.settings.run_others_while_deferred:
            return None  # switched off by a reload meanwhile: nothing else while they wait
        chosen = next_by_name(
            [_summary_ref(s) for s in pending.in_progress],
            [_summary_ref(s) for s in pending.queued],
            aside,
        )
        while chosen is not None and not self._shared.stopping:
            ref, queued = chosen
            execution = await self._describe(ref)
            if execution is not None and not queued:
                return Offer(ref, execution)
            if execution is not None and execution.status is JobExecutionStatus.QUEUED:
                started = await self._start_by_name(ref, execution)
                if started is not None:
                    return Offer(ref, started)
            # Gone or moved on meanwhile: the next one, this one left out.
            aside = {*aside, ref}
            chosen = next_by_name(
                [_summary_ref(s) for s in pending.in_progress],
                [_summary_ref(s) for s in pending.queued],
                aside,
            )
        return None

    async def _describe(self, ref: ExecutionRef) -> JobExecution | None:
        try:
            return await self._shared.unless_stopping(self._client.describe(ref))
        except JobsRejected as exc:
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND or exc.cloud_ended:
                return None
            raise

    async def _start_by_name(
        self, ref: ExecutionRef, execution: JobExecution
    ) -> JobExecution | None:
        """Record (RECEIVED) before moving to IN_PROGRESS, as for a namespaced job."""
        record = await self._store.call(Store.get, ref)
        if record is None:
            await self._store.call(
                Store.record_received, ref, execution.job_document or {}, execution.version_number
            )
        elif record.state is not ExecutionState.RECEIVED:
            return None  # recorded further along: recovery decides when it is offered
        started = await self._start_namespaced(ref, execution)
        if started is not None:
            self._shared.crash.reached("taken")
        return started

    async def _take_next_in_namespace(self, namespace: str) -> JobExecution | None:
        """Describe `$next` and move it to IN_PROGRESS (the reference's namespaced flow)."""
        try:
            # A read, given up on a stop: `$next` is recorded before it is started.
            describe = self._client.describe(NEXT_JOB_ID, namespace=namespace)
            execution = await self._shared.unless_stopping(describe)
        except JobsRejected as exc:
            if exc.code == ErrorCode.RESOURCE_NOT_FOUND:
                return None  # some readings of the API answer "nothing next" this way
            raise
        if execution is None or execution.status is not JobExecutionStatus.QUEUED:
            return execution
        ref = _ref(namespace, execution)
        record = await self._store.call(Store.get, ref)
        if record is None:
            await self._store.call(
                Store.record_received, ref, execution.job_document or {}, execution.version_number
            )
        elif record.state is not ExecutionState.RECEIVED:
            return execution  # recorded further along: recovery decides, nothing is started
        return await self._start_namespaced(ref, execution)

    async def _start_namespaced(
        self, ref: ExecutionRef, execution: JobExecution
    ) -> JobExecution | None:
        version = execution.version_number
        for attempt in range(2):
            try:
                reply = await self._client.update(
                    ref.job_id,
                    JobExecutionStatus.IN_PROGRESS,
                    expected_version=version,
                    step_timeout=self._shared.settings.step_timeout_minutes,
                    execution_number=execution.execution_number,
                    include_job_execution_state=True,
                    namespace=ref.namespace,
                )
            except JobsRejected as exc:
                if exc.code == ErrorCode.VERSION_MISMATCH and exc.execution_state and attempt == 0:
                    if exc.execution_state.status is not JobExecutionStatus.QUEUED:
                        return None  # someone else moved it; look again on the next wake
                    version = exc.execution_state.version_number
                    continue
                if exc.code in CLOUD_ENDED_CODES:
                    await self._store.call(Store.cancelled, ref, f"not started: {exc.code}")
                    return None
                raise
            state = reply.execution_state
            new_version = state.version_number if state else None
            await self._store.call(
                Store.transition, ref, ExecutionState.STARTED, version_number=new_version
            )
            return execution
        return None

    # -- recording what was taken -------------------------------------------------------------
    async def record(self, offer: Offer, taking: Taking | None = None) -> ExecutionRecord | None:
        """The device's record of `offer`, created (STARTED) when there is none yet; None when
        there is nothing to run: its outcome waits for the database, or the record was lost.
        `taking`: what `passed_over` read for the offer (its record among it), not read again."""
        ref, execution = offer.ref, offer.execution
        self.unsettled.pop(ref, None)  # handed back: its run (or its recovery) watches it now
        if ref in self._outbox.undecided:
            return None  # finished; its outcome is written as soon as the database works
        if ref.namespace is None:
            # On the loop: the record there is, or a new one written with RUNNING, in its
            # transaction (`Store.record_taken`: the start-next marker stays until then).
            taken, created = await self._store.call(
                Store.record_taken,
                ref,
                execution.job_document or {},
                execution.version_number,
                taking,
            )
            if created:
                self._started(ref)
            elif taken.state is ExecutionState.RECEIVED:
                # Taken by name (`take_by_name`) and moved to IN_PROGRESS before a restart.
                taken = await self._store.call(Store.transition, ref, ExecutionState.STARTED)
            return taken
        record = await self._store.call(Store.get, ref)
        if record is None and execution.status is JobExecutionStatus.IN_PROGRESS:
            # A namespaced execution is recorded before it is moved to IN_PROGRESS: one that
            # already is, without a record, was taken by a database this device has lost.
            await self.fail_lost(ref, execution.version_number)
            return None
        if record is None:
            record = await self._store.call(
                Store.record_received,
                ref,
                execution.job_document or {},
                execution.version_number,
                ExecutionState.STARTED,
            )
            self._started(ref)
        elif record.state is ExecutionState.RECEIVED:
            record = await self._store.call(Store.transition, ref, ExecutionState.STARTED)
        return record

    def _started(self, ref: ExecutionRef) -> None:
        self._shared.crash.reached("started")
        if enabled(logging.INFO):  # no logger built for a line the level drops (issue 18)
            _bound(ref).info("job started")

    # -- reconciliation -----------------------------------------------------------------------
    async def reconcile(self, watched: Collection[ExecutionRef] = (), *, first: bool) -> None:
        """Close local records of executions the service ended while the agent was away, and
        (`first`: the process's first reconciliation) report FAILED what the service has in
        progress that this device has no record of. Later, such an execution was taken by a
        start-next whose answer this process did not see (one re-published after a reconnect
        and answered twice): its records cannot have been lost since the start (`Store.verify`),
        and start-next hands it back, so it runs. `watched`: executions left alone, their own
        wait watches the service (deferred ones waiting aside: they close their record
        themselves when the service ends them)."""
        unsettled = {}
        for record in await self._store.call(Store.active):
            if record.key not in watched and not await self._close_if_ended(record):
                unsettled[record.key] = record.state is not ExecutionState.RECEIVED
        self.unsettled = unsettled
        if not first:
            return
        pending = await self._shared.unless_stopping(self._client.get_pending())
        unknown = [
            (ExecutionRef(None, s.job_id, s.execution_number or 0), s.version_number)
            for s in pending.in_progress
        ]
        unknown = [
            (ref, version)
            for ref, version in unknown
            if await self._store.call(Store.get, ref) is None
        ]
        if len(unknown) == 1 and await self._store.call(Store.was_taking):
            # The agent stopped (or lost the answer: a reconnect) between the service starting
            # it and the record: never run; start-next hands it back.
            log.info(
                "an execution taken by a start-next whose answer was not recorded runs now",
                job_id=unknown[0][0].job_id,
            )
            return
        for ref, version in unknown:
            await self.fail_lost(ref, version)

    async def passed_over(
        self, taken: ExecutionRef | None
    ) -> tuple[list[ExecutionRef], Taking | None]:
        """Default-namespace records in progress on the service that start-next did not hand
        back (it hands back IN_PROGRESS executions first, `taken` is what it gave): the service
        most likely ended them after the last reconciliation, and will not offer them again.
        Those held to run to their end are not counted. With `taken`, what was read with
        them (`Store.taking`: its record too, for `record`, in the same statement)."""
        if taken is None:
            active, taking = await self._store.call(Store.active), None
        else:
            taking = await self._store.call(Store.taking, taken)
            active = taking.others
        keys = [
            record.key
            for record in active
            if record.key.namespace is None
            and record.key not in self.held
            and record.state in _IN_PROGRESS
        ]
        return keys, taking

    def suspect(self, event: JobExecutionsChanged) -> bool:
        """Note the unsettled records of the event's namespace that it no longer lists (a
        complete list: `JobExecutionsChanged.no_longer_lists`); True when there is one to
        re-check. Costs nothing while no record is unsettled, the usual case."""
        candidates = [
            (ref.job_id, ref.execution_number, started)
            for ref, started in self.unsettled.items()
            if ref.namespace == event.namespace
        ]
        if not candidates:
            return False
        unlisted = event.no_longer_lists(candidates)
        for job_id, number, _ in unlisted:
            self.suspected.add(ExecutionRef(event.namespace, job_id, number))
        return bool(unlisted)

    async def recheck_suspected(self, watched: Collection[ExecutionRef]) -> None:
        """Ask the service about each record a `notify` no longer listed (events may come out
        of order: the notify alone proves nothing) and close those it ended, as reconciliation
        does. Run by the loop with the turn, so no handler of them starts meanwhile."""
        for ref in list(self.suspected):
            if ref in self.unsettled and ref not in watched and ref not in self.held:
                record = await self._store.call(Store.get, ref)
                if (
                    record is None  # settled meanwhile (closed, or run by its recovery)
                    or record.state not in ACTIVE_STATES
                    or await self._close_if_ended(record)
                ):
                    self.unsettled.pop(ref, None)
            self.suspected.discard(ref)  # not before: a failed request leaves the rest

    async def _close_if_ended(self, record: ExecutionRecord) -> bool:
        """Close the record if the service ended its execution; True when it did end (closed,
        or held to run to its end)."""
        ref = record.key
        # A read whose loss changes nothing (`Shared.unless_stopping`): the record is closed,
        # or held, only once the answer is in, and what follows it then always completes.
        ended = await self._shared.unless_stopping(self._client.ended(ref))
        if ended is None:
            return False
        if record.resumable and point_of_no_return(record.checkpoint):
            # Past its point of no return (an A/B update that switched slots): it runs to its
            # end here although the service will not offer it again (handlers/api.py).
            log.warning(
                "the service ended an execution past its point of no return while away;"
                " it runs to its end",
                job_id=ref.job_id,
                ended=str(ended),
            )
            if ref not in self.held:  # a reconcile after a reconnect finds it again
                self._shared.note_outcome(ref, f"ended by the service ({ended}); carried on")
                self.held.append(ref)
            return True
        await self._files.stop_leftovers(ref, log.bind(job_id=ref.job_id))
        note = f"service ended the execution while away ({ended})"
        await self._store.call(Store.cancelled, ref, note)
        self._shared.note_outcome(ref, f"ended by the service ({ended})")
        await self._files.cleanup(ref)  # as for an execution ended while it ran
        return True

    async def fail_lost(self, ref: ExecutionRef, version_number: int | None) -> None:
        """The service says this device is running an execution the device has no record of:
        whatever it is, it must not run again. Stop what may be left of it, report FAILED."""
        bound = _bound(ref)
        bound.error("the service has an execution in progress that this device has no record of")
        await self._files.stop_leftovers(ref, bound)
        await self._store.call(
            Store.record_received, ref, {}, version_number, ExecutionState.STARTED
        )
        await self._outbox.decide(ref, Outcome.failed(LOST_RECORD_REASON), bound)


def _summary_ref(summary: JobExecutionSummary) -> ExecutionRef:
    return ExecutionRef(None, summary.job_id, summary.execution_number or 0)


def _ref(namespace: str | None, execution: JobExecution) -> ExecutionRef:
    return ExecutionRef(namespace, execution.job_id, execution.execution_number or 0)
