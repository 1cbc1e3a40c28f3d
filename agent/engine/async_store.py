"""The state store for the event loop: `Store`'s blocking SQLite calls on one worker thread.

A durable commit is an fsync (about 0.3 ms on these machines, far more on an SD card): doing it on
the event loop would stall MQTT keep-alives and progress. `await store.call(Store.get, ref)` runs
`Store.get` on the store's worker, in submission order, which the state machine relies on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobs_agent.aio import Threaded
from jobs_agent.engine.store import Store


class AsyncStore(Threaded[Store]):
    def __init__(
        self, path: Path, executor: ThreadPoolExecutor | None = None, *, exclusive: bool = False
    ) -> None:
        """`executor`, if given, must have exactly one worker (writes stay in order) and is
        shared, e.g. by the engines of `sim fleet`, which would otherwise need a thread each.
        `exclusive`: see `Store` (`sim fleet` only)."""
        super().__init__(Store(path, exclusive=exclusive), executor, name="jobs-agent-store")

    async def close(self) -> None:
        await self.call(Store.close)
        self.shutdown()
