"""`transport: local`: the daemon on an embedded emulator in the same process (development).

The `run` command starts the emulator here and hands the daemon a transport on its in-process
bus; the emulator's HTTP APIs listen where `jobs-agent sim create-job` looks by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog

from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.sim import DEFAULT_HTTP_PORT
from jobs_agent.transport.local import LocalBus, LocalTransport

log = structlog.get_logger("jobs_agent.sim")


@contextlib.asynccontextmanager
async def embedded_emulator(client_id: str) -> AsyncIterator[LocalTransport]:
    """An embedded emulator for the lifetime of the block, and a transport on its bus."""
    bus = LocalBus()
    # The port `jobs-agent sim create-job` talks to by default, or any free one if taken.
    emulator = EmbeddedEmulator(bus, http_port=DEFAULT_HTTP_PORT)
    try:
        await emulator.start()
    except OSError:
        await emulator.stop()
        emulator = EmbeddedEmulator(bus, http_port=0)
        await emulator.start()
    log.info(
        "embedded IoT Jobs emulator started; create jobs with `jobs-agent sim create-job"
        " --endpoint ENDPOINT`",
        endpoint=emulator.http_endpoint,
    )
    try:
        yield LocalTransport(bus, client_id)
    finally:
        await emulator.stop()
