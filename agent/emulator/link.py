"""The emulator's one MQTT link, shared by its MQTT front ends (Jobs, Device Shadow, streams).

AWS IoT answers three reserved topic trees of a thing: `$aws/things/{thing}/jobs/...`,
`.../shadow/...` and `.../streams/...`. Each front end registers the tree it serves with a topic
filter and a handler; the link subscribes, routes each incoming message by the tree (the fourth
topic level) to its handler, and publishes what the handlers answer.

Publishing is ordered and fire-and-forget: replies and events leave in the order they were
produced and nothing waits for one acknowledgement before the next, so a broker round trip
never caps the throughput. A transport with a synchronous `publish_nowait` (the emulator's broker
transport, the in-process bus) gets each message handed over at once; any other transport gets
one task per message, started in FIFO order (a transport queues the packet in its first step).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from jobs_agent.transport.base import Message, Transport

log = structlog.get_logger(__name__)

THINGS_PREFIX = "$aws/things/"
Handler = Callable[[Message], None]
T = TypeVar("T")


@runtime_checkable
class PublishesNowait(Protocol):
    """A transport that can queue a QoS 1 publish synchronously, in call order."""

    def publish_nowait(self, topic: str, payload: bytes) -> None: ...


def tree_of(topic: str) -> str | None:
    """`jobs`, `shadow` or `streams` for `$aws/things/{thing}/{tree}/...`, else None."""
    if not topic.startswith(THINGS_PREFIX):
        return None
    rest = topic[len(THINGS_PREFIX) :]
    slash = rest.find("/")
    if slash <= 0:
        return None
    end = rest.find("/", slash + 1)
    return rest[slash + 1 :] if end < 0 else rest[slash + 1 : end]


class MqttLink:
    """Subscriptions, routing and ordered publishing over one `Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._routes: dict[str, Handler] = {}
        self._filters: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._nowait = transport.publish_nowait if isinstance(transport, PublishesNowait) else None
        self._started = False

    def route(self, tree: str, topic_filter: str, handler: Handler) -> None:
        """Hand messages of `$aws/things/+/{tree}/...` to `handler` (before `start`)."""
        self._routes[tree] = handler
        self._filters.append(topic_filter)

    @property
    def started(self) -> bool:
        return self._started

    async def start(self, connect_timeout: float | None = 30.0) -> None:
        """Connect (if needed) and subscribe every registered filter. Idempotent."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.transport.set_message_callback(self._on_message)
        if not self.transport.is_connected:
            await self.transport.connect(connect_timeout)
        for topic_filter in self._filters:
            await self.transport.subscribe(topic_filter)
        self._started = True

    async def stop(self) -> None:
        """Stop routing, let queued publishes finish, and disconnect."""
        if not self._started:
            return
        self._started = False
        self.transport.set_message_callback(None)
        await self.drain()
        await self.transport.disconnect()

    async def drain(self) -> None:
        """Wait until every publish started so far has completed."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # -- inbound ------------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        tree = tree_of(message.topic)
        handler = None if tree is None else self._routes.get(tree)
        if handler is not None:
            handler(message)

    # -- outbound -----------------------------------------------------------------------------
    def send(self, topic: str, payload: bytes) -> None:
        """Publish (QoS 1) after everything sent before; never waits. On the loop thread."""
        if self._nowait is not None:
            try:
                self._nowait(topic, payload)
            except Exception as exc:  # a lost reply is what a device must survive anyway
                log.warning("emulator_publish_failed", topic=topic, error=str(exc))
            return
        task = asyncio.ensure_future(self._publish(topic, payload))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            await self.transport.publish(topic, payload)
        except Exception as exc:  # a lost reply is what a device must survive anyway
            log.warning("emulator_publish_failed", topic=topic, error=str(exc))

    def call_on_loop(self, callback: Callable[[T], None], argument: T) -> None:
        """Run `callback(argument)` on the link's loop: now if called there, else as soon as
        possible (service listeners may run in an HTTP worker thread). The argument is passed
        rather than closed over: a lambda was one more call per batch of events (two per job)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            callback(argument)
        else:
            loop.call_soon_threadsafe(callback, argument)
