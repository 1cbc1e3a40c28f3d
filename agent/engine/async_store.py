"""Run the store's blocking SQLite calls on one worker thread, in submission order.

A durable commit is an fsync (about 0.3 ms on these machines, far more on an SD card): doing it on
the event loop would stall MQTT keep-alives and progress. One thread keeps the order of writes
equal to the order the engine issued them, which the state machine relies on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import (
    ExecutionKey,
    ExecutionRecord,
    OutboxEntry,
    Store,
)

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    def __init__(self, path: Path, executor: ThreadPoolExecutor | None = None) -> None:
        """`executor`, if given, must have exactly one worker (writes stay in order) and is
        shared, e.g. by the engines of `sim fleet`, which would otherwise need a thread each."""
        self.sync = Store(path)
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="jobs-agent-store"
        )

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        await self._call(self.sync.close)
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def get(self, key: ExecutionKey) -> ExecutionRecord | None:
        return await self._call(self.sync.get, key)

    async def active(self) -> list[ExecutionRecord]:
        return await self._call(self.sync.active)

    async def record_received(
        self,
        key: ExecutionKey,
        document: Mapping[str, Any],
        version_number: int | None,
        state: ExecutionState = ExecutionState.RECEIVED,
    ) -> ExecutionRecord:
        return await self._call(self.sync.record_received, key, document, version_number, state)

    async def transition(
        self, key: ExecutionKey, state: ExecutionState, **fields: Any
    ) -> ExecutionRecord:
        return await self._call(self.sync.transition, key, state, **fields)

    async def save_checkpoint(self, key: ExecutionKey, data: Any) -> None:
        await self._call(self.sync.save_checkpoint, key, data)

    async def save_progress(self, key: ExecutionKey, progress: Mapping[str, Any]) -> None:
        await self._call(self.sync.save_progress, key, progress)

    async def decide(self, key: ExecutionKey, status: str, details: Mapping[str, str]) -> None:
        await self._call(self.sync.decide, key, status, details)

    async def reported(self, entry_id: int, key: ExecutionKey, note: str | None = None) -> None:
        await self._call(self.sync.reported, entry_id, key, note)

    async def cancelled(self, key: ExecutionKey, note: str) -> None:
        await self._call(self.sync.cancelled, key, note)

    async def probe(self) -> None:
        await self._call(self.sync.probe)

    async def verify(self) -> None:
        await self._call(self.sync.verify)

    async def mark_taking(self) -> None:
        await self._call(self.sync.mark_taking)

    async def taken(self) -> None:
        await self._call(self.sync.taken)

    async def was_taking(self) -> bool:
        return await self._call(self.sync.was_taking)

    async def outbox(self) -> list[OutboxEntry]:
        return await self._call(self.sync.outbox)

    async def outbox_attempt_failed(self, entry_id: int, error: str) -> None:
        await self._call(self.sync.outbox_attempt_failed, entry_id, error)

    async def prune(self, keep: int = 500) -> None:
        await self._call(self.sync.prune, keep)
