"""The emulator's own broker transport (agent/emulator/broker.py) against a real mosquitto.

What makes it cheap must not change what it does: the emulator never hears its own replies
(No Local), answers a burst of requests completely (buffered reads drained to the end), reads
requests that carry MQTT 5 properties, has every publish acknowledged before it disconnects,
and serves again after the broker restarts. Devices here are plain paho MQTT 5 clients.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator.broker import BrokerTransport, broker_transport
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.transport.base import Message
from tests.fixtures.broker import Mosquitto


def _config(broker: Mosquitto, client_id: str) -> ConnectionConfig:
    return ConnectionConfig(
        transport="paho",
        endpoint=broker.host,
        port=broker.port,
        tls=False,
        client_id=client_id,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.2,
    )


class PahoDevice:
    """A real MQTT 5 device (paho in its own thread) that records what it receives."""

    def __init__(self, broker: Mosquitto, thing: str) -> None:
        self.thing = thing
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, thing, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        info = self.client.subscribe(f"$aws/things/{thing}/jobs/#", qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        assert self._subscribed.wait(timeout), "no SUBACK"

    def _on(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((message.topic, json.loads(message.payload)))
            self._cond.notify_all()

    def publish(self, suffix: str, body: dict[str, Any], properties: Any = None) -> None:
        topic = f"$aws/things/{self.thing}/jobs/{suffix}"
        self.client.publish(topic, json.dumps(body), qos=1, properties=properties)

    def wait(self, count: int, suffix: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        topic = f"$aws/things/{self.thing}/jobs/{suffix}"
        with self._cond:
            self._cond.wait_for(
                lambda: len([t for t, _ in self.received if t == topic]) >= count, timeout
            )
            return [p for t, p in self.received if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def served(fresh_mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    emulator = Emulator(
        broker_transport(_config(fresh_mosquitto, "emulator-under-test")), tick_seconds=None
    )
    await emulator.start(connect_timeout=10)
    try:
        yield emulator
    finally:
        await emulator.stop()


async def test_the_emulator_never_hears_its_own_publishes(fresh_mosquitto: Mosquitto) -> None:
    """No Local: the emulator subscribes to whole trees that hold its own replies; the broker
    must not send them back (five of every seven messages per job were its own before)."""
    transport = broker_transport(_config(fresh_mosquitto, "no-local"))
    heard: list[str] = []
    arrived = asyncio.Event()

    def on_message(message: Message) -> None:
        heard.append(message.topic)
        arrived.set()

    transport.set_message_callback(on_message)
    await transport.connect(10)
    try:
        await transport.subscribe("$aws/things/+/jobs/#")
        device = PahoDevice(fresh_mosquitto, "t1")
        try:
            # Subscribed before the reply goes out: else the broker drops it and the wait below
            # runs out its 10 s instead of seeing the reply delivered to a subscriber.
            await asyncio.to_thread(device.wait_subscribed)
            transport.publish_nowait("$aws/things/t1/jobs/j1/get/accepted", b"{}")
            device.publish("j1/get", {"clientToken": "x"})
            await asyncio.wait_for(arrived.wait(), 5)
            await asyncio.to_thread(device.wait, 1, "j1/get/accepted")
            await transport.flush()
        finally:
            device.close()
    finally:
        await transport.disconnect()
    assert heard == ["$aws/things/t1/jobs/j1/get"]


async def test_a_burst_of_requests_is_answered_completely(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """Many requests arriving at once are all answered."""
    device = PahoDevice(fresh_mosquitto, "burst")
    try:
        for index in range(300):
            device.publish("get", {"clientToken": f"c{index}"})
        replies = await asyncio.to_thread(device.wait, 300, "get/accepted")
    finally:
        device.close()
    assert sorted(r["clientToken"] for r in replies) == sorted(f"c{i}" for i in range(300))
    assert served.service.counters["GetPendingJobExecutions"] == 300


async def test_everything_read_is_delivered_without_a_further_readable_event(
    fresh_mosquitto: Mosquitto,
) -> None:
    """paho stops after one packet when nothing of ours is in flight; the packets already in
    the read buffer must still be delivered, as no readable event will come for them."""
    transport = broker_transport(_config(fresh_mosquitto, "reader"))
    seen: list[bytes] = []
    done = asyncio.Event()

    def on_message(message: Message) -> None:
        seen.append(message.payload)
        if len(seen) == 200:
            done.set()

    transport.set_message_callback(on_message)
    await transport.connect(10)
    try:
        await transport.subscribe("$aws/things/+/jobs/#")
        device = PahoDevice(fresh_mosquitto, "reader-device")
        try:
            payload = json.dumps({"pad": "x" * 200})
            for _ in range(200):
                device.client.publish("$aws/things/r/jobs/j/update", payload, qos=1)
            await asyncio.wait_for(done.wait(), 10)
        finally:
            device.close()
    finally:
        await transport.disconnect()
    assert len(seen) == 200


async def test_requests_with_mqtt5_properties_are_read_right(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """A device may add MQTT 5 properties (user properties, a response topic); the short path
    skips them and reads the payload after them."""
    served.service.create_job("job-1", ["props"], {"operation": "noop"})
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("trace", "x" * 300), ("k", "v")]
    properties.ResponseTopic = "$aws/things/props/jobs/elsewhere"
    device = PahoDevice(fresh_mosquitto, "props")
    try:
        device.publish("start-next", {"clientToken": "tok"}, properties)
        (reply,) = await asyncio.to_thread(device.wait, 1, "start-next/accepted")
    finally:
        device.close()
    assert reply["clientToken"] == "tok"
    assert reply["execution"]["jobId"] == "job-1"
    assert reply["execution"]["status"] == "IN_PROGRESS"


async def test_every_publish_is_acknowledged_before_disconnect(
    fresh_mosquitto: Mosquitto,
) -> None:
    """`publish_nowait` does not wait, `disconnect` does: nothing queued is lost at stop."""
    device = PahoDevice(fresh_mosquitto, "flush")
    await asyncio.to_thread(device.wait_subscribed)  # else the first publishes reach no one
    transport = broker_transport(_config(fresh_mosquitto, "flusher"))
    await transport.connect(10)
    try:
        for index in range(500):
            transport.publish_nowait("$aws/things/flush/jobs/notify", json.dumps([index]).encode())
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 500, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(500))  # all of them, in order


async def test_it_serves_again_after_a_broker_restart(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """Subscriptions (with No Local) are restored when the broker comes back."""
    transport = served.transport
    assert isinstance(transport, BrokerTransport)
    resumed = asyncio.Event()
    transport.set_connection_callbacks(on_resumed=lambda session_present: resumed.set())
    fresh_mosquitto.restart()
    await asyncio.wait_for(resumed.wait(), 15)
    device = PahoDevice(fresh_mosquitto, "again")
    try:
        device.publish("get", {"clientToken": "after"})
        (reply,) = await asyncio.to_thread(device.wait, 1, "get/accepted")
    finally:
        device.close()
    assert reply["clientToken"] == "after"


async def test_publishes_unacknowledged_when_the_link_drops_go_out_again_in_order(
    fresh_mosquitto: Mosquitto,
) -> None:
    """`publish_nowait`'s short path keeps each message in paho's own outgoing table, as
    paho's `publish` does: an acknowledged one leaves it, and those not acknowledged when the
    connection drops (in flight or waiting for the in-flight window) are sent again after the
    reconnect, in order, and acknowledged through the same short path."""
    device = PahoDevice(fresh_mosquitto, "redelivery")
    transport = broker_transport(_config(fresh_mosquitto, "redeliverer"))
    client = transport._client
    resumed = asyncio.Event()
    transport.set_connection_callbacks(on_resumed=lambda session_present: resumed.set())
    topic = "$aws/things/redelivery/jobs/notify"
    await transport.connect(10)
    try:
        await asyncio.to_thread(device.wait_subscribed)
        for index in range(10):
            transport.publish_nowait(topic, json.dumps([index]).encode())
        await transport.flush()
        assert not client._out_messages and client._inflight_messages == 0
        for index in range(10, 40):
            transport.publish_nowait(topic, json.dumps([index]).encode())
        assert client._inflight_messages == client.max_inflight_messages == 20  # 10 wait
        client.socket().shutdown(socket.SHUT_RDWR)  # before this loop iteration writes any
        await asyncio.wait_for(resumed.wait(), 15)
        await transport.flush()
        assert not client._out_messages and client._inflight_messages == 0
        assert not transport._unacked
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 40, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(40))  # every one, once, in order


async def test_what_one_loop_iteration_queued_leaves_in_one_send(
    fresh_mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies and events queued in one loop iteration are joined and written in one system
    call (they were one `send` each, between two TCP_CORK calls), and arrive in order."""
    device = PahoDevice(fresh_mosquitto, "joined")
    transport = broker_transport(_config(fresh_mosquitto, "joiner"))
    await transport.connect(10)
    client = transport._client
    sends: list[int] = []
    original = client._sock_send

    def counting(buf: bytes) -> int:
        sends.append(len(buf))
        return original(buf)

    monkeypatch.setattr(client, "_sock_send", counting)
    try:
        await asyncio.to_thread(device.wait_subscribed)
        for index in range(15):  # within the in-flight window of 20
            transport.publish_nowait("$aws/things/joined/jobs/notify", json.dumps([index]).encode())
        await transport.flush()
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 15, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(15))
    assert len(sends) >= 1 and sends[0] > 15 * 40  # the first send carried all fifteen


async def test_packets_cut_from_the_read_buffer_and_across_reads_arrive_whole(
    fresh_mosquitto: Mosquitto,
) -> None:
    """A packet wholly in the read buffer is cut out in one step; one larger than a read
    (64 kB) or split between two reads takes paho's path. Both arrive whole and in order."""
    transport = broker_transport(_config(fresh_mosquitto, "reader"))
    received: list[tuple[str, bytes]] = []
    done = asyncio.Event()
    sizes = [10, 200_000, 3, 70_000, 65_530, 1, 5_000]

    def on_message(message: Message) -> None:
        received.append((message.topic, message.payload))
        if len(received) == len(sizes):
            done.set()

    transport.set_message_callback(on_message)
    await transport.connect(10)
    device = PahoDevice(fresh_mosquitto, "reader-device")
    try:
        await transport.subscribe("$aws/things/big/jobs/#")
        for index, size in enumerate(sizes):
            device.client.publish(f"$aws/things/big/jobs/{index}/update", bytes([index]) * size, 1)
        await asyncio.wait_for(done.wait(), 15)
    finally:
        device.close()
        await transport.disconnect()
    assert [t for t, _ in received] == [f"$aws/things/big/jobs/{i}/update" for i in range(7)]
    assert [p for _, p in received] == [bytes([i]) * size for i, size in enumerate(sizes)]


async def test_the_window_of_publishes_in_flight_is_the_one_the_broker_gives(
    fresh_mosquitto: Mosquitto,
) -> None:
    """MQTT 5: the CONNACK's Receive Maximum says how many QoS 1 publishes the broker takes
    unacknowledged (mosquitto: `max_inflight_messages`, 20 by default). paho kept 20 whatever
    the broker said; the emulator now takes the broker's word, on every connection."""
    transport = broker_transport(_config(fresh_mosquitto, "window-emulator"))
    client = transport._client
    resumed = asyncio.Event()
    transport.set_connection_callbacks(on_resumed=lambda session_present: resumed.set())
    device = PahoDevice(fresh_mosquitto, "windowed")
    topic = "$aws/things/windowed/jobs/notify"
    await transport.connect(10)
    try:
        assert client._max_inflight_messages == 20  # mosquitto's default
        with fresh_mosquitto.config_path.open("a", encoding="utf-8") as config:
            config.write("max_inflight_messages 50\n")
        fresh_mosquitto.restart()
        await asyncio.wait_for(resumed.wait(), 15)
        assert client._max_inflight_messages == 50
        device.close()
        device = PahoDevice(fresh_mosquitto, "windowed")  # the restart lost its session
        await asyncio.to_thread(device.wait_subscribed)
        for index in range(60):
            transport.publish_nowait(topic, json.dumps([index]).encode())
        assert client._inflight_messages == 50  # all sent at once; 10 wait for the window
        await transport.flush()
        assert not client._out_messages
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 60, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(60))


async def test_publishes_waiting_for_the_window_take_no_path_of_paho_s_publish(
    fresh_mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollout publishes far past the broker's window of 20 (a notification per device at
    once): what waits for the window goes out in order as PUBACKs free it, each one through
    `WindowedClient`'s short path, none through paho's `publish` (a message info with a
    `threading.Condition` each), `_do_on_publish` or `_update_inflight` (before: 180 of 200
    took paho's `publish`, and their PUBACKs paho's handler)."""
    device = PahoDevice(fresh_mosquitto, "waiting")
    transport = broker_transport(_config(fresh_mosquitto, "waiter"))
    client = transport._client
    calls: dict[str, int] = {"publish": 0, "_do_on_publish": 0, "_update_inflight": 0}
    for name in calls:
        original = getattr(mqtt.Client, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(mqtt.Client, name, counting)
    topic = "$aws/things/waiting/jobs/notify"
    await transport.connect(10)
    try:
        await asyncio.to_thread(device.wait_subscribed)
        for index in range(200):
            transport.publish_nowait(topic, json.dumps([index]).encode())
        assert client._inflight_messages == client._max_inflight_messages == 20  # 180 wait
        await transport.flush()
        assert not client._out_messages and client._inflight_messages == 0
        assert not transport._unacked
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 200, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(200))  # every one, once, in order
    assert calls == {"publish": 0, "_do_on_publish": 0, "_update_inflight": 0}


class _RestoreHeld(BrokerTransport):
    """Holds a reconnect's re-subscriptions after the Jobs filter until released: the window,
    a few SUBACKs long on a real reconnect, in which a device's request already reaches the
    emulator while its transport has not yet announced the link up."""

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config, config.client_id)
        self.hold = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def _send_subscribe(self, topic_filter: str) -> None:
        if self.hold and "/jobs/" not in topic_filter:
            self.holding.set()
            await self.release.wait()
        await super()._send_subscribe(topic_filter)


async def test_a_request_that_arrives_while_subscriptions_are_restored_is_answered(
    fresh_mosquitto: Mosquitto,
) -> None:
    """After a broker restart the Jobs filter is back before the others; a request arriving
    then was read, handled, and its reply dropped ("not connected"), because the reply asked
    the transport's announced state instead of the link's. The device then waited for an
    answer that never came (CI: a DescribeJobExecution after a reconnect timed out)."""
    transport = _RestoreHeld(_config(fresh_mosquitto, "restore-held"))
    emulator = Emulator(transport, tick_seconds=None)
    await emulator.start(connect_timeout=10)
    try:
        transport.hold = True
        fresh_mosquitto.restart()
        await asyncio.wait_for(transport.holding.wait(), 15)
        assert not transport.is_connected  # the window: the link is not announced up yet
        device = PahoDevice(fresh_mosquitto, "early")
        try:
            device.wait_subscribed()
            device.publish("get", {"clientToken": "early"})
            replies = await asyncio.to_thread(device.wait, 1, "get/accepted")
        finally:
            device.close()
        transport.release.set()
    finally:
        transport.release.set()
        await emulator.stop()
    assert [r["clientToken"] for r in replies] == ["early"]


async def test_a_write_larger_than_the_socket_takes_is_finished_in_order(
    fresh_mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes joined into one write that the socket takes only in part: what was written
    leaves the queue, the rest goes out when the socket drains, and all arrive whole and in
    order (the queue is emptied in one step only when everything was written)."""
    device = PahoDevice(fresh_mosquitto, "partial")
    transport = broker_transport(_config(fresh_mosquitto, "partial-writer"))
    await transport.connect(10)
    client = transport._client
    sends: list[tuple[int, int]] = []
    original = client._sock_send

    def counting(buf: bytes) -> int:
        written = original(buf)
        sends.append((len(buf), written))
        return written

    monkeypatch.setattr(client, "_sock_send", counting)
    payloads = [json.dumps([index, "x" * 1_000_000]).encode() for index in range(8)]
    try:
        await asyncio.to_thread(device.wait_subscribed)
        for payload in payloads:
            transport.publish_nowait("$aws/things/partial/jobs/notify", payload)
        await transport.flush(30)
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 8, "notify", 30)
    finally:
        device.close()
    assert [p[0] for p in got] == list(range(8))
    assert all(len(p[1]) == 1_000_000 for p in got)
    assert any(written < size for size, written in sends), sends  # the socket took a part


async def test_publishes_of_every_header_size_arrive_whole(fresh_mosquitto: Mosquitto) -> None:
    """`publish_nowait` packs a PUBLISH's header at once below 16 KiB (a length of one or two
    bytes) and byte by byte above: payloads around each boundary reach a device whole and in
    order through mosquitto; and two `flush` calls waiting at once both return when the last
    one is acknowledged."""
    device = PahoDevice(fresh_mosquitto, "sizes")
    transport = broker_transport(_config(fresh_mosquitto, "sizer"))
    topic = "$aws/things/sizes/jobs/notify"
    sent: list[Any] = []
    await transport.connect(10)
    try:
        await asyncio.to_thread(device.wait_subscribed)
        for rest in (127, 128, 16383, 16384, 200_000):
            payload = json.dumps(["x" * (rest - 5 - len(topic) - 4)]).encode()
            assert len(topic) + len(payload) + 5 == rest  # the packet's remaining length
            sent.append(json.loads(payload))
            transport.publish_nowait(topic, payload)
        await asyncio.gather(transport.flush(), transport.flush())
        assert not transport._unacked
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, len(sent), "notify")
    finally:
        device.close()
    assert got == sent


async def test_a_write_larger_than_the_socket_buffer_ends_through_the_selector(
    fresh_mosquitto: Mosquitto,
) -> None:
    """The transport writes a joined queue itself; what the socket does not take at once
    waits for the selector to report it writable, and once all of it is written the writer is
    removed again (a send buffer of 4 KiB and 600 KiB of publishes here)."""
    device = PahoDevice(fresh_mosquitto, "big")
    transport = broker_transport(_config(fresh_mosquitto, "bigwriter"))
    client = transport._client
    topic = "$aws/things/big/jobs/notify"
    await transport.connect(10)
    try:
        await asyncio.to_thread(device.wait_subscribed)
        client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for index in range(3):
            transport.publish_nowait(topic, json.dumps([index, "x" * 200_000]).encode())
        await transport.flush()
        assert not transport._unacked
        assert not client.want_write() and not client._registered_write
        assert not transport._writing  # the selector's writer is gone with the last byte
    finally:
        await transport.disconnect()
    try:
        got = await asyncio.to_thread(device.wait, 3, "notify")
    finally:
        device.close()
    assert [p[0] for p in got] == [0, 1, 2]
