"""Outcomes, decided once and reported exactly once.

`decide` writes the outcome and its queued report in one transaction (DECIDED), then the outbox
is flushed in order: a report the service accepts closes the execution (REPORTED); one it can
never accept is closed with a note saying why; one that cannot be delivered yet stays queued and
the main loop retries. An outcome the database cannot take right now is kept in memory until it
can (`undecided`), never replaced by "agent restarted".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog

from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.shared import Shared, StopRequested
from jobs_agent.engine.store import OutboxEntry, PackageRow, Store, StoreError, StoreLost
from jobs_agent.jobs.client import JobsClient
from jobs_agent.jobs.errors import (
    CLOUD_ENDED_CODES,
    Abandoned,
    ErrorCode,
    JobsError,
    JobsRejected,
)
from jobs_agent.jobs.status_details import sanitize_status_details
from jobs_agent.log import enabled
from jobs_agent.redact import redact_mapping
from jobs_agent.vocabulary import (
    ExecutionRef,
    JobExecutionStatus,
    StatusDetails,
    job_execution_status,
)
from jobs_agent_handlers.outcome import Outcome

if TYPE_CHECKING:
    from jobs_agent.engine.recovery import Settle

log = structlog.get_logger("jobs_agent.engine")

_SUCCEEDED: Final = JobExecutionStatus.SUCCEEDED
"""Read as a global, not off its class (`lifecycle.RECEIVED`'s note)."""

MINIMAL_REPORT = StatusDetails({"reason": "the full report was refused by the service"})


class Outbox:
    def __init__(
        self, shared: Shared, store: AsyncStore, client: JobsClient, files: JobFiles
    ) -> None:
        self._shared = shared
        self._store = store
        self._client = client
        self._files = files
        self._dirty = True
        """False only while this process knows the outbox is empty (saves a read per loop)."""
        self._decisions = 0
        """Entries queued so far by this process: a flush marks the outbox empty only if none
        was queued after the outbox it sent was read (a decision made meanwhile in another task,
        a deferred execution waiting aside, is sent by its own flush)."""
        self._flushing = asyncio.Lock()
        """One flush sends at a time: two at once would each send an entry both had read."""
        self._flushes = 0
        """Flushes ended: one that ended after a flush's outbox was read may have closed some
        of its entries (that flush reads the outbox again)."""
        self.undecided: dict[
            ExecutionRef, tuple[JobExecutionStatus, StatusDetails, tuple[PackageRow, ...]]
        ] = {}
        """Outcomes the database could not take yet (with the packages a SUCCEEDED job
        installed), written as soon as it works again."""

    # -- deciding ---------------------------------------------------------------------------------
    async def decide(
        self,
        ref: ExecutionRef,
        outcome: Outcome,
        bound: Any,
        packages: tuple[PackageRow, ...] = (),
    ) -> None:
        """Record `outcome` (redacted, then made to fit statusDetails: once, here) and send it;
        with the `packages` a SUCCEEDED job installed, in the same transaction."""
        status = job_execution_status(outcome.status)
        details = sanitize_status_details(redact_mapping(dict(outcome.details)))
        try:
            alone = not self._dirty  # the outbox is known empty: the new entry is all of it
            seen, flushes = self._queueing(), self._flushes
            queued = await self._store.call(
                Store.decide, ref, status, details, packages, alone=alone
            )
        except StoreLost:
            # Nothing can be recorded any more: tell the service now, once, rather than leave
            # the execution for the restarted agent to report as lost.
            if await self._report_without_record(ref, status, details, bound):
                return
            self.undecided[ref] = (status, details, packages)
            raise
        except StoreError:
            # Keep the real outcome until it can be written; never let a full disk turn a
            # finished job into "agent restarted while the step was running".
            self.undecided[ref] = (status, details, packages)
            raise
        self._shared.crash.reached("decided")
        # A job that did not succeed is what an operator filters for (`journalctl -p warning`).
        level = bound.info if status is _SUCCEEDED else bound.warning
        level("outcome decided", status=status, reason=details.get("reason"))
        if not await self._flush(queued, seen, flushes):
            bound.info("outcome queued until the service is reachable")

    async def settle(self, ref: ExecutionRef, settle: Settle) -> None:
        """The service offers an execution already closed here: decide again, never rerun."""
        self._queueing()
        await self._store.call(Store.decide, ref, settle.status, dict(settle.details))
        self._shared.wake()

    async def decide_undecided(self) -> None:
        for ref, (status, details, packages) in list(self.undecided.items()):
            self._queueing()
            await self._store.call(Store.decide, ref, status, details, packages)
            del self.undecided[ref]
            self._shared.crash.reached("decided")
            log.info(
                "outcome decided after the database recovered",
                job_id=ref.job_id,
                execution_number=ref.execution_number,
                status=status,
            )

    async def _report_without_record(
        self, ref: ExecutionRef, status: JobExecutionStatus, details: StatusDetails, bound: Any
    ) -> bool:
        try:
            await self._send(ref, status, details)
        except JobsError as exc:
            bound.error("outcome not reported and the database is gone", error=str(exc))
            return False
        bound.warning("outcome reported without a database record", status=status)
        self._shared.note_outcome(ref, status)
        return True

    # -- reporting --------------------------------------------------------------------------------
    def _queueing(self) -> int:
        """An entry is about to be queued: the outbox is not known empty any more. The count
        so far, this entry included (the store runs calls in submission order, so an outbox
        read after this call includes it)."""
        self._dirty = True
        self._decisions += 1
        return self._decisions

    async def flush(self) -> bool:
        """Send queued outcomes in order; False if one could not be delivered yet."""
        if not self._dirty:
            return True  # emptied by this process and nothing decided since
        seen, flushes = self._decisions, self._flushes
        return await self._flush(await self._store.call(Store.outbox), seen, flushes)

    async def _flush(self, queued: list[OutboxEntry], seen: int, flushes: int) -> bool:
        """Send `queued`: the outbox as read after the `seen`-th entry was queued, when
        `flushes` flushes had ended."""
        async with self._flushing:
            if not self._dirty:
                return True  # a flush that read the outbox after this entry was queued sent it
            if self._flushes != flushes:  # `queued` may hold entries another flush closed
                seen = self._decisions
                queued = await self._store.call(Store.outbox)
            try:
                return await self._send_queued(queued, seen)
            finally:
                self._flushes += 1

    async def _send_queued(self, queued: list[OutboxEntry], seen: int) -> bool:
        for entry in queued:
            ref = entry.key
            try:
                await self._send(ref, entry.status, entry.status_details)
            except JobsRejected as exc:
                note = await self._explain_refused(ref, entry.status, exc)
                if note is None:
                    await self._store.call(
                        Store.outbox_attempt_failed, entry.id, ref, f"{exc.code}: {exc.message}"
                    )
                    return False
                await self._store.call(Store.reported, entry.id, ref, note=note)
                self._shared.note_outcome(ref, note)
                # Closed, as by an accepted report: its directory goes too (an outcome sent
                # again after a lost REPORTED lands here; a retry of the same job must find
                # its state folder empty).
                await self._files.cleanup(ref)
                continue
            except JobsError as exc:
                await self._store.call(Store.outbox_attempt_failed, entry.id, ref, str(exc))
                return False
            self._shared.crash.reached("report_accepted")
            await self._store.call(Store.reported, entry.id, ref)
            self._shared.crash.reached("reported")
            self._reported(ref, entry.status)
            await self._files.cleanup(ref)
        if self._decisions == seen:  # else an entry queued meanwhile may not be in `queued`
            self._dirty = False
        return True

    def _reported(self, ref: ExecutionRef, status: JobExecutionStatus) -> None:
        self._shared.note_outcome(ref, status)
        self._shared.status.jobs_done += 1
        if not enabled(logging.INFO):
            return  # no logger built for a line the level drops (issue 18)
        log.info(
            "outcome reported",
            job_id=ref.job_id,
            execution_number=ref.execution_number,
            namespace=ref.namespace,
            status=status,
        )

    async def _send(
        self, ref: ExecutionRef, status: JobExecutionStatus, details: Mapping[str, str]
    ) -> None:
        await self._client.update(ref, status, status_details=details)

    async def _explain_refused(
        self, ref: ExecutionRef, status: JobExecutionStatus, exc: JobsRejected
    ) -> str | None:
        """Decide what a refused outcome means; None: keep it queued and try later."""
        bound = log.bind(job_id=ref.job_id, execution_number=ref.execution_number)
        if exc.code in CLOUD_ENDED_CODES:
            return await self._refused_as_ended(ref, status, exc, bound)
        if exc.code == ErrorCode.INVALID_REQUEST:
            bound.error("outcome refused as invalid; sending a minimal report", message=exc.message)
            try:
                await self._send(ref, status, MINIMAL_REPORT)
            except JobsRejected as second:
                bound.error("minimal report refused too; giving up", code=str(second.code))
                return f"not reported: {second.code}: {second.message}"
            return status
        bound.warning("outcome not accepted yet", code=str(exc.code), message=exc.message)
        return None

    async def _refused_as_ended(
        self, ref: ExecutionRef, status: JobExecutionStatus, exc: JobsRejected, bound: Any
    ) -> str | None:
        """The service says the execution is over: was it our report that ended it? None: not
        known yet (kept queued)."""
        current = exc.execution_state.status if exc.execution_state else None
        if current is None:
            # A read: given up on a stop, it says nothing, and the outcome stays queued for the
            # next start to send (and ask) again.
            describe = self._client.describe(ref, include_job_document=False)
            try:
                described = await self._shared.unless_stopping(describe)
                current = described.status if described else None
            except (StopRequested, Abandoned):
                return None
            except JobsError:
                pass
        if current is status:
            bound.info("outcome was already delivered (repeat refused as terminal)")
            return status
        note = f"not reported: service answered {exc.code} (execution is {current or 'gone'})"
        bound.warning("outcome refused by the service", code=str(exc.code), current=current)
        return note
