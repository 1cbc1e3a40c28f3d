"""The state store for the event loop: `Store`'s blocking SQLite calls on one worker thread, or
on the loop itself when that is cheaper and harmless.

`await store.call(Store.get, ref)` runs `Store.get` in submission order, which the state
machine relies on: with a call of this store still queued on or running in its worker, every
call goes there, behind it. When nothing of this store is on the worker:

* the calls that never fsync (`ON_THE_LOOP`: reads, the start-next marker, and the writes the
  store makes without an fsync) run on the loop: the hand-off (queue, thread switch, the
  loop woken through its self-pipe, about 0.06 ms of CPU) cost more than most of these
  statements. A commit made on the loop never checkpoints the WAL (`Store._write`);
* the fsynced commits of a job (`DURABLE_ON_THE_LOOP`: RUNNING before the handler, the
  decision before the report) run on the loop too while this store's durable commits are fast
  (issue 18: the hand-off there was two thread switches and a self-pipe wake-up on the path
  from a job's notification to its handler). The commit is the same and as durable: it returns
  only once fsynced, and nothing after it (the handler, the report) runs before it returns.

A slow flash must not stall the loop (MQTT keep-alives and acknowledgements with paho, which
the loop drives; progress; the status and consent sockets). Every durable commit is timed,
wherever it runs: one that took longer than `INLINE_COMMIT_SECONDS` sends the durable commits
to the worker for `SLOW_COOL_DOWN_SECONDS`, and a slow one there starts the cool-down again. A
storage that is slow once stalls the loop for that one commit at most every cool-down; one
that stays slow keeps its commits on the worker. A blocked loop holds no lock another thread
needs: SQLite releases the GIL while it writes and fsyncs, so the awscrt backend's threads go
on.

A shared executor (`sim fleet`: one worker for a thousand stores) keeps every durable commit
on it: there the loop serves the other devices meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from jobs_agent.aio import Threaded
from jobs_agent.engine.store import Store

log = structlog.get_logger("jobs_agent.engine")

P = ParamSpec("P")
R = TypeVar("R")

ON_THE_LOOP: frozenset[Callable[..., Any]] = frozenset(
    {
        Store.get,
        Store.active,
        Store.taking,
        Store.verify,
        Store.outbox,
        Store.was_taking,
        Store.begin_taking,
        Store.taken,
        Store.record_taken,
        Store.reported,
        Store.settle,
        Store.packages,
    }
)
"""Store methods that never fsync: run on the loop when the worker has nothing of this store."""

DURABLE_ON_THE_LOOP: frozenset[Callable[..., Any]] = frozenset({Store.transition, Store.decide})
"""A job's fsynced commits (one transaction, one fsync each): run on the loop when the worker
has nothing of this store and its durable commits are fast."""

INLINE_COMMIT_SECONDS = 0.05
"""A durable commit slower than this (a worn SD card, a flash busy erasing) sends the durable
commits to the worker: the loop is never stalled longer than this by a commit of a storage that
is known to be fast (0.3-0.6 ms on these machines, 5-40 ms on a slow SD card)."""

SLOW_COOL_DOWN_SECONDS = 60.0
"""How long the durable commits stay on the worker after a slow one."""


class AsyncStore(Threaded[Store]):
    def __init__(
        self,
        path: Path,
        executor: ThreadPoolExecutor | None = None,
        *,
        exclusive: bool = False,
        hold_marker: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`executor`, if given, must have exactly one worker (writes stay in order) and is
        shared, e.g. by the engines of `sim fleet`, which would otherwise need a thread each.
        `exclusive`, `hold_marker`: see `Store` (`sim fleet` only). `clock` times the durable
        commits (tests make a commit look slow with it)."""
        store = Store(path, exclusive=exclusive, hold_marker=hold_marker)
        super().__init__(store, executor, name="jobs-agent-store")
        self.handoffs = 0
        """Calls sent to the worker thread (tests and benchmarks count them per job)."""
        self._finished = 0
        """Of those, the ones finished or cancelled."""
        self._counting = threading.Lock()
        self._clock = clock
        self._durable_inline = executor is None
        """Durable commits may run on the loop (never with a shared worker)."""
        self._slow_until = float("-inf")
        """Until this `clock` time, after a slow durable commit, they run on the worker."""

    async def call(
        self, method: Callable[Concatenate[Store, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        idle = self._finished == self.handoffs
        if idle and method in ON_THE_LOOP:
            return method(self.target, *args, **kwargs)
        if method in DURABLE_ON_THE_LOOP and self._durable_inline:
            if idle and self._clock() >= self._slow_until:
                return self._timed(method, *args, **kwargs)
            work = functools.partial(self._timed, method, *args, **kwargs)
        else:
            work = functools.partial(method, self.target, *args, **kwargs)
        future = self._executor.submit(work)
        self.handoffs += 1
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _timed(
        self, method: Callable[Concatenate[Store, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """A durable commit, timed (on the loop or the worker): a slow one starts the
        cool-down, during which durable commits go to the worker."""
        started = self._clock()
        try:
            return method(self.target, *args, **kwargs)
        finally:
            ended = self._clock()
            if ended - started > INLINE_COMMIT_SECONDS:
                if ended >= self._slow_until:
                    log.info(
                        "slow state database commit; committing on a worker thread for a while",
                        seconds=round(ended - started, 3),
                        cool_down_seconds=SLOW_COOL_DOWN_SECONDS,
                    )
                self._slow_until = ended + SLOW_COOL_DOWN_SECONDS

    def _done(self, _future: Future[Any]) -> None:
        """On the worker once the call returned (the store's lock is free again), or on the
        loop when a call still queued was cancelled."""
        with self._counting:
            self._finished += 1

    async def close(self) -> None:
        await self.call(Store.close)
        self.shutdown()
