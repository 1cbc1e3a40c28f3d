"""The daemon's start-up: the state database is opened while the connection is made.

A first start lays its database out and fsyncs it twice (`Store._make_if_new`); that used to
come before the TCP connect, the CONNECT and its CONNACK (issue 18: 2-5 ms of a first start's
way to its first request under strace). The daemon now opens the database in a worker thread
while the event loop connects (`Agent._open_store`). A real mosquitto, reached through a proxy
that notes the agent's CONNECT and the broker's CONNACK as they pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.daemon import Agent
from jobs_agent.engine.store import Store
from tests.fixtures.broker import Mosquitto
from tests.harness import agent_config

THING = "gw-overlap"
CONNECT, CONNACK = 0x10, 0x20
GUARD_SECONDS = 10.0
"""How long the database's laying out waits for the CONNACK before it goes on anyway: never
reached when the two overlap; before, the loop that would have connected was the one blocked."""


class Proxy:
    """127.0.0.1:port -> the broker, everything forwarded; `connack` is set once the broker's
    CONNACK has been passed on to the agent (a `threading.Event`: the database is laid out in
    a worker thread)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.connect = threading.Event()
        self.connack = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

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
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, CONNECT, self.connect)),
            asyncio.create_task(self._pump(up_reader, writer, CONNACK, self.connack)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.transport.abort()
            up_writer.transport.abort()
            for task in pumps:
                task.cancel()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: int, seen: threading.Event
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if data[0] & 0xF0 == kind:  # the first packet each way is the one looked for
                    seen.set()


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[Proxy]:
    relay = Proxy(mosquitto.port)
    await relay.start()
    yield relay
    await relay.close()


async def test_a_first_start_connects_while_its_state_database_is_laid_out(
    tmp_path: Path, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CONNECT reaches the broker and its CONNACK comes back while the new database is
    being laid out (which waits here for the CONNACK), and the configuration's findings are
    said meanwhile; the agent then gets ready as usual, with its database whole. Before, the
    database was made on the loop before the connect and the findings: the CONNACK could not
    come until it was done (failed: no CONNACK seen, the findings after the database)."""
    seen: list[str] = []
    make, findings = Store._make_if_new, Agent._log_findings

    def waiting_make(self: Store, path: Path) -> None:
        if not path.exists():
            seen.append("CONNACK" if proxy.connack.wait(GUARD_SECONDS) else "no CONNACK")
        make(self, path)
        seen.append("laid out")

    def said(self: Agent) -> None:
        findings(self)
        seen.append("findings")

    monkeypatch.setattr(Store, "_make_if_new", waiting_make)
    monkeypatch.setattr(Agent, "_log_findings", said)
    agent = Agent(agent_config(tmp_path, proxy.port, thing=THING))
    run = asyncio.create_task(agent.run())
    try:
        ready = asyncio.create_task(agent.ready.wait())
        await asyncio.wait({run, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert not run.done(), f"the agent exited with {run.result()}"
        assert seen == ["findings", "CONNACK", "laid out"]
        assert agent.ready.is_set()
        assert (tmp_path / "state" / "state.db").is_file()
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
    assert code == 0


async def test_a_state_database_that_cannot_be_opened_still_ends_the_start(
    tmp_path: Path, proxy: Proxy
) -> None:
    """The connection being made meanwhile is given up: the start ends with code 1 and the
    reason, as before, and never gets ready."""
    (tmp_path / "state" / "state.db").mkdir(parents=True)  # not a database
    agent = Agent(agent_config(tmp_path, proxy.port, thing=THING))
    async with asyncio.timeout(30):
        code = await agent.run()
    assert code == 1
    assert not agent.ready.is_set()
