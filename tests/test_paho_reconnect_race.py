"""The paho transport's reconnect when the broker closes a new connection at once.

Found by the chaos run (seed 20251): after a dropped link, the agent's reconnect reached a
broker that accepted the TCP connection and closed it before the CONNACK (a proxy refusing new
connections for a second). The close was read on the loop while the reconnect task still
waited for its worker thread; the drop asked for a reconnect, found that task running and left
it to it, and the task, whose `reconnect()` had returned without an error, ended. Nothing
reconnected again: every request timed out for the rest of the run.

Here a real mosquitto sits behind a TCP proxy that closes the first new connection after a drop;
the worker that runs paho's `reconnect()` returns only once the loop has handled that close, so
the order the chaos run met by chance is the order every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto

WAIT = 10.0


class RefusingProxy:
    """Forwards to the broker; `drop_and_refuse_once()` closes every forwarded connection and
    makes the next new one be closed as soon as it is accepted."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.port = 0
        self.refuse_next = False
        self.refused = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop_and_refuse_once(self) -> None:
        self.refuse_next = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse_next:
            self.refuse_next = False
            writer.close()
            self.refused.set()
            return
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[RefusingProxy]:
    running = RefusingProxy(mosquitto)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_a_connection_closed_before_the_reconnect_returned_is_retried(
    proxy: RefusingProxy,
) -> None:
    config = ConnectionConfig(
        transport="paho",
        endpoint="127.0.0.1",
        port=proxy.port,
        tls=False,
        keepalive_seconds=30,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.3,
    )
    transport = PahoTransport(config, "reconnect-race")
    await transport.connect(timeout=WAIT)
    client: Any = transport._client
    real_reconnect = client.reconnect
    reconnect_asked = threading.Event()
    real_schedule = transport._schedule_reconnect
    first = [True]

    def schedule_reconnect() -> None:
        real_schedule()
        reconnect_asked.set()

    def reconnect_after_the_close_is_handled() -> Any:
        reconnect_asked.clear()
        result = real_reconnect()
        if first[0]:  # the refused connection: return once the loop has handled its close
            first[0] = False
            assert reconnect_asked.wait(WAIT), "the refused connection was never seen closed"
        return result

    transport._schedule_reconnect = schedule_reconnect  # type: ignore[method-assign]
    client.reconnect = reconnect_after_the_close_is_handled
    try:
        assert transport.is_connected
        proxy.drop_and_refuse_once()
        await asyncio.wait_for(proxy.refused.wait(), WAIT)
        assert await transport.wait_connected(WAIT), "the transport never reconnected"
        assert not first[0], "the refused connection did not go through the reconnect task"
    finally:
        await transport.disconnect()
