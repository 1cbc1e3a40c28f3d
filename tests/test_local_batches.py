"""The local bus delivers what it routes to a client one after the other in one loop callback
(issue 18).

A reply and the events that follow it (`notify`, `notify-next`) were a loop callback each. These
tests count the loop's callbacks for a client's deliveries on a real bus and loop, and check
that a batch never passes a link event of the same client scheduled after it, and that a
listener that raises does not cost the next message its delivery.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport


class Reader:
    """A client on the bus and what it heard, messages and link events, in order."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        self.transport = LocalTransport(bus, client_id)
        self.heard: list[str] = []
        self.transport.set_message_callback(lambda message: self.heard.append(message.topic))
        self.transport.set_connection_callbacks(
            lambda _reason: self.heard.append("lost"),
            lambda _present: self.heard.append("resumed"),
        )

    async def start(self, topic_filter: str) -> Reader:
        await self.transport.connect(5)
        await self.transport.subscribe(topic_filter)
        return self


def _callbacks_for(monkeypatch: pytest.MonkeyPatch, transport: LocalTransport) -> list[Any]:
    """The loop callbacks scheduled for `transport` (bound methods of it), counted."""
    loop = asyncio.get_running_loop()
    scheduled: list[Any] = []
    real = loop.call_soon

    def call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        if getattr(callback, "__self__", None) is transport:
            scheduled.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", call_soon)
    return scheduled


async def _until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)


async def test_messages_routed_one_after_the_other_take_one_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three messages published in a row to one client: loop callbacks 3 -> 1, the messages
    in publish order; the next publish, after they were delivered, takes a callback of its
    own."""
    bus = LocalBus()
    reader = await Reader(bus, "reader").start("t/#")
    publisher = LocalTransport(bus, "publisher")
    await publisher.connect(5)
    scheduled = _callbacks_for(monkeypatch, reader.transport)
    for topic in ("t/reply", "t/notify", "t/notify-next"):
        await publisher.publish(topic, b"{}")
    await _until(lambda: len(reader.heard) == 3)
    assert reader.heard == ["t/reply", "t/notify", "t/notify-next"]
    assert len(scheduled) == 1
    await publisher.publish("t/later", b"{}")
    await _until(lambda: len(reader.heard) == 4)
    assert len(scheduled) == 2
    await publisher.disconnect()
    await reader.transport.disconnect()


async def test_a_batch_never_passes_a_link_event_scheduled_after_it() -> None:
    """A message, then the link lost and back (a broker restart that keeps sessions), then a
    message: heard in that order, the second message not folded into the first one's
    callback."""
    bus = LocalBus()
    reader = await Reader(bus, "reader").start("t/#")
    publisher = LocalTransport(bus, "publisher")
    publisher.no_local = True
    await publisher.connect(5)
    await publisher.publish("t/first", b"{}")
    bus.drop_all()
    bus._publish(publisher, "t/second", b"{}")  # before the publisher's own resume is run
    await _until(lambda: "t/second" in reader.heard)
    assert reader.heard == ["t/first", "lost", "resumed", "t/second"]
    await publisher.disconnect()
    await reader.transport.disconnect()


async def test_a_listener_that_raises_costs_the_next_message_nothing() -> None:
    """The first message's listener raises: the loop's exception handler is told once, and the
    message after it in the same batch is still delivered."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        bus = LocalBus()
        transport = LocalTransport(bus, "reader")
        heard: list[str] = []

        def listener(message: Message) -> None:
            heard.append(message.topic)
            if message.topic == "t/bad":
                raise RuntimeError("listener failed")

        transport.set_message_callback(listener)
        await transport.connect(5)
        await transport.subscribe("t/#")
        publisher = LocalTransport(bus, "publisher")
        await publisher.connect(5)
        await publisher.publish("t/bad", b"{}")
        await publisher.publish("t/good", b"{}")
        await _until(lambda: len(heard) == 2)
        assert heard == ["t/bad", "t/good"]
        assert [str(context["exception"]) for context in errors] == ["listener failed"]
        await publisher.disconnect()
        await transport.disconnect()
    finally:
        loop.set_exception_handler(previous)
