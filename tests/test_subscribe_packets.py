"""The agent's subscriptions travel in as few SUBSCRIBE packets as AWS IoT Core allows (eight
filters a packet): the Jobs client's eight filters in one at start-up, on paho and on awscrt,
counted in the log of a real mosquitto that logs every packet it receives (`log_type debug`).
A filter the broker refuses in a SUBACK that grants the others is still named in the error, and
the others are still subscribed. After a reconnect whose session the broker lost (a restart of a
broker without persistence), the filters come back in as few packets too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs_agent.daemon import Agent
from jobs_agent.transport.awscrt import AwscrtTransport
from jobs_agent.transport.base import Message, Transport, TransportError
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.transport.shared import SharedLink
from tests.fixtures.broker import Mosquitto, _require_binary
from tests.fixtures.certs import CertPaths
from tests.harness import agent_config, awscrt_connection, paho_connection, wait_until
from tests.helpers.agent_harness import captured_logs
from tests.test_daemon_start import _packets

THING = "gw-subscribe"
DENIED = "refused/here"
"""The filter `RefusingProxy` has the broker's SUBACK refuse."""
SUBACK = 0x90
NOT_AUTHORIZED = 0x87


@pytest.fixture
def logging_broker(
    tmp_path_factory: pytest.TempPathFactory, broker_certs: CertPaths
) -> Iterator[Callable[..., Mosquitto]]:
    """Private brokers that log every packet."""
    brokers: list[Mosquitto] = []

    def make() -> Mosquitto:
        directory = tmp_path_factory.mktemp("mosquitto-debug")
        broker = Mosquitto(_require_binary(), directory, broker_certs)
        text = broker.config_path.read_text(encoding="utf-8")
        broker.config_path.write_text(text + "log_type debug\n", encoding="utf-8")
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.kill()


def received(broker: Mosquitto, packet: str, client_id: str) -> list[int]:
    """The lines of the broker's log where it received `packet` from `client_id`."""
    mark = f"Received {packet} from {client_id}"
    return [
        number
        for number, line in enumerate(broker.log_text().splitlines())
        if (text := line.partition(": ")[2].rstrip()) == mark or text.startswith(mark + " (")
    ]


@pytest.mark.parametrize("transport", ["paho", "awscrt"])
async def test_the_jobs_client_subscribes_in_one_packet_before_its_first_request(
    tmp_path: Path, logging_broker: Callable[..., Mosquitto], transport: str
) -> None:
    """From its CONNECT to its first request (start-next) the agent sends one SUBSCRIBE with
    its eight filters (eight packets before), then runs."""
    broker = logging_broker()
    config = agent_config(tmp_path, broker.port, thing=THING)
    if transport == "awscrt":
        config = dataclasses.replace(config, connection=awscrt_connection(broker))
    agent = Agent(config)
    run = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(30):
            await agent.ready.wait()
        await wait_until(lambda: bool(received(broker, "PUBLISH", THING)), 30, "a request")
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
    assert code == 0
    first_request = received(broker, "PUBLISH", THING)[0]
    subscribes = [n for n in received(broker, "SUBSCRIBE", THING) if n < first_request]
    assert len(subscribes) == 1, broker.log_text()


class RefusingProxy:
    """127.0.0.1:port -> the broker, every byte forwarded as it is except in a SUBACK: the
    reason code of the subscription at `index` becomes "not authorized" (mosquitto's own ACLs
    refuse no subscription: they act on delivery)."""

    def __init__(self, broker_port: int, index: int) -> None:
        self.broker_port, self.index, self.port = broker_port, index, 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        pumps = {
            asyncio.create_task(self._pump(reader, up_writer, edit=False)),
            asyncio.create_task(self._pump(up_reader, writer, edit=True)),
        }
        self._tasks |= pumps
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, edit: bool
    ) -> None:
        rest = b""
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if not edit:
                    writer.write(data)
                    continue
                packets, rest = _packets(rest + data)
                writer.write(b"".join(map(self._edited, packets)))

    def _edited(self, packet: bytes) -> bytes:
        if packet[0] != SUBACK:
            return packet
        at = 1
        while packet[at] & 0x80:  # the remaining length
            at += 1
        at += 3  # its last byte, then the packet id
        length = shift = 0
        while True:  # the properties' length
            byte = packet[at]
            length |= (byte & 0x7F) << shift
            shift += 7
            at += 1
            if not byte & 0x80:
                break
        code = at + length + self.index
        if code >= len(packet):
            return packet
        return packet[:code] + bytes([NOT_AUTHORIZED]) + packet[code + 1 :]


async def test_a_refused_filter_is_named_and_the_others_granted(
    logging_broker: Callable[..., Mosquitto],
) -> None:
    """One SUBSCRIBE of three filters whose SUBACK refuses the middle one (paho; awscrt reads
    the SUBACK's reason codes the same way, over TLS that a proxy cannot edit): the error names
    that filter alone, as a `subscribe` of it alone does, and the two granted deliver."""
    broker = logging_broker()
    proxy = RefusingProxy(broker.port, index=1)
    await proxy.start()
    transport = PahoTransport(paho_connection(proxy.port), "refusal")
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    transport.set_message_callback(inbox.put_nowait)
    await transport.connect(timeout=30)
    try:
        with pytest.raises(TransportError) as refused:
            await transport.subscribe_all(["granted/a", DENIED, "granted/b"])
        assert str(refused.value) == f"subscribe {DENIED}: refused by the broker (Not authorized)"
        assert len(received(broker, "SUBSCRIBE", "refusal")) == 1
        await transport.publish("granted/b", b"b")
        await transport.publish("granted/a", b"a")
        async with asyncio.timeout(30):
            topics = {(await inbox.get()).topic, (await inbox.get()).topic}
        assert topics == {"granted/a", "granted/b"}
    finally:
        await transport.disconnect()
        await proxy.close()


async def test_a_views_filters_go_in_one_packet_and_a_refusal_holds_none(
    logging_broker: Callable[..., Mosquitto],
) -> None:
    """Through a view of the shared link: the filters nobody held yet go in one SUBSCRIBE
    (one already held is not asked for again); when the broker refuses one, the view listens
    to none of them and the link holds none (when unsure, subscribe again), and asking again
    once the broker grants them all works."""
    broker = logging_broker()
    proxy = RefusingProxy(broker.port, index=1)
    await proxy.start()
    transport = PahoTransport(paho_connection(proxy.port), "views")
    link = SharedLink(transport)
    first, second = link.view(), link.view()
    await transport.connect(timeout=30)
    try:
        await first.subscribe("held/a")
        with pytest.raises(TransportError, match=f"subscribe {DENIED}: refused"):
            await second.subscribe_all(["held/a", "new/b", DENIED])
        assert link.held == {"held/a"} and second.filters == frozenset()
        proxy.index = 99  # past the reason codes: nothing refused
        await second.subscribe_all(["held/a", "new/b", DENIED])
        assert link.held == {"held/a", "new/b", DENIED} == second.filters
        subscribes = received(broker, "SUBSCRIBE", "views")
        assert len(subscribes) == 3  # held/a; then new/b with DENIED, twice
    finally:
        await transport.disconnect()
        await proxy.close()


def since_last_connect(broker: Mosquitto, packet: str, client_id: str) -> int:
    """How many `packet`s the broker received from `client_id` on its latest connection."""
    mark = f" as {client_id} ("
    lines = broker.log_text().splitlines()
    connects = [
        n for n, line in enumerate(lines) if "New client connected from" in line and mark in line
    ]
    return len([n for n in received(broker, packet, client_id) if n > connects[-1]])


@pytest.mark.parametrize("transport", ["paho", "awscrt"])
async def test_a_lost_session_s_filters_come_back_in_as_few_packets_as_the_quota_allows(
    logging_broker: Callable[..., Mosquitto], transport: str
) -> None:
    """Ten filters (two packets at start: eight and two), then the broker restarts and forgets
    the session: the restore sends two SUBSCRIBE packets (ten before, one per filter), before
    the link is announced back, and both packets' filters deliver."""
    broker = logging_broker()
    filters = [f"restore/{i}/+" for i in range(10)]
    device: Transport
    if transport == "awscrt":
        device = AwscrtTransport(awscrt_connection(broker), "restoring")
    else:
        device = PahoTransport(paho_connection(broker.port), "restoring")
    service = PahoTransport(paho_connection(broker.port), "restore-service")
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    resumed: asyncio.Queue[bool] = asyncio.Queue()
    device.set_message_callback(inbox.put_nowait)
    device.set_connection_callbacks(on_resumed=resumed.put_nowait)
    await device.connect(timeout=30)
    try:
        await device.subscribe_all(filters)
        assert since_last_connect(broker, "SUBSCRIBE", "restoring") == 2
        await asyncio.to_thread(broker.restart)
        async with asyncio.timeout(30):
            assert await resumed.get() is False
        assert since_last_connect(broker, "SUBSCRIBE", "restoring") == 2, broker.log_text()
        await service.connect(timeout=30)
        await service.publish("restore/9/x", b"last packet")
        await service.publish("restore/0/x", b"first packet")
        async with asyncio.timeout(30):
            got = [await inbox.get(), await inbox.get()]
        assert got == [
            Message("restore/9/x", b"last packet"),
            Message("restore/0/x", b"first packet"),
        ]
    finally:
        await device.disconnect()
        await service.disconnect()


async def test_a_filter_refused_in_a_restore_is_named_and_the_others_restored(
    logging_broker: Callable[..., Mosquitto],
) -> None:
    """The restore's one SUBSCRIBE of three filters, whose SUBACK refuses the last one
    (paho through `RefusingProxy`): the error names that filter as a restore of it alone did,
    the link comes back, and the two granted deliver."""
    broker = logging_broker()
    proxy = RefusingProxy(broker.port, index=99)  # nothing refused at start
    await proxy.start()
    device = PahoTransport(paho_connection(proxy.port), "restore-refused")
    service = PahoTransport(paho_connection(broker.port), "restore-refused-service")
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    resumed: asyncio.Queue[bool] = asyncio.Queue()
    device.set_message_callback(inbox.put_nowait)
    device.set_connection_callbacks(on_resumed=resumed.put_nowait)
    await device.connect(timeout=30)
    try:
        await device.subscribe_all(["granted/a", DENIED, "granted/b"])
        proxy.index = 2  # the last in sorted order: DENIED
        with captured_logs("info") as logs:
            await asyncio.to_thread(broker.restart)
            async with asyncio.timeout(30):
                assert await resumed.get() is False
        refusals = [
            (r["topic_filter"], r["error"])
            for r in logs.records
            if r.get("event") == "cannot subscribe again after reconnecting"
        ]
        assert refusals == [(DENIED, f"subscribe {DENIED}: refused by the broker (Not authorized)")]
        assert since_last_connect(broker, "SUBSCRIBE", "restore-refused") == 1
        await service.connect(timeout=30)
        await service.publish("granted/b", b"b")
        await service.publish("granted/a", b"a")
        async with asyncio.timeout(30):
            topics = {(await inbox.get()).topic, (await inbox.get()).topic}
        assert topics == {"granted/a", "granted/b"}
    finally:
        await device.disconnect()
        await service.disconnect()
        await proxy.close()
