"""The one seam between the Jobs protocol and an MQTT link.

Everything above this module (the Jobs client, the emulator's MQTT front end, the engine) talks
to a `Transport` and never imports a backend, so the same protocol code runs over awscrt, paho,
Greengrass IPC or the in-process bus. The contract is deliberately small:

* all coroutines are awaited on the asyncio loop the transport was started on; backends that run
  their own network threads hand every callback back to that loop with `call_soon_threadsafe`,
  so listeners are only ever invoked on the loop thread and must not block;
* `publish` is QoS 1 and returns once the broker acknowledged it (PUBACK, or local delivery for
  the in-process bus); it raises `NotConnectedError` at once when the link is down instead of
  queueing silently, so the caller (the Jobs client) decides whether to wait or give up;
* subscriptions are remembered by the transport and restored after a reconnect whose session
  was not kept, before `on_connection_resumed` is called;
* a second protocol client can share the link (MQTT-based file delivery beside Jobs): `tap()`
  gives it the messages below one topic prefix, which then never reach the main listener, and
  the link's losses and resumptions, which go to every listener. It sees the link only as a
  `SharedLink`: it may subscribe, publish and tap, never take the main listener's place.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

from jobs_agent.aio import wait_event

log = structlog.get_logger("jobs_agent.transport")


class TransportError(Exception):
    """A transport operation failed (the message says which and why)."""


class NotConnectedError(TransportError):
    """The link is down right now; the operation was not attempted."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


MessageCallback = Callable[[Message], None]
ConnectionLostCallback = Callable[[str], None]
"""Called with a human-readable reason when an established connection drops."""
ConnectionResumedCallback = Callable[[bool], None]
"""Called with `session_present` after a reconnect (not after the first connect)."""


class Tap:
    """One second listener on a transport (see `Transport.tap`); `close()` removes it."""

    def __init__(
        self,
        owner: Transport,
        prefix: str,
        on_message: MessageCallback,
        on_lost: ConnectionLostCallback | None,
        on_resumed: ConnectionResumedCallback | None,
    ) -> None:
        self.prefix = prefix
        self.on_message = on_message
        self.on_lost = on_lost
        self.on_resumed = on_resumed
        self._owner: Transport | None = owner

    def close(self) -> None:
        """Stop listening. Idempotent."""
        if self._owner is not None:
            self._owner._taps.remove(self)
            self._owner = None


class SharedLink(Protocol):
    """What a protocol client that shares someone else's transport may do with it."""

    @property
    def is_connected(self) -> bool: ...

    async def wait_connected(self, timeout: float | None = None) -> bool: ...

    async def subscribe(self, topic_filter: str) -> None: ...

    async def unsubscribe(self, topic_filter: str) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...

    def tap(
        self,
        prefix: str,
        on_message: MessageCallback,
        on_lost: ConnectionLostCallback | None = None,
        on_resumed: ConnectionResumedCallback | None = None,
    ) -> Tap: ...


class Transport(abc.ABC):
    """An MQTT link seen from the protocol code. See the module docstring for the contract."""

    def __init__(self) -> None:
        self._on_message: MessageCallback | None = None
        self._on_lost: ConnectionLostCallback | None = None
        self._on_resumed: ConnectionResumedCallback | None = None
        self._taps: list[Tap] = []
        self._up = asyncio.Event()

    # -- listeners ------------------------------------------------------------------------
    def set_message_callback(self, callback: MessageCallback | None) -> None:
        self._on_message = callback

    def set_connection_callbacks(
        self,
        on_lost: ConnectionLostCallback | None = None,
        on_resumed: ConnectionResumedCallback | None = None,
    ) -> None:
        self._on_lost = on_lost
        self._on_resumed = on_resumed

    def tap(
        self,
        prefix: str,
        on_message: MessageCallback,
        on_lost: ConnectionLostCallback | None = None,
        on_resumed: ConnectionResumedCallback | None = None,
    ) -> Tap:
        """Messages whose topic starts with `prefix` go to `on_message` instead of the main
        listener (to the earliest tap, if prefixes overlap); `on_lost` and `on_resumed` are
        called after the main listener's. Subscribing stays the tap owner's job."""
        if not prefix:
            raise ValueError("a tap needs a topic prefix")
        tap = Tap(self, prefix, on_message, on_lost, on_resumed)
        self._taps.append(tap)
        return tap

    # Backends call these on the loop thread only.
    def _mark_up(self) -> None:
        self._up.set()

    def _mark_down(self) -> None:
        self._up.clear()

    def _deliver(self, message: Message) -> None:
        for tap in self._taps:
            if message.topic.startswith(tap.prefix):
                tap.on_message(message)
                return
        if self._on_message is not None:
            self._on_message(message)

    def _connection_lost(self, reason: str) -> None:
        if self._on_lost is not None:
            self._on_lost(reason)
        for tap in list(self._taps):
            if tap.on_lost is not None:
                tap.on_lost(reason)

    def _connection_resumed(self, session_present: bool) -> None:
        if self._on_resumed is not None:
            self._on_resumed(session_present)
        for tap in list(self._taps):
            if tap.on_resumed is not None:
                tap.on_resumed(session_present)

    async def _restore_after_reconnect(
        self,
        session_present: bool,
        topic_filters: Iterable[str],
        resubscribe: Callable[[str], Awaitable[None]],
        is_current: Callable[[], bool],
    ) -> None:
        """The contract's reconnect step, shared by the backends: re-subscribe what a lost
        session forgot, then mark the link up and tell the listener, unless a newer connection
        (or a close) has superseded this one (`is_current`)."""
        if not session_present:
            for topic_filter in sorted(topic_filters):
                try:
                    await resubscribe(topic_filter)
                except NotConnectedError:
                    return  # the link dropped again; the next connection starts over
                except TransportError as exc:
                    if is_current():
                        log.error(
                            "cannot subscribe again after reconnecting",
                            topic_filter=topic_filter,
                            error=str(exc),
                        )
        if not is_current():
            return
        self._mark_up()
        log.info("connection resumed", session_present=session_present)
        self._connection_resumed(session_present)

    # -- the link ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._up.is_set()

    @abc.abstractmethod
    async def connect(self, timeout: float | None = None) -> None:
        """Connect, retrying with backoff until connected or `timeout` (None: forever).

        Raises `TransportError` on timeout or on a permanent failure (bad certificate, refused
        credentials) with a message an operator can act on. After the first success the backend
        reconnects by itself for as long as it is not disconnected.
        """

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the link cleanly and stop reconnecting. Idempotent."""

    @abc.abstractmethod
    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe with QoS 1 and wait for the SUBACK; remembered across reconnects."""

    @abc.abstractmethod
    async def unsubscribe(self, topic_filter: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the acknowledgement."""

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the link is up; False on timeout."""
        return await wait_event(self._up, timeout)
