"""What the awscrt backend costs per message, on a real mTLS connection to mosquitto: counted,
not timed (the behaviour itself is tests/test_transport.py's suite)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import NotConnectedError, TransportError
from jobs_agent.transport.exchange import Exchange
from tests.fixtures.broker import Mosquitto
from tests.test_transport import AwscrtBackend, Inbox, _awscrt

MESSAGES = 5


@contextlib.contextmanager
def thread_hops(
    loop: asyncio.AbstractEventLoop, handles: list[object] | None = None
) -> Iterator[list[object]]:
    """The wake-ups other threads give `loop` while inside, each a thread hop: a callback
    handed over with `call_soon_threadsafe` (also listed in `handles`), or a write to an
    eventfd (the backend's own wake-up)."""
    hops: list[object] = []
    real = loop.call_soon_threadsafe
    real_write = os.eventfd_write
    ours = threading.get_ident()

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != ours:
            hops.append(callback)
            if handles is not None:
                handles.append(callback)
        return real(callback, *args, **kwargs)

    def counting_write(fd: int, value: int) -> None:
        if threading.get_ident() != ours:
            hops.append(fd)
        real_write(fd, value)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    os.eventfd_write = counting_write
    try:
        yield hops
    finally:
        del loop.call_soon_threadsafe
        os.eventfd_write = real_write


async def test_crt_callbacks_keep_one_python_thread_state(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """Each CRT callback into Python used to build a Python thread state and delete it on
    return (a 16 KiB frame stack mapped and unmapped each time, about 7 per job). A
    `threading.local` lives in the thread state, so what one callback on the CRT thread stores
    there is seen by the next one only when the state is kept."""
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    local = threading.local()
    seen: list[int | None] = []
    try:
        transport = backend.make("gw-thread-state")
        real = transport._crt_publish_received  # type: ignore[attr-defined]

        def spy(data: Any) -> None:
            seen.append(getattr(local, "calls", None))
            local.calls = len(seen)
            real(data)

        transport._crt_publish_received = spy  # type: ignore[attr-defined]
        inbox = Inbox(transport)
        await transport.connect(timeout=10.0)
        await transport.subscribe("state/#")
        for index in range(MESSAGES):
            await transport.publish(f"state/{index}", b"x")
            assert (await inbox.next()).topic == f"state/{index}"
    finally:
        await backend.close()
    assert seen == [None, *range(1, MESSAGES)]


async def test_a_request_costs_one_thread_hop_its_reply(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """A request's reply proves its delivery, so its PUBACK need not cross from the CRT thread
    to the loop: over awscrt a request/reply exchange takes one hop per request (the reply),
    where waiting for the PUBACK took two. Counted on the loop's `call_soon_threadsafe`, the
    one way in from a CRT thread."""
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    loop = asyncio.get_running_loop()
    try:
        transport, _inbox = await backend.connected("gw-hops")
        exchange: Exchange[bytes] = Exchange(transport)
        transport.set_message_callback(
            lambda message: exchange.resolve(message.payload.decode(), "key", message.payload)
        )
        await transport.subscribe("hops/request")
        await ask(exchange)  # warm
        with thread_hops(loop) as hops:
            replies = [await ask(exchange) for _ in range(MESSAGES)]
    finally:
        await backend.close()
    assert all(isinstance(reply, bytes) for reply in replies)
    assert len(hops) == MESSAGES, hops


async def test_a_reply_s_thread_hop_builds_no_handle_and_reads_once(
    mosquitto_factory: Callable[[], Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRT thread wakes the loop by writing to the transport's eventfd, which the loop
    reads once per wake-up: `call_soon_threadsafe` built a `Handle` (with a copy of the CRT
    thread's context) per hop, and the loop read its self-pipe twice, the second read raising
    `BlockingIOError`. Counted over request/reply exchanges: handles handed over by CRT
    threads, and reads of the wake-up per hop; every reply still arrives."""
    reads: list[int] = []
    real_read = os.eventfd_read

    def counting_read(fd: int) -> int:
        reads.append(fd)
        return real_read(fd)

    monkeypatch.setattr(os, "eventfd_read", counting_read)
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    loop = asyncio.get_running_loop()
    handles: list[object] = []
    try:
        transport, _inbox = await backend.connected("gw-no-handle")
        exchange: Exchange[bytes] = Exchange(transport)
        transport.set_message_callback(
            lambda message: exchange.resolve(message.payload.decode(), "key", message.payload)
        )
        await transport.subscribe("hops/request")
        await ask(exchange)  # warm
        reads.clear()
        with thread_hops(loop, handles) as hops:
            replies = [await ask(exchange) for _ in range(MESSAGES)]
            read = len(reads)
    finally:
        await backend.close()
    assert all(isinstance(reply, bytes) for reply in replies)
    assert len(hops) == MESSAGES, hops
    assert handles == []
    assert read == MESSAGES


async def test_the_wake_up_is_closed_with_the_client(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """The eventfd lives from `connect` to a stop the CRT confirmed: a disconnect leaves no
    descriptor open and no loop watching it."""
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    try:
        transport, _inbox = await backend.connected("gw-wake-fd")
        fd = transport._wakeup.fd  # type: ignore[attr-defined]
        assert fd is not None
        await transport.disconnect()
        assert transport._wakeup.fd is None  # type: ignore[attr-defined]
        with pytest.raises(OSError):
            os.fstat(fd)
        assert transport._wakeup.loop is None  # type: ignore[attr-defined]
        assert not transport.is_connected
    finally:
        await backend.close()


async def ask(
    exchange: Exchange[bytes], topic: str = "hops/request", deadline: float = 10.0
) -> bytes | None:
    """One request echoed by the broker to its own sender: the echo is the reply."""
    loop = asyncio.get_running_loop()
    return await exchange.request(
        topic,
        "key",
        lambda token: token.encode(),
        lambda reply: reply,
        deadline=loop.time() + deadline,
        backoff=Backoff(0.01, 0.05),
    )


async def test_a_request_the_broker_refuses_fails_with_the_refusal(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """`submit` returns before the PUBACK: a PUBACK that refuses the request (here mosquitto's
    ACL, as AWS IoT's policy would) still fails the request at once, with the broker's reason."""
    broker = mosquitto_factory()
    acl = broker.directory / "acl"
    acl.write_text("pattern readwrite hops/#\n")
    with broker.config_path.open("a", encoding="utf-8") as config:
        config.write(f"acl_file {acl}\n")
    broker.restart()
    backend = AwscrtBackend(broker, _awscrt)
    try:
        transport, _inbox = await backend.connected("gw-refused")
        exchange: Exchange[bytes] = Exchange(transport)
        with pytest.raises(TransportError, match="refused by the broker"):
            await ask(exchange, "denied/request", deadline=60.0)
        assert exchange.stats.timeouts == 0
    finally:
        await backend.close()


async def test_messages_that_come_while_the_loop_is_busy_share_one_thread_hop(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """Messages the CRT delivers before the loop got round to the last wake-up ride on it: a
    job's last reply and the next job's notification often come in one read. Here the loop is
    held until the CRT thread has taken all of them, then they arrive in order, for one hop."""
    from awscrt import mqtt5

    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    loop = asyncio.get_running_loop()
    taken = threading.Semaphore(0)
    try:
        transport = backend.make("gw-burst")
        real = transport._crt_publish_received  # type: ignore[attr-defined]

        def spy(data: Any) -> None:
            real(data)
            taken.release()

        transport._crt_publish_received = spy  # type: ignore[attr-defined]
        inbox = Inbox(transport)
        await transport.connect(timeout=10.0)
        await transport.subscribe("burst/#")
        client = transport._client  # type: ignore[attr-defined]
        with thread_hops(loop) as hops:
            for index in range(MESSAGES):  # the loop is held from here until all were taken
                packet = mqtt5.PublishPacket(topic=f"burst/{index}", payload=b"x", qos=1)
                client.publish(packet)
            for _ in range(MESSAGES):
                assert taken.acquire(timeout=10.0)
            topics = [(await inbox.next()).topic for _ in range(MESSAGES)]
    finally:
        await backend.close()
    assert topics == [f"burst/{index}" for index in range(MESSAGES)]
    assert len(hops) == 1, hops


async def test_a_received_message_builds_no_publish_packet_on_the_crt_thread(
    mosquitto_factory: Callable[[], Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRT's own core built a `PublishPacket` and a `PublishReceivedData` for every message
    received (29 k instructions a message, five a plugin job); the agent reads only the topic
    and payload, so the client's core hands it just those, as a `Message`. Counted: packets
    built on a thread other than the loop's (the loop builds its own to publish), and the
    messages arrive whole, an empty payload as b"", in order."""
    from awscrt import mqtt5

    built: list[int] = []
    ours = threading.get_ident()
    real_init = mqtt5.PublishPacket.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() != ours:
            built.append(threading.get_ident())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(mqtt5.PublishPacket, "__init__", counting)
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    try:
        transport, inbox = await backend.connected("gw-lean")
        await transport.subscribe("lean/#")
        sent = [(f"lean/{index}", b"x" * index) for index in range(MESSAGES)]
        for topic, payload in sent:
            await transport.publish(topic, payload)
        received = [await inbox.next() for _ in sent]
    finally:
        await backend.close()
    assert [(message.topic, message.payload) for message in received] == sent
    assert all(type(message.payload) is bytes for message in received)
    assert built == []


async def test_a_request_s_puback_builds_no_future_or_completion(
    mosquitto_factory: Callable[[], Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request (`submit`) goes to the binding with its own PUBACK callback: no
    `concurrent.futures.Future`, and at the PUBACK no `PublishCompletionData`, whose making and
    the future's result cost 30 k instructions a publish on the CRT thread (two a plugin job).
    Counted over requests answered as before; a refused one still fails (the test above)."""
    import concurrent.futures

    from awscrt import mqtt5

    made: list[str] = []
    for cls in (mqtt5.PublishCompletionData, concurrent.futures.Future):
        real_init = cls.__init__

        def counting(self: Any, *args: Any, _real: Any = real_init, **kwargs: Any) -> None:
            if sys._getframe(1).f_globals.get("__name__") == "awscrt.mqtt5":  # not the loop's
                made.append(type(self).__name__)
            _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    try:
        transport, _inbox = await backend.connected("gw-no-future")
        exchange: Exchange[bytes] = Exchange(transport)
        transport.set_message_callback(
            lambda message: exchange.resolve(message.payload.decode(), "key", message.payload)
        )
        await transport.subscribe("hops/request")
        await ask(exchange)  # warm
        made.clear()
        replies = [await ask(exchange) for _ in range(MESSAGES)]
    finally:
        await backend.close()
    assert all(isinstance(reply, bytes) for reply in replies)
    assert made == []


async def test_a_request_the_crt_fails_fails_as_not_connected(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """A request the CRT fails after `submit` returned (its client stopped under it, before
    the loop heard of it) reaches `on_failure` as `NotConnectedError`, from the binding's
    error code as it did from the future's exception."""
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[Exception] = loop.create_future()
    try:
        transport, _inbox = await backend.connected("gw-crt-fails")
        transport._client.stop()  # type: ignore[attr-defined]
        await transport.submit("hops/request", b"x", failed.set_result)
        failure = await asyncio.wait_for(failed, 10.0)
    finally:
        await backend.close()
    assert isinstance(failure, NotConnectedError), failure
    assert "publish hops/request" in str(failure)


async def test_a_binding_that_refuses_the_direct_publish_sends_requests_through_the_client(
    mosquitto_factory: Callable[[], Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """awsiotsdk pins one awscrt per release and the project allows a range of releases, so a
    device may run an awscrt whose binding takes other publish arguments than the call
    `publish_at_least_once` makes. Such a binding cannot be installed here, so the binding's
    publish is stood in for, for the direct call only, by one that refuses its arguments as a
    C function does (`TypeError`, nothing sent). The request must still reach the broker and be
    answered, through `Client.publish` (which calls the real binding), and every later request
    too, without trying the refused call again."""
    from jobs_agent.transport import awscrt_client

    refused: list[int] = []

    def other_binding(*args: object) -> None:
        refused.append(len(args))
        raise TypeError(f"function takes exactly 14 arguments ({len(args)} given)")

    monkeypatch.setattr(awscrt_client, "_binding_publish", other_binding)
    monkeypatch.setattr(awscrt_client, "_direct", True)
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    try:
        transport, _inbox = await backend.connected("gw-other-binding")
        exchange: Exchange[bytes] = Exchange(transport)
        transport.set_message_callback(
            lambda message: exchange.resolve(message.payload.decode(), "key", message.payload)
        )
        await transport.subscribe("hops/request")
        replies = [await ask(exchange) for _ in range(3)]
    finally:
        await backend.close()
    assert all(isinstance(reply, bytes) for reply in replies)
    assert refused == [13]
    assert awscrt_client._direct is False


def test_the_wake_up_follows_the_transport_to_another_loop(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    """A transport connected again on another loop while its last stop was not confirmed (its
    eventfd still open) moves the eventfd to the new loop: a CRT thread's wake-up reaches the
    loop the transport now runs on, and the old loop no longer watches it."""
    transport: Any = AwscrtBackend(mosquitto_factory(), _awscrt).make("gw-two-loops")
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        transport._loop = first
        transport._wakeup.watch(first, transport._run_pending)
        fd = transport._wakeup.fd
        transport._loop = second
        transport._wakeup.watch(second, transport._run_pending)
        assert transport._wakeup.fd == fd
        assert not first.remove_reader(fd)
        called: asyncio.Future[str] = second.create_future()
        crt = threading.Thread(target=transport._call, args=(called.set_result, "woken"))
        crt.start()
        crt.join()
        assert second.run_until_complete(called) == "woken"
    finally:
        transport._close_wakeup()
        first.close()
        second.close()


async def test_a_connect_that_cannot_set_up_tls_leaves_no_wake_up_open(
    mosquitto_factory: Callable[[], Mosquitto], tmp_path: Any
) -> None:
    """The eventfd is made once the client is built: a certificate that cannot be read fails
    `connect` before any CRT thread exists, and nothing is left open or watched."""
    from dataclasses import replace

    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    config = replace(backend.config(rogue=False), cert=tmp_path / "missing.pem")
    transport: Any = _awscrt(config, "gw-no-tls")
    with pytest.raises(TransportError, match="cannot set up TLS"):
        await transport.connect(timeout=10.0)
    assert transport._wakeup.fd is None
