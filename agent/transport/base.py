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
* `submit` is `publish` for a request whose reply proves its delivery: a backend whose PUBACK
  costs a thread hop (awscrt) or a wake-up of the requesting task (paho) returns once the
  packet is queued and reports a later refusal or loss through `on_failure`, on the loop; the
  others wait for the PUBACK as `publish` does and raise. A caller handles both;
* subscriptions are remembered by the transport and restored after a reconnect whose session
  was not kept, before `on_connection_resumed` is called.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from jobs_agent.aio import wait_event
from jobs_agent.datamodel import model

log = structlog.get_logger("jobs_agent.transport")

MAX_FILTERS_PER_SUBSCRIBE = 8
"""AWS IoT Core's hard quota of topic filters in one SUBSCRIBE packet: more are sent in several."""


class TransportError(Exception):
    """A transport operation failed (the message says which and why)."""


class NotConnectedError(TransportError):
    """The link is down right now; the operation was not attempted."""


@model(slots=True)
class Message:
    """One message received on a subscribed topic."""

    topic: str
    payload: bytes


MessageCallback = Callable[[Message], None]
ConnectionLostCallback = Callable[[str], None]
"""Called with a human-readable reason when an established connection drops."""
ConnectionResumedCallback = Callable[[bool], None]
"""Called with `session_present` after a reconnect (not after the first connect)."""
FailureCallback = Callable[[TransportError], None]
"""Called on the loop when a submitted publish was refused (`TransportError`) or lost with the
link (`NotConnectedError`) after `submit` returned."""


def _in_packets(topic_filters: Sequence[str]) -> list[Sequence[str]]:
    """`topic_filters` cut into SUBSCRIBE packets of up to `MAX_FILTERS_PER_SUBSCRIBE`."""
    limit = MAX_FILTERS_PER_SUBSCRIBE
    return [topic_filters[at : at + limit] for at in range(0, len(topic_filters), limit)]


def _refused(topic_filter: str, reason: str) -> str:
    """A filter refused in a packet, in the words of a `subscribe` of it alone."""
    return f"subscribe {topic_filter}: refused by the broker ({reason})"


class Transport(abc.ABC):
    """An MQTT link seen from the protocol code. See the module docstring for the contract."""

    def __init__(self) -> None:
        self._on_message: MessageCallback | None = None
        self._on_lost: ConnectionLostCallback | None = None
        self._on_resumed: ConnectionResumedCallback | None = None
        self._up = asyncio.Event()
        self._subscriptions: set[str] = set()
        """What to subscribe again after a reconnect whose session the broker did not keep."""
        self._closing = False
        """Set by `disconnect()`: a drop is then no longer news and nothing is restored."""
        self._generation = 0
        """Counts link changes, so that a restore finishing late knows it was superseded."""
        self._tasks: set[asyncio.Task[None]] = set()

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

    # Backends call these on the loop thread only.
    def _mark_up(self) -> None:
        self._up.set()

    def _mark_down(self) -> None:
        self._up.clear()

    def _deliver(self, message: Message) -> None:
        if self._on_message is not None:
            self._on_message(message)

    def _connection_lost(self, reason: str) -> None:
        if self._on_lost is not None:
            self._on_lost(reason)

    def _connection_resumed(self, session_present: bool) -> None:
        if self._on_resumed is not None:
            self._on_resumed(session_present)

    # -- the reconnect bookkeeping, once for every backend ----------------------------------
    def _link_down(self, reason: str) -> None:
        """The backend's link dropped: mark it down and tell the listener (once per outage,
        and not for a drop `disconnect()` asked for)."""
        self._generation += 1
        was_up = self.is_connected
        self._mark_down()
        self._link_dropped(reason)
        if was_up and not self._closing:
            log.warning("connection lost", reason=reason)
            self._connection_lost(reason)

    def _link_dropped(self, reason: str) -> None:  # noqa: B027 -- a hook, empty by default
        """What else a backend fails when its link drops (paho: the waiting acknowledgements)."""

    def _link_restored(self, session_present: bool) -> None:
        """The backend reconnected: restore the subscriptions in a task, then announce it."""
        if self._closing:
            return
        self._generation += 1
        generation = self._generation
        self._spawn(
            self._restore_after_reconnect(
                session_present, lambda: generation == self._generation and not self._closing
            )
        )

    async def _send_subscribe(self, topic_filter: str) -> None:
        """One SUBSCRIBE on the current link, until its SUBACK (what `subscribe` sends, and what
        a restore sends again); backends that use `_link_restored` provide it."""
        raise NotImplementedError

    async def _send_subscriptions(self, topic_filters: Sequence[str]) -> list[str]:
        """One SUBSCRIBE packet for `topic_filters` (up to `MAX_FILTERS_PER_SUBSCRIBE`) on the
        current link, until its SUBACK: why the broker refused each filter, in their order
        ("" for one it granted); backends that use `_subscribe_in_packets` provide it."""
        raise NotImplementedError

    def _packs_subscriptions(self, backend: type[Transport]) -> bool:
        """Whether the MQTT `backend`'s `subscribe_all` may pack filters into one SUBSCRIBE
        (`_subscribe_in_packets`): not for a class below it that sends each filter its own way
        (a `_send_subscribe` of its own: the emulator's without echo, `sim fleet`'s batches
        of one loop turn), whose `subscribe_all` is one `subscribe` each, through it."""
        return type(self)._send_subscribe is backend._send_subscribe

    async def _subscribe_in_packets(self, topic_filters: Sequence[str]) -> None:
        """`subscribe_all` through `_send_subscriptions`, in as few packets as the quota allows
        (sent at once): the filters granted are remembered; the first refused one is raised,
        named as a `subscribe` of it alone names it."""
        chunks = _in_packets(topic_filters)
        answers = await asyncio.gather(*(self._send_subscriptions(chunk) for chunk in chunks))
        refused = ""
        for chunk, reasons in zip(chunks, answers, strict=True):
            for index, topic_filter in enumerate(chunk):
                reason = reasons[index] if index < len(reasons) else ""
                if not reason:
                    self._subscriptions.add(topic_filter)
                elif not refused:
                    refused = _refused(topic_filter, reason)
        if refused:
            raise TransportError(refused)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _restores_in_packets(self) -> bool:
        """Whether a restore may ask for the lost filters in as few SUBSCRIBE packets as the
        quota allows, as `subscribe_all` does (the MQTT backends: one packet each way after a
        reconnect instead of one round trip per filter, one after the other; issue 18)."""
        return False

    def _restore_failed(
        self, topic_filter: str, error: str, is_current: Callable[[], bool]
    ) -> None:
        """Log a filter a restore could not get back (a superseded restore is no news)."""
        if is_current():
            log.error(
                "cannot subscribe again after reconnecting", topic_filter=topic_filter, error=error
            )

    async def _restore_one_by_one(
        self, topic_filters: Sequence[str], is_current: Callable[[], bool]
    ) -> bool:
        """One SUBSCRIBE per filter (`_send_subscribe`); False when the link dropped again."""
        for topic_filter in topic_filters:
            try:
                await self._send_subscribe(topic_filter)
            except NotConnectedError:
                return False
            except TransportError as exc:
                self._restore_failed(topic_filter, str(exc), is_current)
        return True

    async def _restore_in_packets(
        self, topic_filters: Sequence[str], is_current: Callable[[], bool]
    ) -> bool:
        """The filters in packets of up to `MAX_FILTERS_PER_SUBSCRIBE` (`_send_subscriptions`,
        sent at once); each refused filter is logged as `_restore_one_by_one` logs it (the
        words of a `subscribe` of it alone), and a packet that failed as a whole names each
        of its filters. False when the link dropped again."""
        chunks = _in_packets(topic_filters)
        answers = await asyncio.gather(
            *(self._send_subscriptions(chunk) for chunk in chunks), return_exceptions=True
        )
        restored = True
        for chunk, answer in zip(chunks, answers, strict=True):
            if isinstance(answer, NotConnectedError):
                restored = False
            elif isinstance(answer, TransportError):
                for topic_filter in chunk:
                    self._restore_failed(topic_filter, str(answer), is_current)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for topic_filter, reason in zip(chunk, answer, strict=False):
                    if reason:
                        self._restore_failed(
                            topic_filter, _refused(topic_filter, reason), is_current
                        )
        return restored

    async def _restore_after_reconnect(
        self, session_present: bool, is_current: Callable[[], bool]
    ) -> None:
        """The contract's reconnect step: re-subscribe what a lost session forgot, then mark the
        link up and tell the listener, unless a newer connection (or a close) has superseded
        this one (`is_current`)."""
        if not session_present:
            filters = sorted(self._subscriptions)
            if self._restores_in_packets():
                restored = await self._restore_in_packets(filters, is_current)
            else:
                restored = await self._restore_one_by_one(filters, is_current)
            if not restored:
                return  # the link dropped again; the next connection starts over
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

    async def subscribe_all(self, topic_filters: Sequence[str]) -> None:
        """`subscribe` to each of `topic_filters`, until every SUBACK; a refusal names its
        filter. By default one `subscribe` each, all at once; the MQTT backends ask for up to
        `MAX_FILTERS_PER_SUBSCRIBE` in one SUBSCRIBE packet, which the broker answers filter by
        filter in one SUBACK (one packet each way at start-up instead of eight; issue 18)."""
        await asyncio.gather(*(self.subscribe(f) for f in topic_filters))

    @abc.abstractmethod
    async def unsubscribe(self, topic_filter: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the acknowledgement."""

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        """Publish with QoS 1 a request whose reply proves its delivery (see the module
        docstring). By default `publish`: the PUBACK is waited for, failures are raised and
        `on_failure` is never called."""
        await self.publish(topic, payload)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the link is up; False on timeout."""
        return await wait_event(self._up, timeout)
