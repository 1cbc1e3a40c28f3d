"""One MQTT connection, several protocol clients: the Jobs client, the shadow client, a stream
download's client, each with a `Transport` of its own.

A device has one connection to AWS IoT (one client id: a second connection with it would take
the first one over), and a `Transport` has one message listener and one pair of connection
listeners, which the protocol client given it owns. `SharedLink` takes the real transport's
listeners and hands out `LinkView`s, each a `Transport` that

* delivers only the messages matching the view's own subscriptions (MQTT's matching: a message
  two views subscribed to goes to both, as a broker sends it to two clients),
* passes every loss and resumption of the link to every view,
* counts subscriptions per filter, so that one view's `unsubscribe` (or its `disconnect`) never
  takes a filter another view still uses, and the broker sees one subscription per filter
  (a view's `subscribe_all` asks for the filters nobody held in one `subscribe_all`),
* does not own the link: `connect` waits for the owner's connection, `disconnect` detaches the
  view and gives back its subscriptions; the link is connected, reconnected (the transport's
  bookkeeping restores the subscriptions) and closed by whoever made it.

So a protocol client is written once against `Transport` and runs the same alone on a link (the
emulator's tests, the dry run) or beside others (`device.build_device` gives the Jobs client a
view, and lends the `SharedLink` to plugins, which make their own views). Nothing here knows a
protocol or a backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobs_agent.transport.base import FailureCallback, Message, Transport, TransportError
from jobs_agent.transport.topics import has_wildcard, levels_match


@dataclass(eq=False)
class _Filter:
    """One filter as the broker sees it: how many views hold it, and whether it is subscribed."""

    holders: int = 0
    subscribed: bool = False
    """Set after the SUBACK, cleared before an UNSUBSCRIBE: when unsure, subscribe again (which
    MQTT makes harmless) rather than believe a filter is there when it may not be."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serialises this filter's SUBSCRIBE and UNSUBSCRIBE, so they reach the broker in order."""


class SharedLink:
    """Hands out views of `transport`; takes over its listeners until `close()`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._views: list[LinkView] = []
        self._filters: dict[str, _Filter] = {}
        transport.set_message_callback(self._on_message)
        transport.set_connection_callbacks(self._on_lost, self._on_resumed)

    @property
    def held(self) -> frozenset[str]:
        """The filters some view holds (what the link is subscribed to on their behalf)."""
        return frozenset(f for f, entry in self._filters.items() if entry.holders)

    def view(self) -> LinkView:
        """A new client's share of the link (see the module docstring)."""
        view = LinkView(self)
        self._views.append(view)
        return view

    def close(self) -> None:
        """Give the transport's listeners back; the views hear nothing more. The link itself
        stays as it is (it belongs to whoever made it)."""
        self.transport.set_message_callback(None)
        self.transport.set_connection_callbacks(None, None)
        self._views.clear()

    # -- for the views --------------------------------------------------------------------------
    async def _hold(self, topic_filter: str) -> None:
        """One more holder of `topic_filter`; subscribed (until its SUBACK) if it was not."""
        entry = self._filters.setdefault(topic_filter, _Filter())
        entry.holders += 1  # at once: an UNSUBSCRIBE waiting for the lock then sees it held
        try:
            async with entry.lock:
                if not entry.subscribed:
                    await self.transport.subscribe(topic_filter)
                    entry.subscribed = True
        except BaseException:
            entry.holders -= 1
            self._forget_if_unused(topic_filter, entry)
            raise

    async def _hold_all(self, topic_filters: Sequence[str]) -> None:
        """`_hold` of each of `topic_filters` (distinct), those not yet subscribed asked for in
        one `subscribe_all` (one SUBSCRIBE packet on MQTT). The filters' locks are taken in
        their sorted order, so two holders of overlapping sets cannot wait on each other. On a
        failure none is counted as subscribed (when unsure, subscribe again) and none held."""
        entries = {f: self._filters.setdefault(f, _Filter()) for f in topic_filters}
        for entry in entries.values():
            entry.holders += 1  # at once, as `_hold` does
        try:
            async with contextlib.AsyncExitStack() as locks:
                for topic_filter in sorted(entries):
                    await locks.enter_async_context(entries[topic_filter].lock)
                wanted = [f for f, entry in entries.items() if not entry.subscribed]
                if wanted:
                    await self.transport.subscribe_all(wanted)
                for topic_filter in wanted:
                    entries[topic_filter].subscribed = True
        except BaseException:
            for topic_filter, entry in entries.items():
                entry.holders -= 1
                self._forget_if_unused(topic_filter, entry)
            raise

    def _drop(self, topic_filter: str) -> bool:
        """One holder fewer, at once (a cancelled unsubscription leaves no holder behind);
        True when that was the last one."""
        entry = self._filters.get(topic_filter)
        if entry is None or entry.holders == 0:
            return False
        entry.holders -= 1
        return entry.holders == 0

    async def _unsubscribe_unused(self, topic_filter: str) -> None:
        """UNSUBSCRIBE a filter nobody holds (unless someone took it again meanwhile)."""
        entry = self._filters.get(topic_filter)
        if entry is None:
            return
        try:
            async with entry.lock:
                if entry.holders == 0 and entry.subscribed:
                    entry.subscribed = False
                    await self.transport.unsubscribe(topic_filter)
        finally:
            self._forget_if_unused(topic_filter, entry)

    def _forget_if_unused(self, topic_filter: str, entry: _Filter) -> None:
        unused = entry.holders == 0 and not entry.subscribed and not entry.lock.locked()
        if unused and self._filters.get(topic_filter) is entry:
            del self._filters[topic_filter]

    def _detach(self, view: LinkView) -> None:
        if view in self._views:
            self._views.remove(view)

    # -- the link's listeners (on the loop thread) ----------------------------------------------
    def _on_message(self, message: Message) -> None:
        """To every view that subscribed to the topic: an exact filter is one set lookup, the
        wildcard ones are matched only for a view that has some, and the view's listener is
        called without the seam's `_deliver` (issue 18: with three views, 5 Python calls per
        message before, 1 now; five messages per plugin job)."""
        topic = message.topic
        levels: list[str] | None = None
        for view in list(self._views):
            if topic not in view._exact:
                if not view._wild:
                    continue
                if levels is None:
                    levels = topic.split("/")
                if not view._wants(topic, levels, topic.startswith("$")):
                    continue
            listener = view._on_message
            if listener is not None:
                listener(message)

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
        self._exact: set[str] = set()
        """This view's subscriptions without a wildcard: a topic matches one only by being it
        (one set lookup for most of a job's messages instead of matching every filter level
        by level; issue 18)."""
        self._wild: dict[str, tuple[str, ...]] = {}
        """Those with a wildcard, each with its levels (split once, matched often)."""
        self._detached = False

    @property
    def filters(self) -> frozenset[str]:
        return frozenset(self._exact).union(self._wild)

    def _wants(self, topic: str, topic_levels: list[str], dollar: bool) -> bool:
        if topic in self._exact:
            return True
        for levels in self._wild.values():
            if dollar and levels[0][:1] in ("+", "#"):
                continue  # a filter starting with a wildcard never matches a `$` topic
            if levels_match(levels, topic_levels):
                return True
        return False

    @property
    def is_connected(self) -> bool:
        return not self._detached and self.link.transport.is_connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if self._detached:
            return False
        return await self.link.transport.wait_connected(timeout)

    async def connect(self, timeout: float | None = None) -> None:
        """Wait for the owner's connection (a view never opens one)."""
        self._check_attached()
        if not await self.link.transport.wait_connected(timeout):
            raise TransportError(f"the shared MQTT link did not connect within {timeout} s")

    async def disconnect(self) -> None:
        """Detach: nothing more is delivered, and this view's subscriptions are given back
        (the last holder of a filter unsubscribes); the link stays up. Idempotent."""
        if self._detached:
            return
        self._detached = True
        self.link._detach(self)
        last = [f for f in sorted(self.filters) if self.link._drop(f)]
        self._exact.clear()
        self._wild.clear()
        for topic_filter in last:
            # With the link down the broker forgets them with the session anyway.
            with contextlib.suppress(TransportError):
                await self.link._unsubscribe_unused(topic_filter)

    async def subscribe(self, topic_filter: str) -> None:
        self._check_attached()
        if topic_filter in self._exact or topic_filter in self._wild:
            return
        # Listening before the SUBACK: an answer may follow it at once.
        self._listen(topic_filter)
        try:
            await self.link._hold(topic_filter)
        except BaseException:
            self._forget(topic_filter)
            raise

    async def subscribe_all(self, topic_filters: Sequence[str]) -> None:
        self._check_attached()
        held = self.filters
        new = [f for f in dict.fromkeys(topic_filters) if f not in held]
        for topic_filter in new:  # listening before the SUBACK, as `subscribe`
            self._listen(topic_filter)
        try:
            await self.link._hold_all(new)
        except BaseException:
            for topic_filter in new:
                self._forget(topic_filter)
            raise

    async def unsubscribe(self, topic_filter: str) -> None:
        if self._forget(topic_filter) and self.link._drop(topic_filter):
            await self.link._unsubscribe_unused(topic_filter)

    def _listen(self, topic_filter: str) -> None:
        if has_wildcard(topic_filter):
            self._wild[topic_filter] = tuple(topic_filter.split("/"))
        else:
            self._exact.add(topic_filter)

    def _forget(self, topic_filter: str) -> bool:
        """Stop listening on `topic_filter`; False when this view did not hold it."""
        if topic_filter in self._exact:
            self._exact.remove(topic_filter)
            return True
        return self._wild.pop(topic_filter, None) is not None

    async def publish(self, topic: str, payload: bytes) -> None:
        self._check_attached()
        await self.link.transport.publish(topic, payload)

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        self._check_attached()
        await self.link.transport.submit(topic, payload, on_failure)

    def _check_attached(self) -> None:
        if self._detached:
            raise TransportError("this view of the shared MQTT link was disconnected")
