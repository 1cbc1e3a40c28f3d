"""One MQTT link, several protocol clients: the Jobs client, the shadow client, a streams client.

A `Transport` has one message listener and one pair of connection listeners, and every protocol
client owns the listeners of the transport it is given (the Jobs client's contract). A device has
one connection to AWS IoT (one client id: a second connection would take the first one over), so
clients that share it each get a `LinkView`: a `Transport` of their own that

* delivers only the messages that match the view's own subscriptions,
* passes connection loss and resumption to every view,
* counts subscriptions per filter, so one view's `unsubscribe` never removes a filter another
  view still uses,
* does not own the link: `connect` waits for the owner's connection, `disconnect` only detaches
  the view. The link is connected, reconnected and closed by whoever created it.

Nothing here knows a protocol or a backend: it sits on the seam's abstract `Transport`.
"""

from __future__ import annotations

import asyncio
import contextlib

from jobs_agent.transport.base import Message, Transport, TransportError
from jobs_agent.transport.topics import topic_matches


class SharedLink:
    """Hands out views of `transport`; takes over its listeners for as long as it lives."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._views: list[LinkView] = []
        self._counts: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        transport.set_message_callback(self._on_message)
        transport.set_connection_callbacks(self._on_lost, self._on_resumed)

    def view(self) -> LinkView:
        view = LinkView(self)
        self._views.append(view)
        return view

    def close(self) -> None:
        """Give the transport's listeners back (the link itself stays as it is)."""
        self.transport.set_message_callback(None)
        self.transport.set_connection_callbacks(None, None)
        self._views.clear()

    # -- for the views --------------------------------------------------------------------------
    def _lock(self, topic_filter: str) -> asyncio.Lock:
        return self._locks.setdefault(topic_filter, asyncio.Lock())

    async def _subscribe(self, topic_filter: str) -> None:
        async with self._lock(topic_filter):
            if self._counts.get(topic_filter, 0) == 0:
                await self.transport.subscribe(topic_filter)
            self._counts[topic_filter] = self._counts.get(topic_filter, 0) + 1

    async def _unsubscribe(self, topic_filter: str) -> None:
        async with self._lock(topic_filter):
            count = self._counts.get(topic_filter, 0)
            if count <= 1:
                self._counts.pop(topic_filter, None)
                if count == 1:
                    await self.transport.unsubscribe(topic_filter)
            else:
                self._counts[topic_filter] = count - 1

    def _detach(self, view: LinkView) -> None:
        if view in self._views:
            self._views.remove(view)

    # -- the link's listeners (on the loop thread) ----------------------------------------------
    def _on_message(self, message: Message) -> None:
        for view in list(self._views):
            if view.wants(message.topic):
                view._deliver(message)

    def _on_lost(self, reason: str) -> None:
        for view in list(self._views):
            view._connection_lost(reason)

    def _on_resumed(self, session_present: bool) -> None:
        for view in list(self._views):
            view._connection_resumed(session_present)


class LinkView(Transport):
    """One client's share of a `SharedLink` (see the module docstring)."""

    def __init__(self, link: SharedLink) -> None:
        super().__init__()
        self.link = link
        self.filters: set[str] = set()
        self._detached = False

    def wants(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in self.filters)

    @property
    def is_connected(self) -> bool:
        return not self._detached and self.link.transport.is_connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if self._detached:
            return False
        return await self.link.transport.wait_connected(timeout)

    async def connect(self, timeout: float | None = None) -> None:
        """Wait for the owner's connection (a view never opens one)."""
        if self._detached:
            raise TransportError("this view of the shared MQTT link was disconnected")
        if not await self.link.transport.wait_connected(timeout):
            raise TransportError(f"the shared MQTT link did not connect within {timeout} s")

    async def disconnect(self) -> None:
        """Detach: give back this view's subscriptions; the link stays up. Idempotent."""
        if self._detached:
            return
        self._detached = True
        self.link._detach(self)
        for topic_filter in sorted(self.filters):
            # the link is down: the broker forgets them with the session anyway
            with contextlib.suppress(TransportError):
                await self.link._unsubscribe(topic_filter)
        self.filters.clear()

    async def subscribe(self, topic_filter: str) -> None:
        if self._detached:
            raise TransportError("this view of the shared MQTT link was disconnected")
        if topic_filter in self.filters:
            return
        self.filters.add(topic_filter)  # before the SUBACK: a reply may come right after it
        try:
            await self.link._subscribe(topic_filter)
        except BaseException:
            self.filters.discard(topic_filter)
            raise

    async def unsubscribe(self, topic_filter: str) -> None:
        if topic_filter not in self.filters:
            return
        self.filters.discard(topic_filter)
        await self.link._unsubscribe(topic_filter)

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._detached:
            raise TransportError("this view of the shared MQTT link was disconnected")
        await self.link.transport.publish(topic, payload)
