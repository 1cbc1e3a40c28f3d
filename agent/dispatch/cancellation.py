"""A job's cancellation that a step's wait can join without a task of its own (issue 18).

`JobContext.cancelled` is an `asyncio.Event` (handlers wait on it, the engine sets it). The
sandbox waits for a step's exit or its cancellation, whichever comes first; waiting on an
Event takes a task (`Event.wait()` is a coroutine), which cost every script step a task made,
stepped, cancelled and stepped again: two turns of the event loop. `Cancellation` is that
Event, and also hands out plain futures that its `set` completes.
"""

from __future__ import annotations

import asyncio


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
