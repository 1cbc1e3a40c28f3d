"""The request/reply exchange every AWS IoT API client shares, on the in-process bus with a
real responder: what one request costs the event loop, and that a lost reply is asked again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import (
    FailureCallback,
    Message,
    NotConnectedError,
    TransportError,
)
from jobs_agent.transport.exchange import Exchange, RequestAbandoned
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.calls import loop_asks, timers_armed

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


class FailingLater(LocalTransport):
    """A device whose `submit` returns before the outcome, as awscrt's does: the next
    `failures` submits are queued and then reported failed, on the loop, instead of sent."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__(bus, client_id)
        self.failures: list[TransportError] = []

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        if self.failures:
            asyncio.get_running_loop().call_soon(on_failure, self.failures.pop(0))
            return
        await self.publish(topic, payload)


@pytest.fixture
async def link() -> AsyncIterator[tuple[Exchange[bytes], Responder, LocalBus]]:
    async for wired in wire(LocalTransport):
        yield wired


@pytest.fixture
async def failing() -> AsyncIterator[tuple[Exchange[bytes], Responder, LocalBus]]:
    async for wired in wire(FailingLater):
        yield wired


async def wire(
    device_type: type[LocalTransport],
) -> AsyncIterator[tuple[Exchange[bytes], Responder, LocalBus]]:
    bus = LocalBus()
    responder = Responder(bus)
    await responder.start()
    device = device_type(bus, "device")
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


async def test_a_submitted_request_refused_after_it_was_queued_fails_at_once(
    failing: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """A backend that returns from `submit` before the PUBACK reports a refusal later: the
    request fails with it, not at its deadline."""
    exchange, responder, _bus = failing
    device = exchange.transport
    assert isinstance(device, FailingLater)
    device.failures = [
        TransportError("publish svc/request: refused by the broker (NOT_AUTHORIZED)")
    ]
    with pytest.raises(TransportError, match="NOT_AUTHORIZED"):
        await ask(exchange, seconds=60.0)
    assert responder.seen == 0
    assert exchange.stats.timeouts == 0


async def test_a_submitted_request_lost_after_it_was_queued_is_published_again(
    failing: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    exchange, responder, _bus = failing
    device = exchange.transport
    assert isinstance(device, FailingLater)
    device.failures = [NotConnectedError("publish svc/request: AWS_ERROR_MQTT5_DISCONNECTED")]
    assert isinstance(await ask(exchange), bytes)
    assert responder.seen == 1
    assert exchange.stats.publishes == 2


class Outlived(LocalTransport):
    """A device whose first `submit` is queued and kept: its failure is reported by the test,
    when it chooses (awscrt fails a publish still queued when its link drops)."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__(bus, client_id)
        self.queued: list[FailureCallback] = []
        self.submits = 0
        self.waiting = asyncio.Event()
        """Set when someone waits for the link to come back."""

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if not self.is_connected:
            self.waiting.set()
        return await super().wait_connected(timeout)

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        self.submits += 1
        if not self.queued:
            self.queued.append(on_failure)
            return
        await self.publish(topic, payload)


async def test_a_failure_reported_during_an_outage_is_published_again_once() -> None:
    """The failure of a publish lost with the link may come while the request already waits
    for the link (the link loss told it first): the request is published once more when the
    link is back, and answered."""
    async for exchange, responder, bus in wire(Outlived):
        device = exchange.transport
        assert isinstance(device, Outlived)
        asking = asyncio.ensure_future(ask(exchange))
        while not device.queued:
            await asyncio.sleep(0)
        bus.set_online(False)
        await asyncio.wait_for(device.waiting.wait(), 5)
        device.queued[0](NotConnectedError("publish svc/request: AWS_ERROR_MQTT5_DISCONNECTED"))
        bus.set_online(True)
        assert isinstance(await asyncio.wait_for(asking, 5), bytes)
        assert (device.submits, responder.seen) == (2, 1)


async def test_requests_share_one_timer_for_their_deadlines(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """Each request armed and cancelled a timer of its own (`asyncio.timeout_at`, a dozen
    Python calls): two per plugin job. The exchange keeps one, at the earliest deadline it was
    armed for, so 20 answered requests arm at most one (issue 18)."""
    exchange, _responder, _bus = link
    with timers_armed() as armed:
        replies = [await ask(exchange) for _ in range(20)]
    assert all(isinstance(reply, bytes) for reply in replies)
    assert len(armed) <= 1, armed


async def test_a_request_nobody_answers_ends_at_its_deadline(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """The deadline ends the wait for a reply that never comes, and the exchange keeps
    answering what comes after it."""
    exchange, responder, _bus = link
    responder.drop = 1
    assert await ask(exchange, seconds=0.05) is None
    assert exchange.stats.timeouts == 1
    assert exchange.waiting == 0
    assert isinstance(await ask(exchange), bytes)


async def test_an_earlier_deadline_ends_its_request_and_leaves_a_later_one_waiting(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """One timer serves requests with different deadlines: one armed later for an earlier
    deadline takes over, and a request whose deadline is ahead waits on."""
    exchange, responder, _bus = link
    responder.drop = 2
    late = asyncio.ensure_future(ask(exchange, seconds=60.0))
    while responder.seen < 1:
        await asyncio.sleep(0)
    assert await ask(exchange, seconds=0.05) is None
    assert not late.done() and exchange.waiting == 1
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert exchange.waiting == 0


class Unacknowledged(LocalTransport):
    """A device whose publish waits for a PUBACK that never comes (paho's `submit` waits for
    it): only the deadline ends the request."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__(bus, client_id)
        self.entered = asyncio.Event()

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        self.entered.set()
        await asyncio.get_running_loop().create_future()


async def test_an_unacknowledged_publish_ends_at_the_deadline_but_a_cancel_passes() -> None:
    """The deadline cuts a `submit` that still waits short, as a timeout: the request returns
    None and its task carries no cancellation left over. A cancel of the caller's own, in the
    same wait, still cancels it."""
    async for exchange, _responder, _bus in wire(Unacknowledged):
        assert await ask(exchange, seconds=0.05) is None
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert exchange.stats.timeouts == 1
        device = exchange.transport
        assert isinstance(device, Unacknowledged)
        device.entered.clear()
        asking = asyncio.ensure_future(ask(exchange, seconds=60.0))
        await device.entered.wait()
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert exchange.waiting == 0


async def test_a_request_asks_for_the_running_loop_once(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """On Python 3.11 each ask for the running loop (`get_running_loop`, `current_task()`
    without its loop) is a `getpid` system call. A request asked four times (its own call, its
    send's, and the timeout's `current_task` and `reschedule`); now once, the loop passed
    down."""
    exchange, _responder, _bus = link
    await ask(exchange)
    watched = ("/transport/exchange.py", "/asyncio/timeouts.py", "/asyncio/tasks.py")
    with loop_asks(watched) as asks:
        replies = [await ask(exchange) for _ in range(10)]
    assert all(isinstance(reply, bytes) for reply in replies)
    assert asks == ["exchange.py:request"] * 10, asks


async def test_a_stop_ends_the_requests_waiting_for_the_link_and_no_other(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """Once the agent is stopping (`stop_waiting_for_link`), a request whose link is down fails
    at once with `NotConnectedError`: the one already waiting for the link (it waited until
    its deadline: an hour here) and any made while the link stays down, with no cancellation
    left over on the caller. A request on a link that is up still waits for its answer."""
    exchange, responder, bus = link
    responder.drop = 1
    waiting = asyncio.ensure_future(ask(exchange, seconds=3600.0))
    await asyncio.wait_for(responder.arrived.wait(), 5)
    bus.set_online(False)
    while not any(w.submitting is not None for w in exchange._waiting.values()):
        await asyncio.sleep(0)  # until it waits for the link (`_attempts`)
    exchange.stop_waiting_for_link()
    with pytest.raises(NotConnectedError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(NotConnectedError):
        await asyncio.wait_for(ask(exchange, seconds=3600.0), 5)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert (exchange.waiting, exchange.stats.timeouts, responder.seen) == (0, 0, 1)
    bus.set_online(True)
    assert isinstance(await asyncio.wait_for(ask(exchange, seconds=3600.0), 5), bytes)


async def test_a_stop_now_ends_every_request_waiting_for_an_answer_on_an_up_link(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """A second stop (`stop_waiting`): a request whose answer does not come, the link up, fails
    with `RequestAbandoned` once the grace is over (it waited until its deadline: an hour
    here), and so does one made afterwards; nothing counts as a timeout and no cancellation
    is left on the caller."""
    exchange, responder, _bus = link
    responder.drop = 1
    waiting = asyncio.ensure_future(ask(exchange, seconds=3600.0))
    await asyncio.wait_for(responder.arrived.wait(), 5)
    exchange.stop_waiting(grace=0.0)
    with pytest.raises(RequestAbandoned):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(RequestAbandoned):
        await asyncio.wait_for(ask(exchange, seconds=3600.0), 5)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert (exchange.waiting, exchange.stats.timeouts) == (0, 0)


async def test_a_stop_now_still_takes_an_answer_on_its_way(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """An answer that comes within the grace after the second stop is used, not thrown away:
    what the service did on it (a job taken, an outcome accepted) is recorded, where the next
    start would ask again (a duplicate request). The request is on its way, unanswered, when
    the stop comes; a request made just after it is sent and answered too."""
    exchange, responder, _bus = link
    asking = asyncio.ensure_future(ask(exchange, seconds=3600.0))
    await asyncio.sleep(0)  # published; the answer not read yet
    assert exchange.waiting == 1 and not any(w.answered for w in exchange._waiting.values())
    exchange.stop_waiting()
    assert isinstance(await asyncio.wait_for(asking, 5), bytes)
    assert isinstance(await asyncio.wait_for(ask(exchange, seconds=3600.0), 5), bytes)
    assert responder.seen == 2


async def test_a_stop_now_ends_the_pause_between_two_attempts(
    link: tuple[Exchange[bytes], Responder, LocalBus],
) -> None:
    """A refusal for now (throttled) is asked again after a backoff, up to `retry_max` (30 s by
    default; an hour here): a second stop ends that pause too, and the request fails with
    `RequestAbandoned` without asking again (before: it slept the hour out)."""
    exchange, responder, _bus = link

    def refuse(_reply: bytes) -> bytes:
        raise ValueError("throttled")

    asking = asyncio.ensure_future(
        exchange.request(
            REQUEST,
            "key",
            lambda token: token.encode(),
            refuse,
            within=7200.0,
            backoff=Backoff(3600.0, 3600.0),
            retryable=lambda _exc: True,
        )
    )
    while exchange.stats.retries == 0:
        await asyncio.sleep(0)  # until the refusal was read and the pause began
    exchange.stop_waiting()
    with pytest.raises(RequestAbandoned):
        await asyncio.wait_for(asking, 5)
    assert (responder.seen, exchange.waiting) == (1, 0)
