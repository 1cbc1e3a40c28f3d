"""What the emulator's broker transport costs per job, counted in Python calls (never timed).

Issue 18 wants the emulator at <= 1.5 ms CPU per job of a drain, and a profile of `jobs-agent
sim serve` under the perfect agent put most of it in the Python interpreter, about half of it
in the transport: paho's client and the project's code around it read seven packets per job
(two requests, five PUBACKs of the emulator's replies and events) and write five. Here the
emulator serves a real mosquitto and a device drains queued jobs through it one request at a
time, as the perfect agent does (benchmarks/perfect.py); `sys.setprofile` on the emulator's
loop thread counts the calls made in the transport's code: paho's client module,
agent/transport/ and agent/emulator/broker.py, and the built-in functions they call.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator import broker as broker_module
from jobs_agent.emulator.broker import BrokerTransport, broker_transport
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.transport import paho as paho_transport_module
from jobs_agent.transport import paho_client as paho_client_module
from tests.fixtures.broker import Mosquitto
from tests.helpers.calls import Calls

TRANSPORT = (
    mqtt.__file__,
    str(Path(paho_transport_module.__file__).parent),
    broker_module.__file__,
)
"""Code the transport's cost is made of: paho's client, agent/transport/, the emulator's
broker transport."""
THING = "cost-device"
PREFIX = f"$aws/things/{THING}/jobs"


class SerialDevice:
    """The perfect agent's protocol on a raw paho client in its own thread: StartNext, then
    UpdateJobExecution SUCCEEDED when it is accepted, until the queue is empty."""

    def __init__(self, broker: Mosquitto) -> None:
        self.done = threading.Event()
        self.jobs: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, THING, protocol=mqtt.MQTTv5)
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.client.on_message = self._on
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(
            [(f"{PREFIX}/start-next/accepted", 1), (f"{PREFIX}/+/update/accepted", 1)]
        )
        assert self._subscribed.wait(10), "no SUBACK"

    def start_next(self) -> None:
        self.client.publish(f"{PREFIX}/start-next", b'{"clientToken":"s"}', qos=1)

    def _on(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/start-next/accepted"):
            execution = body.get("execution")
            if execution is None:
                self.done.set()
                return
            self.jobs.append(execution["jobId"])
            update = b'{"status":"SUCCEEDED","clientToken":"u"}'
            client.publish(f"{PREFIX}/{execution['jobId']}/update", update, qos=1)
        else:
            self.start_next()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def served(fresh_mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    config = ConnectionConfig(
        transport="paho",
        endpoint=fresh_mosquitto.host,
        port=fresh_mosquitto.port,
        tls=False,
        client_id="emulator-under-test",
    )
    emulator = Emulator(broker_transport(config), tick_seconds=None)
    await emulator.start(connect_timeout=10)
    try:
        yield emulator
    finally:
        await emulator.stop()


async def drain(
    emulator: Emulator, broker: Mosquitto, jobs: int, prefixes: tuple[str, ...] = TRANSPORT
) -> Calls:
    for index in range(jobs):
        emulator.service.create_job(f"job-{index:03d}", [THING], {"operation": "noop"})
    transport = emulator.transport
    assert isinstance(transport, BrokerTransport)
    await transport.flush()  # the events of the queued jobs, acknowledged before counting
    device = SerialDevice(broker)
    calls = Calls(prefixes)
    try:
        with calls.counting():
            device.start_next()
            await asyncio.to_thread(device.done.wait, 30)
    finally:
        device.close()
    assert device.jobs == [f"job-{index:03d}" for index in range(jobs)]
    return calls


async def test_a_drained_job_costs_the_transport_at_most_its_budget_of_calls(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """Two requests read, five publishes written and their five PUBACKs read per job: 465
    calls of the transport's code per job at first, 340 in round 8 (paho's header read a byte
    at a time and the packet dictionaries of each PUBACK and request, a call or two per queued
    packet to join a write and to empty the queue after it), 266 in round 9 (paho's
    `loop_write` and its unregister callback around each write, a PUBLISH header built byte by
    byte, an `isinstance` per publish and per read), then 230-236 (the PUBACKs of one `recv`
    in one loop): the tests below hold each one."""
    jobs = 40
    calls = await drain(served, fresh_mosquitto, jobs)
    per_job = calls.total / jobs
    assert per_job <= 275, (per_job, calls.by_name.most_common(30))


async def test_a_write_takes_none_of_pahos_per_write_steps(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """Two writes per job (the answers and events of each request, joined): each went through
    paho's `loop_write`, which asked `want_write` and called the unregister callback under
    its lock, and the transport's loop hop to remove a selector writer never added (~15 calls
    per write). Now the transport writes the joined packets itself; and reads without
    `PahoTransport._readable`'s `isinstance` checks, and publishes (five per job) without
    paho's `is_connected` method."""
    calls = await drain(served, fresh_mosquitto, 20)
    for file, name in (
        ("client.py", "loop_write"),
        ("client.py", "_call_socket_unregister_write"),
        ("client.py", "is_connected"),
        ("paho.py", "_unregister_write"),
        ("paho.py", "_readable"),
    ):
        assert calls.of(file, name) == 0, (name, calls.by_name.most_common(30))
    assert calls.of("broker.py", "_flush") > 0


async def test_acknowledged_publishes_cost_asyncio_nothing(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """The event `flush` waits on was cleared at each publish and set each time the window
    emptied: seven calls of asyncio's code per job (`Event.clear`, `Event.set`), for a
    `flush` that comes once, at disconnect. Only a waiting `flush` clears and sets it now."""
    calls = await drain(served, fresh_mosquitto, 20, (asyncio.locks.__file__,))
    assert calls.total == 0, calls.by_name


async def test_packets_wholly_read_take_none_of_pahos_per_packet_steps(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    """Every packet of a drain (requests and PUBACKs) is cut from the read buffer: paho's
    `_packet_read` (the first packet of each `recv`, read a byte at a time) and its packet
    dispatch (`_packet_handle`, `_handle_pubackcomp`, `_handle_publish`) are never called, nor
    the buffered `_sock_recv` that served paho's reads."""
    calls = await drain(served, fresh_mosquitto, 20)
    for name in ("_packet_read", "_packet_handle", "_handle_pubackcomp", "_handle_publish"):
        assert calls.of("client.py", name) == 0, (name, calls.by_name.most_common(30))
    assert calls.of("paho_client.py", "_sock_recv") == 0, calls.by_name.most_common(30)


def reading_client() -> tuple[Any, socket.socket, socket.socket]:
    """The emulator's paho client reading its end (`ours`) of a real socket pair whose other end
    (`peer`) the test writes; nothing it queues is written."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    client = broker_module.ServiceClient(CallbackAPIVersion.VERSION2, "reader", protocol=5)
    client._sock = ours
    client.on_socket_register_write = lambda *args: None
    return client, ours, peer


def test_puback_due_that_arrives_while_a_read_is_handled_is_read_in_the_same_event() -> None:
    """The broker acknowledges a joined write one publish at a time: a PUBACK that arrives
    while the previous one is being handled is read in the same readable event (a `recv`)
    instead of another loop iteration of its own. Here the second PUBACK is written by the
    peer of a real socket pair when the first one is handled."""
    client, ours, peer = reading_client()
    acked: list[int] = []

    def on_acked(mid: int) -> None:
        acked.append(mid)
        if len(acked) == 1:
            peer.sendall(bytes((0x40, 2, 0, second)))

    client.on_acked = on_acked
    try:
        _, first = client.publish_qos1("$aws/things/t/jobs/notify", b"{}")
        _, second = client.publish_qos1("$aws/things/t/jobs/notify-next", b"{}")
        client._out_packet.clear()  # as if written: their PUBACKs are due
        peer.sendall(bytes((0x40, 2, 0, first)))
        assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    finally:
        ours.close()
        peer.close()
    assert acked == [first, second]
    assert not client._out_messages


def mqtt_publish_qos1(topic: bytes, mid: int, payload: bytes) -> bytes:
    """An MQTT 5 QoS 1 PUBLISH without properties, written from the specification (3.3,
    1.5.5: the remaining length as a variable byte integer, least significant group first)."""
    rest = 2 + len(topic) + 2 + 1 + len(payload)
    length = bytearray()
    while True:
        rest, byte = rest >> 7, rest & 0x7F
        length.append(byte | (0x80 if rest else 0))
        if not rest:
            break
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + payload
    return bytes((0x32,)) + bytes(length) + body


@pytest.mark.parametrize("rest", [5 + 29, 127, 128, 300, 16383, 16384, 2_097_151, 2_097_152])
def test_a_publish_packet_is_packed_in_a_few_calls_as_the_specification_writes_it(
    rest: int,
) -> None:
    """Five publishes per job (and five per job of the agent, whose client shares it): the
    header was built a byte at a time (`_remaining_length`'s loop, two `to_bytes`: ten or
    eleven calls per packet); below 16 KiB it is packed at once now. Lengths around each
    boundary of the variable byte integer."""
    topic = b"$aws/things/sizes/jobs/notify"
    payload = b"x" * (rest - 5 - len(topic))
    calls = Calls((paho_client_module.__file__,))
    with calls.counting():
        packet = paho_client_module._publish_packet(topic, 0x1234, payload)
    assert packet == mqtt_publish_qos1(topic, 0x1234, payload)
    if rest < 16384:
        assert calls.total <= 6, calls.by_name


def test_the_pubacks_of_one_recv_are_released_in_one_loop() -> None:
    """The broker acknowledges a joined write one publish at a time, and a `recv` holds two or
    three of those PUBACKs: each was one `_acked` call with its `len` calls and a `_release`
    call; now the run of PUBACKs at the read position is released in one `_acked` call (each
    still reported to `on_acked`, in order). A real socket pair carries them."""
    client, ours, peer = reading_client()
    acked: list[int] = []
    client.on_acked = acked.append
    calls = Calls((broker_module.__file__,))
    try:
        mids = [client.publish_qos1(f"$aws/things/t/jobs/n{n}", b"{}")[1] for n in range(3)]
        client._out_packet.clear()  # as if written: their PUBACKs are due
        peer.sendall(b"".join(bytes((0x40, 2, 0, mid)) for mid in mids))
        with calls.counting():
            assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    finally:
        ours.close()
        peer.close()
    assert acked == mids
    assert not client._out_messages and client._inflight_messages == 0
    assert calls.of("broker.py", "_acked") == 1, calls.by_name
    assert calls.of("broker.py", "_release") == 0, calls.by_name
