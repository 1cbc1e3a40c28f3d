"""An in-process MQTT-like broker and its transport, for the embedded emulator and fast tests.

`LocalBus` routes like a real broker (topic filters per `agent.transport.topics`, one delivery
per matching client however many of its filters match, as MQTT requires) but never touches a
socket: a publish schedules the subscribers' callbacks with `loop.call_soon`, in publish order,
without a task per message (what is routed to one client one after the other, from its
loop's thread, goes in one callback). That is what lets the in-process drain benchmark run
hundreds of jobs per second. A topic's route is kept until a subscription changes: most of a
job's messages go to topics every job shares.

Sessions behave like persistent MQTT sessions across an outage: `set_online(False)` (or
`drop_all()`) drops every connection, the transports see connection-lost, and on restore they
see connection-resumed with `session_present=True` and their subscriptions still deliver.
Messages published to a client while only that client is offline are queued and delivered after
it resumes, as QoS 1 would. A clean `disconnect()` ends the client's session.

A bus normally serves transports on one asyncio loop; transports on another loop's thread are
also served (callbacks then go through `call_soon_threadsafe`), and the bus's state is guarded
by a lock for that case.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import get_ident
from typing import Any

from jobs_agent.transport.base import Message, NotConnectedError, Transport, TransportError
from jobs_agent.transport.topics import (
    has_wildcard,
    levels_match,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = ["LocalBus", "LocalTransport", "topic_matches"]

ROUTE_CACHE_LIMIT = 64
"""Topics whose routes the bus keeps. A job's own topics (its update and the reply) are new for
every job, so the cache is emptied when it reaches this many; the topics every job shares
(notify, notify-next, start-next and its reply) are routed again once per emptying."""


@dataclass(eq=False)
class _Session:
    client_id: str
    transport: LocalTransport
    filters: set[str] = field(default_factory=set)
    online: bool = True
    """The client's own link is up (independent of the whole bus being up)."""
    pending: list[Message] = field(default_factory=list)
    """QoS 1 messages for this client while its link is down, delivered on resume."""


class LocalBus:
    """An in-process broker. Create one per emulated "AWS IoT" and hand it to the transports."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._online = True
        self._sessions: dict[str, _Session] = {}
        # Routing indexes: exact topic -> sessions, and wildcard filters pre-split into levels.
        self._exact: dict[str, set[_Session]] = {}
        self._wild: dict[tuple[str, _Session], tuple[list[str], int, int]] = {}
        """Each wildcard filter's levels, and the fewest and most levels a topic it matches has
        (`_match` asks `levels_match` only for a topic of a length the filter can match)."""
        self._routes: dict[str, tuple[_Session, ...]] = {}
        """`_route`'s answers by topic, valid until a filter is added or removed."""
        self._waiting: set[LocalTransport] = set()
        self.published = 0
        """Messages accepted by the bus (for tests and the benchmark)."""

    # -- outage helpers for tests ------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self._online

    def set_online(
        self, online: bool, *, client_id: str | None = None, keep_sessions: bool = True
    ) -> None:
        """Take the whole bus (or one client's link) down or bring it back.

        Going down: the affected transports get connection-lost and `publish` raises
        `NotConnectedError`. Coming back: they get connection-resumed with `session_present`
        equal to `keep_sessions`; without a kept session their subscriptions are restored by
        the transport before the callback, as a real backend's resubscribe would.
        """
        with self._lock:
            if client_id is None:
                if online == self._online:
                    return
                self._online = online
                sessions = list(self._sessions.values())
            else:
                session = self._sessions.get(client_id)
                if session is None:
                    raise TransportError(f"no session for client {client_id!r} on the bus")
                sessions = [session]
            for session in sessions:
                if client_id is not None:
                    was_up = session.online and self._online
                    session.online = online
                    now_up = session.online and self._online
                else:
                    was_up = session.online and not online
                    now_up = session.online and online
                if was_up and not now_up:
                    session.transport._schedule(session.transport._link_lost, "bus offline")
                elif now_up and not was_up:
                    self._resume(session, keep_sessions)
            if online and client_id is None:
                for transport in self._waiting:
                    transport._schedule(transport._may_connect.set)

    def drop_all(self) -> None:
        """A broker restart that keeps sessions: every client loses its link and resumes."""
        self.set_online(False)
        self.set_online(True)

    def _resume(self, session: _Session, keep_session: bool) -> None:
        transport = session.transport
        if not keep_session:
            for topic_filter in list(session.filters):
                self._remove_filter(session, topic_filter)
            session.pending.clear()
            for topic_filter in transport._subscriptions:
                self._add_filter(session, topic_filter)
        pending, session.pending = session.pending, []
        transport._schedule(transport._link_resumed, keep_session)
        for message in pending:
            transport._schedule(transport._deliver, message)

    # -- connections ---------------------------------------------------------------------------
    def _attach(self, transport: LocalTransport) -> None:
        with self._lock:
            if not self._online:
                self._waiting.add(transport)
                raise NotConnectedError("the local bus is offline")
            self._waiting.discard(transport)
            old = self._sessions.get(transport.client_id)
            if old is not None and old.transport is not transport:
                # Session takeover, as a broker does for a second connection with the same id.
                old.transport._schedule(old.transport._taken_over)
                old.transport = transport
                old.online = True
                pending, old.pending = old.pending, []
                for message in pending:
                    transport._schedule(transport._deliver, message)
            elif old is None:
                self._sessions[transport.client_id] = _Session(transport.client_id, transport)

    def _detach(self, transport: LocalTransport) -> None:
        with self._lock:
            self._waiting.discard(transport)
            session = self._sessions.get(transport.client_id)
            if session is None or session.transport is not transport:
                return
            for topic_filter in list(session.filters):
                self._remove_filter(session, topic_filter)
            del self._sessions[transport.client_id]

    def _session_for(self, transport: LocalTransport) -> _Session:
        session = self._sessions.get(transport.client_id)
        if (
            session is None
            or session.transport is not transport
            or not session.online
            or not self._online
        ):
            raise NotConnectedError(f"{transport.client_id}: not connected to the local bus")
        return session

    # -- subscriptions -------------------------------------------------------------------------
    def _add_filter(self, session: _Session, topic_filter: str) -> None:
        if topic_filter in session.filters:
            return
        session.filters.add(topic_filter)
        self._routes.clear()
        if has_wildcard(topic_filter):
            levels = topic_filter.split("/")
            if levels[-1] == "#":  # "a/#" also matches "a"
                self._wild[(topic_filter, session)] = (levels, len(levels) - 1, sys.maxsize)
            else:
                self._wild[(topic_filter, session)] = (levels, len(levels), len(levels))
        else:
            self._exact.setdefault(topic_filter, set()).add(session)

    def _remove_filter(self, session: _Session, topic_filter: str) -> None:
        if topic_filter not in session.filters:
            return
        session.filters.discard(topic_filter)
        self._routes.clear()
        if has_wildcard(topic_filter):
            self._wild.pop((topic_filter, session), None)
        else:
            subscribers = self._exact.get(topic_filter)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self._exact[topic_filter]

    def _subscribe(self, transport: LocalTransport, topic_filter: str) -> None:
        with self._lock:
            self._add_filter(self._session_for(transport), topic_filter)

    def _unsubscribe(self, transport: LocalTransport, topic_filter: str) -> None:
        with self._lock:
            self._remove_filter(self._session_for(transport), topic_filter)

    # -- routing -------------------------------------------------------------------------------
    def _publish(self, transport: LocalTransport, topic: str, payload: bytes) -> None:
        """Route `payload` to every session subscribed to `topic`. The per-message path keeps
        its Python calls few (issue 18: eight publishes a job, each counted on the side that
        publishes): `_session_for`'s checks and a kept route's lookup are made here, and the
        thread is asked once per message rather than once per target and hop."""
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if (
                session is None
                or session.transport is not transport
                or not session.online
                or not self._online
            ):
                self._session_for(transport)  # raises NotConnectedError, with its message
            self.published += 1
            targets = self._routes.get(topic)
            if targets is None:
                targets = self._route(topic)
            if not targets:
                return
            message = Message(topic, payload)
            thread = get_ident()
            for target in targets:
                if target.transport is transport and transport.no_local:
                    continue
                if target.online:
                    target.transport._schedule_delivery(message, thread)
                else:
                    target.pending.append(message)

    def _route(self, topic: str) -> tuple[_Session, ...]:
        """Sessions to deliver to, each once, in a stable order.

        Most of a job's messages go to the same few topics every job: their routes are kept
        (`_routes`) rather than every wildcard filter matched level by level again (issue 18).
        """
        targets = self._routes.get(topic)
        if targets is None:
            if len(self._routes) >= ROUTE_CACHE_LIMIT:
                self._routes.clear()
            targets = self._routes[topic] = tuple(self._match(topic))
        return targets

    def _match(self, topic: str) -> list[_Session]:
        exact = self._exact.get(topic)
        targets: list[_Session] = list(exact) if exact else []
        if self._wild:
            dollar = topic.startswith("$")
            levels = topic.split("/")
            count = len(levels)
            seen = set(targets)
            for (topic_filter, session), (filter_levels, fewest, most) in self._wild.items():
                if session in seen or not fewest <= count <= most:
                    continue
                if dollar and topic_filter[0] in "+#":
                    continue
                if levels_match(filter_levels, levels):
                    seen.add(session)
                    targets.append(session)
        return targets


class LocalTransport(Transport):
    """A `Transport` on a `LocalBus`. Publish returns once the message is routed."""

    no_local = False
    """MQTT 5's No Local for every subscription of this client: what it publishes is never
    routed back to it (the emulator's end sets it, as its broker client subscribes with No
    Local: otherwise each of its replies and events came back to it to be parsed and dropped,
    six deliveries per job, issue 18)."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__()
        if not client_id:
            raise TransportError("client_id must not be empty")
        self.bus = bus
        self.client_id = client_id
        self._subscriptions: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._may_connect = asyncio.Event()
        self._closed = True
        self._ever_connected = False
        self._batch: list[Message] | None = None
        """Messages routed to this transport since its last scheduled callback, delivered by
        that one callback (`_schedule_delivery`)."""

    def _schedule(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` on this transport's loop, after what is already scheduled there."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._batch = None  # what is routed next comes after this callback
        if threading.get_ident() == self._thread:
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def _schedule_delivery(self, message: Message, thread: int) -> None:
        """Deliver `message` on this transport's loop (`thread`: the routing thread's ident).
        Messages routed to it one after the other from its loop's thread, with no other
        callback of its own scheduled between them, go in one loop callback, in order, as a
        broker's messages come in one read of a socket. A reply and the events that follow it
        (`notify`, `notify-next`) were a callback each: three callbacks a plugin job more
        (issue 18). `_schedule`'s steps are made here, without its call and its second look
        at the thread."""
        on_loop_thread = thread == self._thread
        batch = self._batch
        if batch is not None and on_loop_thread:
            batch.append(message)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        batch = [message]
        if on_loop_thread:
            loop.call_soon(self._deliver_batch, batch)
            self._batch = batch
        else:
            self._batch = None
            loop.call_soon_threadsafe(self._deliver_batch, batch)

    def _deliver_batch(self, batch: list[Message]) -> None:
        """Each message of `batch` delivered; one whose listener raises is reported to the
        loop's exception handler, as a callback of its own was, and the next still come."""
        if self._batch is batch:
            self._batch = None  # closed: what is routed from here on is a new batch
        for message in batch:
            try:
                self._deliver(message)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                if self._loop is not None:
                    self._loop.call_exception_handler(
                        {"message": "Exception in a local bus delivery", "exception": exc}
                    )

    # Bus events, run on the loop.
    def _link_lost(self, reason: str) -> None:
        if self._closed or not self.is_connected:
            return
        self._mark_down()
        self._connection_lost(reason)

    def _link_resumed(self, session_present: bool) -> None:
        if self._closed:
            return
        self._mark_up()
        self._connection_resumed(session_present)

    def _taken_over(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mark_down()
        self._connection_lost("session taken over by another connection with the same client id")

    # The Transport contract.
    async def connect(self, timeout: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._closed = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._may_connect.clear()
                    try:
                        self.bus._attach(self)
                    except NotConnectedError:
                        await self._may_connect.wait()
                        continue
                    break
        except TimeoutError:
            self.bus._detach(self)
            self._closed = True
            raise TransportError(
                f"{self.client_id}: local bus still offline after {timeout}s"
            ) from None
        self._ever_connected = True
        self._mark_up()

    async def disconnect(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bus._detach(self)
        self._mark_down()

    async def subscribe(self, topic_filter: str) -> None:
        validate_topic_filter(topic_filter)
        self.bus._subscribe(self, topic_filter)
        self._subscriptions.add(topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        self.bus._unsubscribe(self, topic_filter)
        self._subscriptions.discard(topic_filter)

    async def publish(self, topic: str, payload: bytes) -> None:
        validate_topic_name(topic)
        self.bus._publish(self, topic, bytes(payload))
