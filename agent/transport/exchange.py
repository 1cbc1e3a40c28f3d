"""Request and reply over MQTT, matched by a client token: the part every AWS IoT device API
shares (Jobs, Device Shadow, streams).

AWS IoT answers a request on reply topics that every client subscribed to them receives, so a
reply is ours only if it carries our own token and came on the reply topic of the request that
used it (`key`). A reply can be lost with the connection: a request still waiting when the link
drops is published again, with the same token, once the link is back; the first answer wins,
a later duplicate finds no waiter. One deadline covers the whole wait: nothing waits forever.

The protocol client parses its topics and payloads and hands each reply to `resolve`; what a
rejection means (retry after a backoff, raise a typed error) stays with the protocol client.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from jobs_agent.transport.base import NotConnectedError, Transport

log = structlog.get_logger("jobs_agent.transport")

R = TypeVar("R")
NOT_CONNECTED_PAUSE = 0.05
"""A backend may refuse a publish before it has marked the link down: pause so a loop cannot
spin without yielding."""


@dataclass(slots=True)
class ExchangeStats:
    publishes: int = 0
    """Request messages published, re-publishes included."""
    republishes: int = 0
    """Requests published again because the link dropped while they waited."""
    timeouts: int = 0
    replies_ignored: int = 0
    """Replies that matched no waiting request (another client's, a late duplicate)."""


@dataclass(eq=False, slots=True)
class _Waiter(Generic[R]):
    key: Hashable
    future: asyncio.Future[R]
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class ExchangeClosed(Exception):
    """The exchange was closed while a request waited."""


class Exchange(Generic[R]):
    """Waiting requests of one protocol client on one transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.stats = ExchangeStats()
        self._prefix = secrets.token_hex(8)
        self._counter = 0
        self._waiting: dict[str, _Waiter[R]] = {}
        self._closed = False

    def new_token(self) -> str:
        """A token unique to this process and exchange (26 characters at most for a billion
        requests: within the 64 bytes every AWS IoT API allows)."""
        self._counter += 1
        return f"{self._prefix}-{self._counter}"

    # -- from the protocol client's listeners (loop thread) -----------------------------------
    def resolve(self, token: Any, key: Hashable, reply: R) -> bool:
        """Give `reply` to the request waiting with `token` on `key`; False when there is none."""
        waiter = self._waiting.get(token) if isinstance(token, str) else None
        if waiter is None or waiter.key != key or waiter.future.done():
            self.stats.replies_ignored += 1
            return False
        waiter.future.set_result(reply)
        return True

    def link_lost(self) -> None:
        """Every waiting request is published again once the link is back."""
        for waiter in self._waiting.values():
            waiter.lost.set()

    def close(self) -> None:
        """Fail every waiting request (`ExchangeClosed`). Idempotent."""
        self._closed = True
        for waiter in self._waiting.values():
            if not waiter.future.done():
                waiter.future.set_exception(ExchangeClosed("the client was closed"))
        self._waiting.clear()

    # -- the request ----------------------------------------------------------------------------
    async def send(
        self, topic: str, payload: bytes, token: str, key: Hashable, deadline: float
    ) -> R | None:
        """Publish `payload` (which carries `token`) until its reply comes or the loop time
        `deadline` passes (None). Raises `ExchangeClosed` when closed meanwhile."""
        if self._closed:
            raise ExchangeClosed("the client was closed")
        loop = asyncio.get_running_loop()
        waiter: _Waiter[R] = _Waiter(key, loop.create_future())
        self._waiting[token] = waiter  # registered before publishing: a reply may be instant
        first = True
        try:
            while not waiter.future.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if not self.transport.is_connected:
                    if not await self.transport.wait_connected(remaining):
                        break
                    continue  # re-check: the reply may have come with a kept session
                waiter.lost.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self.transport.publish(topic, payload)
                except NotConnectedError:
                    await asyncio.sleep(min(NOT_CONNECTED_PAUSE, max(remaining, 0.0)))
                    continue
                except TimeoutError:
                    break
                self.stats.publishes += 1
                if not first:
                    self.stats.republishes += 1
                    log.info("request re-published after reconnect", topic=topic, token=token)
                first = False
                await _first_of(waiter.future, waiter.lost.wait(), deadline - loop.time())
            if waiter.future.done():
                return waiter.future.result()
        finally:
            self._waiting.pop(token, None)
        self.stats.timeouts += 1
        return None


async def _first_of(future: asyncio.Future[Any], other: Awaitable[Any], timeout: float) -> None:
    """Wait until `future` is done, `other` completes, or `timeout` passes; never raises."""
    other_task = asyncio.ensure_future(other)
    try:
        await asyncio.wait(
            {future, other_task}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        other_task.cancel()
