"""A decision made while a flush of the outbox is under way is reported by its own flush, never
left queued until the next decision (or a restart).

Two decisions, or a flush and a decision, do interleave in the engine: with
`jobs.run_others_while_deferred` a deferred execution decides in its own task (consent refused,
the deferral limit crossed, its later run), beside the loop's flush at the top of a round and the
decisions of the job holding the turn. On a slow flash the decision's commit goes to the
store's worker, behind whatever is already there, so a flush whose read of the outbox was
queued first ends (and used to mark the outbox known empty) before the decision's own flush ran.

Real parts: a real SQLite file, the store's real worker thread, the real Outbox, the real
JobsClient and the emulator on the in-process bus. The store's worker is held inside a durable
commit by the store's own clock hook (a commit that is slow, deterministically): a
`threading.Event` gate, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog

from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.outbox import Outbox
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import ExecutionState, Store
from jobs_agent.jobs.client import JobsClient
from jobs_agent.transport.local import LocalBus, LocalTransport
from jobs_agent.vocabulary import ExecutionRef
from jobs_agent_handlers.api import Outcome

THING = "gw"


class GatedClock:
    """`AsyncStore`'s clock: every reading 1 s after the last (each durable commit looks slow,
    so they go to the worker); once `armed`, a reading on the worker waits for `release`,
    holding the worker inside that commit."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> float:
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.armed = False
            self.entered.set()
            self.release.wait(10)
        self.now += 1.0
        return self.now


async def running(store: AsyncStore, ref: ExecutionRef) -> None:
    await store.call(Store.record_taken, ref, {"operation": "x"}, 1)
    await store.call(Store.transition, ref, ExecutionState.RUNNING, handler="x")


@dataclass
class Parts:
    emulator: EmbeddedEmulator
    clock: GatedClock
    store: AsyncStore
    outbox: Outbox

    def status(self, job_id: str) -> str:
        return str(self.emulator.service.execution(job_id, THING).status)

    async def release(self, *tasks: asyncio.Task[Any]) -> None:
        """Wait until the worker is held, let it go, and wait for `tasks`."""
        await asyncio.to_thread(self.clock.entered.wait, 10)
        self.clock.release.set()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def parts(tmp_path: Path, *job_ids: str) -> AsyncIterator[Parts]:
    """The outbox of a device whose executions `job_ids` run (IN_PROGRESS at the service),
    on a store whose durable commits go to the worker; the clock is armed."""
    bus = LocalBus()
    emulator = EmbeddedEmulator(bus, tick_seconds=None)
    await emulator.start()
    clock = GatedClock()
    store = AsyncStore(tmp_path / "state.db", clock=clock)
    transport = LocalTransport(bus, THING)
    await transport.connect(timeout=5.0)
    client = JobsClient(transport, THING, request_timeout=5.0)
    await client.start()
    shared = Shared(
        EngineSettings(thing_name=THING, state_dir=tmp_path), cast(Any, None), on_status=None
    )
    try:
        for job_id in job_ids:
            emulator.service.create_job(job_id, [THING], {"operation": "x"})
            emulator.service.update(THING, job_id, "IN_PROGRESS")
            # the first durable commit is slow: they go to the worker from now on
            await running(store, ExecutionRef(None, job_id, 1))
        clock.armed = True
        yield Parts(emulator, clock, store, Outbox(shared, store, client, JobFiles(shared, store)))
    finally:
        await client.close()
        await transport.disconnect()
        await store.close()
        await emulator.stop()


def bound(job_id: str) -> Any:
    return structlog.get_logger("jobs_agent.engine").bind(job_id=job_id)


async def test_a_decision_queued_behind_a_flush_is_reported_by_its_own_flush(
    tmp_path: Path,
) -> None:
    """The loop's flush reads the outbox (queued on the worker behind a slow commit), then a
    deferred execution decides (queued behind that read). The flush sees an outbox without the
    new entry and ends first; the decision's flush must still send it. Before the fix it
    returned at once (the flush had just marked the outbox known empty): the report stayed
    queued and the service saw the execution IN_PROGRESS."""
    async with parts(tmp_path, "deferred") as p:
        ref = ExecutionRef(None, "deferred", 1)
        # Another commit holds the worker (a slow flash): the transition of this store's
        # start-up record will do (any durable commit queues the others behind it).
        held = asyncio.create_task(p.store.call(Store.transition, ref, ExecutionState.RUNNING))
        flush = asyncio.create_task(p.outbox.flush())  # the loop's: its read queues behind it
        decide = asyncio.create_task(  # the deferred execution's, in its task: behind the read
            p.outbox.decide(ref, Outcome.rejected("refused on the device"), bound("deferred"))
        )
        await p.release(held, flush, decide)
        assert p.status("deferred") == "REJECTED"
        assert await p.store.call(Store.outbox) == []


async def test_two_decisions_on_the_worker_are_both_reported(tmp_path: Path) -> None:
    """Two executions decide at once (the one holding the turn, and one waiting aside): both
    commits queue on the worker. The first decision's flush sends the outbox its commit read,
    without the second entry; it must not mark the outbox empty for the second's flush, and
    the second's flush must not send the first entry again. Before: the second's flush sent the
    first again (refused as already terminal, then recorded REPORTED a second time: the store
    refused that transition) and raised, its own report still queued."""
    async with parts(tmp_path, "first", "second") as p:
        first, second = (ExecutionRef(None, job_id, 1) for job_id in ("first", "second"))
        held = asyncio.create_task(p.store.call(Store.transition, first, ExecutionState.RUNNING))
        decisions = [
            asyncio.create_task(p.outbox.decide(ref, Outcome.succeeded(), bound(ref.job_id)))
            for ref in (first, second)
        ]
        await p.release(held, *decisions)
        assert (p.status("first"), p.status("second")) == ("SUCCEEDED", "SUCCEEDED")
        assert await p.store.call(Store.outbox) == []
