"""The daemon's start when the link fails between the CONNACK and the SUBACKs: a broker that
restarts, or a link that loses packets, as the agent starts. A slow connect is not a failed
start (the agent retries it for as long as it takes), and neither are subscriptions whose answers
were lost: the agent asks again instead of exiting with code 1 (seen in the chaos smoke run
under load, where a broker restart could fall between an agent's CONNACK and its SUBACKs).

A real mosquitto behind a TCP proxy that understands just enough MQTT to hold what the agent
sends after its CONNECT: the SUBACKs cannot come, deterministically, until the test lets them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.daemon import Agent
from jobs_agent.jobs import topics
from jobs_agent.transport.base import MAX_FILTERS_PER_SUBSCRIBE
from tests.fixtures.broker import Mosquitto
from tests.harness import agent_config, start_emulator, wait_terminal, write_handler

THING = "gw-start"
SUBSCRIBE = 0x82
"""The first byte of every SUBSCRIBE packet (type 8, flags 0b0010)."""


def _packets(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole MQTT packets at the start of `data` (fixed header, variable byte integer
    length, body), and the bytes of an incomplete one after them."""
    packets = []
    while len(data) >= 2:
        length, multiplier, at = 0, 1, 1
        while True:
            if at >= len(data):
                return packets, data
            byte = data[at]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            at += 1
            if not byte & 0x80:
                break
        if len(data) < at + length:
            break
        packets.append(data[: at + length])
        data = data[at + length :]
    return packets, data


class HoldAfterConnect:
    """127.0.0.1:port -> the broker. On the first connection it forwards the agent's CONNECT
    and everything the broker answers, but keeps every later packet of the agent (its
    SUBSCRIBEs, as a link losing them would) until `lose_held()` drops them with the link;
    later connections are forwarded as they are."""

    def __init__(self, broker_port: int, expected_subscribes: int) -> None:
        self.broker_port = broker_port
        self.expected_subscribes = expected_subscribes
        self.held: list[bytes] = []
        self.asked_again = asyncio.Event()
        """Set when more SUBSCRIBEs were held than one start asks for."""
        self._holding = True
        self._first: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def lose_held(self) -> None:
        """The held packets are lost with the link: the agent reconnects."""
        self._holding = False
        for writer in self._first:
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        first = self._holding and not self._first
        if first:
            self._first.extend((writer, up_writer))
        pumps = [
            asyncio.create_task(self._agent_side(reader, up_writer, hold=first)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.transport.abort()
            up_writer.transport.abort()
            for task in pumps:
                task.cancel()

    async def _agent_side(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        if not hold:
            return await self._pump(reader, writer)
        rest = b""
        connect_sent = False
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                packets, rest = _packets(rest + data)
                for packet in packets:
                    if not connect_sent:
                        connect_sent = True
                        writer.write(packet)
                        continue
                    self.held.append(packet)
                if sum(p[0] == SUBSCRIBE for p in self.held) > self.expected_subscribes:
                    self.asked_again.set()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[HoldAfterConnect]:
    # The Jobs client's filters go in one SUBSCRIBE (eight a packet: tests/test_subscribe_packets)
    packets = -(-len(topics.device_subscriptions(THING)) // MAX_FILTERS_PER_SUBSCRIBE)
    hold = HoldAfterConnect(mosquitto.port, packets)
    await hold.start()
    yield hold
    await hold.close()


async def test_subscriptions_unanswered_at_start_are_asked_again_not_an_exit(
    tmp_path: Path, mosquitto: Mosquitto, proxy: HoldAfterConnect
) -> None:
    """Connected, the agent's SUBSCRIBEs go unanswered past its request timeout: it asks
    again (it exited with code 1 before), and once the link comes back it is ready and runs
    jobs; a stop then ends it with code 0."""
    write_handler(tmp_path / "handlers", "work", "#!/bin/sh\necho done\n")
    emulator = await start_emulator(mosquitto.port)
    config = agent_config(tmp_path, proxy.port, thing=THING, request_timeout_seconds=0.5)
    agent = Agent(config)
    run = asyncio.create_task(agent.run())
    try:
        asked_again = asyncio.create_task(proxy.asked_again.wait())
        await asyncio.wait({run, asked_again}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        asked_again.cancel()
        assert not run.done(), f"the agent exited with {run.result()} before it was ready"
        assert proxy.asked_again.is_set(), "the agent never asked for its subscriptions again"
        assert not agent.ready.is_set()  # READY=1 waits for the SUBACKs
        proxy.lose_held()
        async with asyncio.timeout(30):
            await agent.ready.wait()
        emulator.service.create_job("after", [THING], {"operation": "work"})
        assert str((await wait_terminal(emulator, "after", THING, timeout=30)).status) == (
            "SUCCEEDED"
        )
    finally:
        agent.request_stop()
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
        await emulator.stop()
    assert code == 0
