"""A job's cancellation that a step's wait can join without a task of its own (issue 18).

`JobContext.cancelled` is an `asyncio.Event` (handlers wait on it, the engine sets it). The
sandbox waits for a step's exit or its cancellation, whichever comes first; waiting on an
Event takes a task (`Event.wait()` is a coroutine), which cost every script step a task made,
stepped, cancelled and stepped again: two turns of the event loop. `Cancellation` is that
Event, and also hands out plain futures that its `set` completes.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Cancellation(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self._futures: list[asyncio.Future[None]] = []

    def set(self) -> None:
        super().set()
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """Done when the job is cancelled (at once if it is already); cancel it when it is no
        longer wanted (nothing then holds it but this, until the next `future`)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.is_set():
            future.set_result(None)
        else:
            self._futures = [kept for kept in self._futures if not kept.done()]
            self._futures.append(future)
        return future


def woken_by(
    cancelled: asyncio.Event,
) -> tuple[asyncio.Future[None], asyncio.Task[Any] | None]:
    """A future the step's exit (`ExitWatch`) and its job's cancellation both complete, so
    the step's wait is one `await` on it: no `asyncio.wait` (its own waiter, callbacks and a
    turn of the loop between the exit and the wake-up: issue 18). A plain Event (not the
    engine's `Cancellation`) still takes a task to wait on, as before; it is returned to be
    cancelled with the future."""
    if isinstance(cancelled, Cancellation):
        return cancelled.future(), None
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(cancelled.wait())
    waiter.add_done_callback(lambda _done: _settle(woken))
    return woken, waiter


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
