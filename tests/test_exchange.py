"""The request/reply exchange every AWS IoT API client shares, on the in-process bus with a
real responder: what one request costs the event loop, and that a lost reply is asked again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import Message
from jobs_agent.transport.exchange import Exchange
from jobs_agent.transport.local import LocalBus, LocalTransport

REQUEST = "svc/request"
REPLY = "svc/reply"


class Responder:
    """Answers every request with its token; drops the first `drop` requests (a reply lost
    with the link)."""

    def __init__(self, bus: LocalBus) -> None:
        self.transport = LocalTransport(bus, "responder")
        self.drop = 0
        self.seen = 0
        self.arrived = asyncio.Event()
        self.replies: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.transport.set_message_callback(self._on_message)
        await self.transport.connect(timeout=5)
        await self.transport.subscribe(REQUEST)

    def _on_message(self, message: Message) -> None:
        self.seen += 1
        self.arrived.set()
        if self.drop:
            self.drop -= 1
            return
        task = asyncio.ensure_future(self.transport.publish(REPLY, message.payload))
        self.replies.add(task)
        task.add_done_callback(self.replies.discard)


@pytest.fixture
async def link() -> AsyncIterator[tuple[Exchange[bytes], Responder, LocalBus]]:
    bus = LocalBus()
    responder = Responder(bus)
    await responder.start()
    device = LocalTransport(bus, "device")
    exchange: Exchange[bytes] = Exchange(device)

    def on_reply(message: Message) -> None:
        exchange.resolve(message.payload.decode(), "key", message.payload)

    device.set_message_callback(on_reply)
    device.set_connection_callbacks(lambda _reason: exchange.link_lost(), None)
    await device.connect(timeout=5)
    await device.subscribe(REPLY)
    yield exchange, responder, bus
    await device.disconnect()
    await responder.transport.disconnect()


async def ask(exchange: Exchange[bytes], seconds: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    return await exchange.request(
        REQUEST,
        "key",
        lambda token: token.encode(),
        lambda reply: reply,
        deadline=loop.time() + seconds,
        backoff=Backoff(0.01, 0.05),
    )


async def test_a_request_creates_no_task(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """Waiting for the reply (or a link loss) is one future: no task per request, which used to
    be created to watch for the loss beside the reply."""
    exchange, _responder, _bus = link
    await ask(exchange)  # warm: the transports' own tasks, if any, are made
    loop = asyncio.get_running_loop()
    created: list[object] = []
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting)
    try:
        replies = [await ask(exchange) for _ in range(20)]
    finally:
        loop.set_task_factory(default)
    assert all(isinstance(reply, bytes) for reply in replies)
    ours = [c for c in created if "exchange" in getattr(c, "__qualname__", "")]
    ours += [c for c in created if getattr(c, "__qualname__", "") == "Event.wait"]
    assert ours == [], ours


async def test_a_reply_lost_with_the_link_is_asked_again(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    exchange, responder, bus = link
    responder.drop = 1
    asking = asyncio.ensure_future(ask(exchange))
    await asyncio.wait_for(responder.arrived.wait(), 5)
    bus.set_online(False)
    bus.set_online(True)
    assert isinstance(await asyncio.wait_for(asking, 5), bytes)
    assert responder.seen == 2
    assert exchange.stats.republishes == 1
