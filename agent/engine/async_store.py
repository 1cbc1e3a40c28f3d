"""The state store for the event loop: `Store`'s blocking SQLite calls on one worker thread.

A durable commit is an fsync (about 0.3 ms on these machines, far more on an SD card): doing it on
the event loop would stall MQTT keep-alives and progress. `await store.call(Store.get, ref)` runs
`Store.get` on the store's worker, in submission order, which the state machine relies on.

The calls that never fsync (`ON_THE_LOOP`: reads, the start-next marker, and the two commits the
store makes without an fsync) run on the event loop instead when nothing of this store is queued
on or running in its worker: the hand-off (queue, thread switch, the loop woken through its
self-pipe, about 0.06 ms of CPU) cost more than most of these statements, and three of a job's
five store calls are such calls (issue 18). The order of calls stays the order they were made:
with a call still queued or running on the worker, every call goes there, behind it. A commit
made on the loop never checkpoints the WAL (`Store._write`), so its cost is a write to the
kernel's cache.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from jobs_agent.aio import Threaded
from jobs_agent.engine.store import Store

P = ParamSpec("P")
R = TypeVar("R")

ON_THE_LOOP: frozenset[Callable[..., Any]] = frozenset(
    {
        Store.get,
        Store.active,
        Store.verify,
        Store.outbox,
        Store.was_taking,
        Store.begin_taking,
        Store.taken,
        Store.record_taken,
        Store.reported,
    }
)
"""Store methods that never fsync: run on the loop when the worker has nothing of this store."""


class AsyncStore(Threaded[Store]):
    def __init__(
        self, path: Path, executor: ThreadPoolExecutor | None = None, *, exclusive: bool = False
    ) -> None:
        """`executor`, if given, must have exactly one worker (writes stay in order) and is
        shared, e.g. by the engines of `sim fleet`, which would otherwise need a thread each.
        `exclusive`: see `Store` (`sim fleet` only)."""
        super().__init__(Store(path, exclusive=exclusive), executor, name="jobs-agent-store")
        self.handoffs = 0
        """Calls sent to the worker thread (tests and benchmarks count them per job)."""
        self._finished = 0
        """Of those, the ones finished or cancelled."""
        self._counting = threading.Lock()

    async def call(
        self, method: Callable[Concatenate[Store, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        if method in ON_THE_LOOP and self._finished == self.handoffs:
            return method(self.target, *args, **kwargs)
        work = functools.partial(method, self.target, *args, **kwargs)
        future = self._executor.submit(work)
        self.handoffs += 1
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: Future[Any]) -> None:
        """On the worker once the call returned (the store's lock is free again), or on the
        loop when a call still queued was cancelled."""
        with self._counting:
            self._finished += 1

    async def close(self) -> None:
        await self.call(Store.close)
        self.shutdown()
