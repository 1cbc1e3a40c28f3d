"""One behavioural suite for every Transport backend, against real brokers where one can run.

`TransportSuite` holds the scenarios; each backend plugs in through a `Backend` that makes
transports and can take "the broker" down and bring it back: the in-process `LocalBus` (outage
helper), mosquitto over plain TCP and over mTLS (paho), and mosquitto over mTLS with awscrt. The
Greengrass IPC backend reuses the same suite in tests/test_greengrass_transport.py.
Synchronisation is by asyncio queues and events with timeouts, never by sleeping.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.transport.base import Message, NotConnectedError, Transport, TransportError
from jobs_agent.transport.local import LocalBus, LocalTransport
from jobs_agent.transport.shared import SharedLink
from jobs_agent.transport.topics import topic_matches, validate_topic_filter
from tests.fixtures.broker import Mosquitto

WAIT = 10.0
"""Upper bound for anything to happen; a passing run waits milliseconds."""


class Inbox:
    """Collects what a transport reports, for awaiting with a timeout."""

    def __init__(self, transport: Transport) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.lost: asyncio.Queue[str] = asyncio.Queue()
        self.resumed: asyncio.Queue[bool] = asyncio.Queue()
        transport.set_message_callback(self.messages.put_nowait)
        transport.set_connection_callbacks(self.lost.put_nowait, self.resumed.put_nowait)

    async def next(self) -> Message:
        return await asyncio.wait_for(self.messages.get(), WAIT)


class Backend(abc.ABC):
    """How the suite gets transports and outages for one backend."""

    name = ""
    can_refuse_rogue = False
    """A rogue client certificate is meaningful (mTLS) for this backend."""
    session_survives_outage = True

    def __init__(self) -> None:
        self.made: list[Transport] = []

    @abc.abstractmethod
    def _make(self, client_id: str, rogue: bool) -> Transport: ...

    def make(self, client_id: str, *, rogue: bool = False) -> Transport:
        transport = self._make(client_id, rogue)
        self.made.append(transport)
        return transport

    async def connected(self, client_id: str) -> tuple[Transport, Inbox]:
        transport = self.make(client_id)
        inbox = Inbox(transport)
        await transport.connect(timeout=WAIT)
        return transport, inbox

    @abc.abstractmethod
    async def outage(self) -> None: ...

    @abc.abstractmethod
    async def restore(self) -> None: ...

    async def close(self) -> None:
        for transport in self.made:
            await transport.disconnect()


class LocalBackend(Backend):
    name = "local"

    def __init__(self) -> None:
        super().__init__()
        self.bus = LocalBus()

    def _make(self, client_id: str, rogue: bool) -> Transport:
        return LocalTransport(self.bus, client_id)

    async def outage(self) -> None:
        self.bus.set_online(False)

    async def restore(self) -> None:
        self.bus.set_online(True)


class MosquittoBackend(Backend):
    """A private broker per test, so stopping it disturbs nobody else."""

    session_survives_outage = False  # persistence false: a restart forgets every session

    def __init__(self, broker: Mosquitto, factory: Callable[[ConnectionConfig, str], Transport]):
        super().__init__()
        self.broker = broker
        self.factory = factory

    @abc.abstractmethod
    def config(self, rogue: bool) -> ConnectionConfig: ...

    def _make(self, client_id: str, rogue: bool) -> Transport:
        return self.factory(self.config(rogue), client_id)

    async def outage(self) -> None:
        await asyncio.to_thread(self.broker.stop)

    async def restore(self) -> None:
        await asyncio.to_thread(self.broker.start)


def _fast(config: ConnectionConfig) -> ConnectionConfig:
    return replace(
        config, keepalive_seconds=30, reconnect_min_seconds=0.05, reconnect_max_seconds=0.3
    )


class PahoPlainBackend(MosquittoBackend):
    name = "paho"

    def config(self, rogue: bool) -> ConnectionConfig:
        return _fast(
            ConnectionConfig(
                transport="paho", endpoint=self.broker.host, port=self.broker.port, tls=False
            )
        )


class MtlsBackend(MosquittoBackend):
    can_refuse_rogue = True

    def config(self, rogue: bool) -> ConnectionConfig:
        certs = self.broker.certs
        return _fast(
            ConnectionConfig(
                transport=self.name.split("-")[0],
                endpoint="localhost",
                port=self.broker.tls_port,
                ca=certs.ca,
                cert=certs.rogue_device_cert if rogue else certs.device_cert,
                key=certs.rogue_device_key if rogue else certs.device_key,
            )
        )


class PahoTlsBackend(MtlsBackend):
    name = "paho-tls"


class AwscrtBackend(MtlsBackend):
    name = "awscrt"


def _paho(config: ConnectionConfig, client_id: str) -> Transport:
    from jobs_agent.transport.paho import PahoTransport

    return PahoTransport(config, client_id)


def _awscrt(config: ConnectionConfig, client_id: str) -> Transport:
    from jobs_agent.transport.awscrt import AwscrtTransport

    return AwscrtTransport(config, client_id)


@pytest.fixture(params=["local", "paho", "paho-tls", "awscrt"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    chosen: Backend
    if request.param == "local":
        chosen = LocalBackend()
    else:
        # Only the broker-backed backends need (and may skip for lack of) mosquitto.
        factory: Callable[[], Mosquitto] = request.getfixturevalue("mosquitto_factory")
        if request.param == "paho":
            chosen = PahoPlainBackend(factory(), _paho)
        elif request.param == "paho-tls":
            chosen = PahoTlsBackend(factory(), _paho)
        else:
            chosen = AwscrtBackend(factory(), _awscrt)
    try:
        yield chosen
    finally:
        await chosen.close()


class TransportSuite:
    """The contract of agent/transport/base.py, scenario by scenario."""

    async def test_connect_marks_the_link_up(self, backend: Backend) -> None:
        transport, _ = await backend.connected("gw-connect")
        assert transport.is_connected
        assert await transport.wait_connected(WAIT)

    async def test_round_trip_between_two_clients(self, backend: Backend) -> None:
        device, device_inbox = await backend.connected("gw-device")
        service, service_inbox = await backend.connected("gw-service")
        await device.subscribe("$aws/things/gw/jobs/notify-next")
        await service.subscribe("$aws/things/gw/jobs/start-next")

        await service.publish("$aws/things/gw/jobs/notify-next", b'{"execution":{}}')
        assert await device_inbox.next() == Message(
            "$aws/things/gw/jobs/notify-next", b'{"execution":{}}'
        )
        await device.publish("$aws/things/gw/jobs/start-next", b"{}")
        assert await service_inbox.next() == Message("$aws/things/gw/jobs/start-next", b"{}")

    async def test_publish_to_self(self, backend: Backend) -> None:
        transport, inbox = await backend.connected("gw-self")
        await transport.subscribe("self/echo")
        await transport.publish("self/echo", b"\x00binary\xff")
        assert (await inbox.next()).payload == b"\x00binary\xff"

    async def test_wildcards_and_the_dollar_rule(self, backend: Backend) -> None:
        catch_all, catch_all_inbox = await backend.connected("gw-catch-all")
        jobs, jobs_inbox = await backend.connected("gw-jobs")
        publisher, _ = await backend.connected("gw-publisher")
        await catch_all.subscribe("#")
        await jobs.subscribe("$aws/things/+/jobs/#")

        # "#" must not see a `$` topic; the explicit `$aws` filter must.
        await publisher.publish("$aws/things/gw/jobs/j1/update/accepted", b"1")
        await publisher.publish("devices/gw/status", b"2")
        assert await catch_all_inbox.next() == Message("devices/gw/status", b"2")
        assert await jobs_inbox.next() == Message("$aws/things/gw/jobs/j1/update/accepted", b"1")

        # "+" is exactly one level; "#" also matches the parent level.
        await publisher.publish("$aws/things/gw/extra/jobs/x", b"3")
        await publisher.publish("$aws/things/gw/jobs", b"4")
        assert await jobs_inbox.next() == Message("$aws/things/gw/jobs", b"4")
        assert catch_all_inbox.messages.empty()

    async def test_a_burst_arrives_complete_and_in_order(self, backend: Backend) -> None:
        """QoS 1 from one publisher to one subscriber keeps its order, also when the messages
        are published all at once (the publishes overlap, their acknowledgements come later)."""
        device, inbox = await backend.connected("gw-burst-device")
        service, _ = await backend.connected("gw-burst-service")
        await device.subscribe("burst/+")
        count = 200
        await asyncio.gather(*(service.publish(f"burst/{n}", b"%d" % n) for n in range(count)))
        got = [await inbox.next() for _ in range(count)]
        assert [m.payload for m in got] == [b"%d" % n for n in range(count)]
        assert inbox.messages.empty()

    async def test_unsubscribe_stops_delivery(self, backend: Backend) -> None:
        transport, inbox = await backend.connected("gw-unsub")
        await transport.subscribe("unsub/a")
        await transport.subscribe("unsub/b")
        await transport.unsubscribe("unsub/a")
        await transport.publish("unsub/a", b"gone")
        await transport.publish("unsub/b", b"kept")
        # Same publisher, same subscriber, QoS 1: order is kept, so "a" would have come first.
        assert await inbox.next() == Message("unsub/b", b"kept")

    async def test_publish_while_disconnected_raises(self, backend: Backend) -> None:
        transport = backend.make("gw-offline")
        with pytest.raises(NotConnectedError):
            await transport.publish("any/topic", b"x")
        await transport.connect(timeout=WAIT)
        await transport.disconnect()
        await transport.disconnect()  # idempotent
        assert not transport.is_connected
        with pytest.raises(NotConnectedError):
            await transport.publish("any/topic", b"x")

    async def test_rogue_certificate_is_refused_quickly(self, backend: Backend) -> None:
        if not backend.can_refuse_rogue:
            pytest.skip(f"{backend.name} has no client certificate to refuse")
        transport = backend.make("gw-rogue", rogue=True)
        with pytest.raises(TransportError) as refused:
            await transport.connect(timeout=WAIT)
        # A permanent failure is reported as such, not retried until the timeout (whose
        # message says "within"; the time taken is not asserted: it races the machine's load).
        assert "within" not in str(refused.value), str(refused.value)
        assert not transport.is_connected

    async def test_broker_restart_reconnects_and_resubscribes(self, backend: Backend) -> None:
        device, device_inbox = await backend.connected("gw-restart-device")
        service, _ = await backend.connected("gw-restart-service")
        await device.subscribe("$aws/things/gw/jobs/notify-next")
        await device.subscribe("restart/+/wild")

        await backend.outage()
        reason = await asyncio.wait_for(device_inbox.lost.get(), WAIT)
        assert reason
        assert not device.is_connected
        with pytest.raises(NotConnectedError):
            await device.publish("restart/x", b"while down")

        await backend.restore()
        session_present = await asyncio.wait_for(device_inbox.resumed.get(), WAIT)
        assert session_present is backend.session_survives_outage
        assert device.is_connected
        assert await service.wait_connected(WAIT)

        await service.publish("$aws/things/gw/jobs/notify-next", b"after")
        await service.publish("restart/1/wild", b"wild after")
        assert await device_inbox.next() == Message("$aws/things/gw/jobs/notify-next", b"after")
        assert await device_inbox.next() == Message("restart/1/wild", b"wild after")

    async def test_protocol_clients_share_the_link_through_views(self, backend: Backend) -> None:
        """The device's one connection, shared (`SharedLink`) by a Jobs-like and a streams-like
        client: each view gets the messages of its own subscriptions (both get a topic both
        hold), a filter one view gives back stays subscribed for the other, both hear of the
        link's drop and return and get their subscriptions back with it, and a detached view
        hears nothing more while the other goes on."""
        device = backend.make("gw-shared")
        link = SharedLink(device)
        await device.connect(timeout=WAIT)
        service, _ = await backend.connected("gw-shared-service")
        jobs_view, streams_view = link.view(), link.view()
        jobs_inbox, streams_inbox = Inbox(jobs_view), Inbox(streams_view)
        jobs_topic = "$aws/things/gw/jobs/notify"
        stream_topic = "$aws/things/gw/streams/fw/data/json"
        both = "$aws/things/gw/both"
        await jobs_view.subscribe(jobs_topic)
        await jobs_view.subscribe(both)
        await streams_view.subscribe("$aws/things/gw/streams/+/data/json")
        await streams_view.subscribe(both)

        await service.publish(stream_topic, b"block")
        await service.publish(jobs_topic, b"event")
        await service.publish(both, b"both")
        assert await streams_inbox.next() == Message(stream_topic, b"block")
        assert await streams_inbox.next() == Message(both, b"both")
        assert await jobs_inbox.next() == Message(jobs_topic, b"event")
        assert await jobs_inbox.next() == Message(both, b"both")

        await streams_view.unsubscribe(both)  # the Jobs view still holds it
        await service.publish(both, b"still")
        assert await jobs_inbox.next() == Message(both, b"still")

        await backend.outage()
        assert await asyncio.wait_for(jobs_inbox.lost.get(), WAIT)
        assert await asyncio.wait_for(streams_inbox.lost.get(), WAIT)
        await backend.restore()
        session_present = await asyncio.wait_for(jobs_inbox.resumed.get(), WAIT)
        assert await asyncio.wait_for(streams_inbox.resumed.get(), WAIT) is session_present
        assert await service.wait_connected(WAIT)
        await service.publish(stream_topic, b"again")
        assert await streams_inbox.next() == Message(stream_topic, b"again")

        await streams_view.disconnect()
        assert device.is_connected and jobs_view.is_connected and not streams_view.is_connected
        await service.publish(stream_topic, b"after")
        await service.publish(jobs_topic, b"after")
        assert await jobs_inbox.next() == Message(jobs_topic, b"after")
        assert streams_inbox.messages.empty() and jobs_inbox.messages.empty()


class TestTransport(TransportSuite):
    pass


# -- the in-process bus specifics ----------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "/x", True),
        ("+", "a/b", False),
        ("#", "$aws/things/x", False),
        ("+/things/x", "$aws/things/x", False),
        ("$aws/#", "$aws/things/x", True),
        ("$aws/things/+", "$aws/things/x", True),
        ("a/b", "a/B", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "a\x00"])
def test_invalid_topic_filters_are_rejected(bad: str) -> None:
    with pytest.raises(TransportError):
        validate_topic_filter(bad)


async def test_local_overlapping_filters_deliver_once() -> None:
    bus = LocalBus()
    transport = LocalTransport(bus, "gw")
    inbox = Inbox(transport)
    await transport.connect()
    for topic_filter in ("a/#", "a/+/c", "a/b/c", "#"):
        await transport.subscribe(topic_filter)
    await transport.publish("a/b/c", b"once")
    await transport.publish("z", b"marker")
    assert await inbox.next() == Message("a/b/c", b"once")
    assert await inbox.next() == Message("z", b"marker")


async def test_local_message_for_offline_client_is_queued_until_resume() -> None:
    bus = LocalBus()
    device, service = LocalTransport(bus, "device"), LocalTransport(bus, "service")
    inbox = Inbox(device)
    await device.connect()
    await service.connect()
    await device.subscribe("notify")
    bus.set_online(False, client_id="device")
    assert await asyncio.wait_for(inbox.lost.get(), WAIT)
    await service.publish("notify", b"queued")
    assert inbox.messages.empty()
    bus.set_online(True, client_id="device")
    assert await asyncio.wait_for(inbox.resumed.get(), WAIT) is True
    assert await inbox.next() == Message("notify", b"queued")


async def test_local_lost_session_is_restored_by_the_transport() -> None:
    bus = LocalBus()
    transport = LocalTransport(bus, "gw")
    inbox = Inbox(transport)
    await transport.connect()
    await transport.subscribe("jobs/+")
    bus.set_online(False)
    await asyncio.wait_for(inbox.lost.get(), WAIT)
    bus.set_online(True, keep_sessions=False)
    assert await asyncio.wait_for(inbox.resumed.get(), WAIT) is False
    await transport.publish("jobs/1", b"x")
    assert await inbox.next() == Message("jobs/1", b"x")


async def test_local_connect_waits_for_an_offline_bus() -> None:
    bus = LocalBus()
    bus.set_online(False)
    transport = LocalTransport(bus, "gw")
    with pytest.raises(TransportError, match="offline"):
        await transport.connect(timeout=0.01)
    connecting = asyncio.ensure_future(transport.connect(timeout=WAIT))
    await asyncio.sleep(0)  # let connect() find the bus down and start waiting
    assert not connecting.done()
    bus.set_online(True)
    await asyncio.wait_for(connecting, WAIT)
    assert transport.is_connected


async def test_local_same_client_id_takes_over_the_session() -> None:
    bus = LocalBus()
    old, new = LocalTransport(bus, "gw"), LocalTransport(bus, "gw")
    old_inbox, new_inbox = Inbox(old), Inbox(new)
    await old.connect()
    await old.subscribe("t")
    await new.connect()
    assert "taken over" in await asyncio.wait_for(old_inbox.lost.get(), WAIT)
    await new.publish("t", b"session kept")
    assert await new_inbox.next() == Message("t", b"session kept")


async def test_awscrt_connections_share_one_event_loop_thread(
    mosquitto_factory: Callable[[], Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every awscrt connection of the process is built on one CRT event-loop group of one thread
    (issue 18). The CRT's default group has a thread per two processors, idle ones on a larger
    gateway; on this 2-core machine the default has one too, so the test checks what the client
    is built with, and that two real mTLS connections work on it."""
    from awscrt import mqtt5

    from jobs_agent.transport import awscrt_client

    built: list[Any] = []
    real = mqtt5.Client

    def spy(options: Any) -> Any:
        built.append(options)
        return real(options)

    monkeypatch.setattr(mqtt5, "Client", spy)
    backend = AwscrtBackend(mosquitto_factory(), _awscrt)
    try:
        first, _ = await backend.connected("gw-loop-1")
        second, inbox = await backend.connected("gw-loop-2")
        await second.subscribe("loop/#")
        await first.publish("loop/a", b"x")
        assert (await inbox.next()).payload == b"x"
    finally:
        await backend.close()
    shared = awscrt_client.client_bootstrap()
    assert [options.bootstrap for options in built] == [shared, shared]
