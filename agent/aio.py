"""Small asyncio helpers: waiting on an event with a deadline, running work unless an event
comes first, and calling a blocking object on its own worker thread.

`asyncio.wait_for` on Python 3.11 swallows a cancellation that arrives just as the awaited
future completes (fixed in 3.12), which turns a stop request into a loop that never ends.
`asyncio.timeout()` does not have that race, so waits in loops go through `wait_event`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, Generic, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` passes; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def unless_set(event: asyncio.Event, work: Awaitable[T]) -> tuple[bool, asyncio.Future[T]]:
    """Run `work` until it ends or `event` is set (a stop request). (True, its future) when it
    ended first; (False, its future) when the event came first: `work` was then cancelled and
    has ended, and the caller says which of the ways it ended it accepts."""
    future = asyncio.ensure_future(work)
    if not event.is_set():
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((future, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if future.done():
            return True, future
    future.cancel()
    await asyncio.wait((future,))
    return False, future


class Threaded(Generic[T]):
    """Run a blocking object's methods on one worker thread, in submission order.

    `await threaded.call(Store.decide, ref, status, details)` runs `store.decide(ref, ...)` on
    the worker and is typed like it: one wrapper for every method instead of an async copy of
    each. One worker keeps the order of calls equal to the order they were made (a state
    machine's writes rely on it); an `executor` given from outside must have exactly one worker
    and may be shared by several objects (`sim fleet`: 8 threads for thousands of stores).
    """

    def __init__(self, target: T, executor: ThreadPoolExecutor | None = None, *, name: str) -> None:
        self.target = target
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(
        self, method: Callable[Concatenate[T, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        loop = asyncio.get_running_loop()
        work = functools.partial(method, self.target, *args, **kwargs)
        return await loop.run_in_executor(self._executor, work)

    def shutdown(self) -> None:
        """Stop the worker once its queue is done (only a worker this wrapper created)."""
        if self._owns_executor:
            self._executor.shutdown(wait=True)
