"""One job at a time while deferred executions wait beside it (`jobs.run_others_while_deferred`).

With the setting, a deferred execution waits in a task of its own ("aside": heartbeats, the
cancellation watch, consent) while the engine's loop takes other executions. A handler still
runs only while its execution holds the one turn handed out here. When the turn is free it goes
to the waiter that became ready first (`next_turn`): a deferred execution whose wait ended
earliest (its `until`, or the moment consent was given), and new work (`NEW_WORK`) only when
no deferred execution is ready. Two executions that both defer therefore both wait, and run in
the order of their wake-ups (a tie: the one that asked first).

Taking new work while an execution waits aside cannot use StartNextPendingJobExecution: the
service returns IN_PROGRESS executions first, that is the deferred one again. The engine takes
by name instead (`next_by_name`, `Acquisition.take_by_name`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Sequence
from dataclasses import field
from typing import Any

import structlog

from jobs_agent.datamodel import model
from jobs_agent.vocabulary import ExecutionRef

log = structlog.get_logger("jobs_agent.engine")

NEW_WORK = math.inf
"""The wake time the engine's loop asks with: after every deferred execution that is ready."""
POLL_SECONDS = 1.0


@model
class Ask:
    """One request for the turn: ready since `wake`, asked as the `order`-th. A `@model`, not
    `dataclass(order=True)`: the turn is chosen on (wake, order) pairs (`next_turn`), never by
    comparing asks, and dataclasses compiled seven methods for it at every start, before the
    first request (about 2.5 M instructions, issue 18)."""

    wake: float
    order: int
    granted: asyncio.Future[None] = field(compare=False)


def next_turn(asks: Sequence[tuple[float, int]]) -> int | None:
    """Which of the waiting (wake, order) pairs gets the free turn (its index): the earliest
    wake, then the first to ask. None when nobody waits."""
    if not asks:
        return None
    return min(range(len(asks)), key=lambda i: asks[i])


def next_by_name(
    in_progress: Sequence[ExecutionRef],
    queued: Sequence[ExecutionRef],
    aside: Collection[ExecutionRef],
) -> tuple[ExecutionRef, bool] | None:
    """What to take by name while executions wait aside, and whether it is QUEUED (to be
    started) rather than already IN_PROGRESS (recorded earlier: recovery says what it needs,
    such as a job running when the agent stopped). In progress first, then the service's
    queue order; an execution waiting aside is never taken again."""
    for ref in in_progress:
        if ref not in aside:
            return ref, False
    for ref in queued:
        if ref not in aside:
            return ref, True
    return None


class Turns:
    def __init__(self, beat: Callable[[], None], wake: Callable[[], None]) -> None:
        self._beat = beat
        self._wake = wake
        self._held: float | None = None
        """The wake time of the request holding the turn (None: free)."""
        self._asks: list[Ask] = []
        self._counter = itertools.count()
        self.aside: dict[ExecutionRef, asyncio.Task[None]] = {}
        """Deferred executions waiting in a task of their own, by execution."""

    # -- the turn ---------------------------------------------------------------------------
    def ask(self, wake: float) -> asyncio.Future[None]:
        """Ask for the turn; the future is done when it is given (then `release` it)."""
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asks.append(Ask(wake, next(self._counter), granted))
        self._grant()
        return granted

    def withdraw(self, granted: asyncio.Future[None]) -> None:
        """Give up a request: the turn, if it was given meanwhile, goes back."""
        if granted.done() and not granted.cancelled():
            self.release()
            return
        granted.cancel()
        self._asks = [a for a in self._asks if a.granted is not granted]

    def take_free(self, wake: float) -> bool:
        """Take the turn now if it is free and nobody waits for it (then `release` it), as
        `turn` would at once: the engine's loop, with nothing deferred, takes it this way,
        without a future, an async context manager and a look at the waiters per round (a
        dozen Python calls and an ask for the running loop; issue 18)."""
        if self._held is None and not self._asks:
            self._held = wake
            return True
        return False

    def release(self) -> None:
        held, self._held = self._held, None
        if self._asks:
            self._grant()
        if held is not None and held != NEW_WORK:
            self._wake()  # a deferred job ran: the loop may take other work again

    def _grant(self) -> None:
        self._asks = [a for a in self._asks if not a.granted.done()]
        if self._held is not None:
            return
        index = next_turn([(a.wake, a.order) for a in self._asks])
        if index is None:
            return
        chosen = self._asks.pop(index)
        self._held = chosen.wake
        chosen.granted.set_result(None)

    @contextlib.asynccontextmanager
    async def turn(self, wake: float) -> AsyncIterator[None]:
        """Hold the turn for the block (waiting for it, beating the watchdog meanwhile)."""
        granted = self.ask(wake)
        try:
            while not granted.done():
                self._beat()
                await asyncio.wait({granted}, timeout=POLL_SECONDS)
        except BaseException:
            self.withdraw(granted)
            raise
        try:
            yield
        finally:
            self.release()

    # -- waiting aside ----------------------------------------------------------------------
    def start_aside(self, ref: ExecutionRef, wait: Coroutine[Any, Any, None]) -> None:
        """Run `wait` (the deferred execution's wait and its later runs) beside the loop."""
        self.aside[ref] = asyncio.create_task(self._aside(ref, wait), name=f"deferred-{ref}")

    async def _aside(self, ref: ExecutionRef, wait: Coroutine[Any, Any, None]) -> None:
        try:
            await wait
        except Exception:  # the record stays as it is; the next look for work recovers it
            log.exception("the wait of a deferred execution failed", job_id=ref.job_id)
        finally:
            self.aside.pop(ref, None)
            self._wake()  # its outcome waits in the outbox, and start-next may serve again

    async def close(self) -> None:
        """Wait for the waits aside to end (a stop ends each within a second; a handler one of
        them runs is stopped as the supervisor stops any)."""
        tasks = list(self.aside.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
