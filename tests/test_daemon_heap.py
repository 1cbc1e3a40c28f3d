"""The daemon keeps start-up's objects out of the cyclic collector's walks.

Every full collection walked everything start-up made (modules, configuration, store,
connection: some 32,000 objects), and two of them, of 7-19 ms, landed on the event loop in
5,000 jobs (agent/daemon.py). Once ready, the agent freezes its heap
(`gc.freeze`): what it has then is in the permanent generation, which no collection walks; the
collector itself still runs. A reload collects once and freezes again, and a stop gives the heap
back. The real agent, in this event loop, on the embedded emulator's bus.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.config import load_config
from jobs_agent.daemon import Agent
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.agent_harness import write_script

THING = "gw-heap"


def walked() -> set[int]:
    """The ids of the objects a full collection walks now (the permanent generation aside)."""
    return {id(o) for generation in range(3) for o in gc.get_objects(generation)}


@pytest.fixture
async def emulator() -> AsyncIterator[EmbeddedEmulator]:
    emulator = EmbeddedEmulator(LocalBus(), tick_seconds=None)
    await emulator.start()
    yield emulator
    await emulator.stop()


async def run_job(emulator: EmbeddedEmulator, job_id: str) -> None:
    emulator.service.create_job(job_id, [THING], {"operation": "work.sh"})
    await emulator.service.wait_for(
        lambda: str(emulator.service.execution(job_id, THING).status) == "SUCCEEDED",
        timeout=15,
    )


async def test_start_up_is_frozen_once_ready_and_given_back_at_stop(
    tmp_path: Path, emulator: EmbeddedEmulator
) -> None:
    """Ready, the engine, its store and the transport are in no generation a collection walks
    (they were in the oldest one before); the collector stays on; jobs run; stopped, nothing is
    left frozen."""
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o755)
    write_script(handlers, "work.sh", "echo done\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"thing_name: {THING}\nconnection: {{transport: local}}\nstate_dir: {tmp_path / 's'}\n"
        f"jobs: {{handler_dir: {handlers}}}\n"
    )
    transport = LocalTransport(emulator.bus, THING)
    agent = Agent(load_config(path, environ={}), config_path=path, transport=transport)
    frozen_before = gc.get_freeze_count()
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(15):
            await agent.ready.wait()
        assert agent.engine is not None
        start_up = {id(agent.engine), id(agent.engine.store), id(transport), id(agent.config)}
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
        assert not start_up & walked()
        await run_job(emulator, "before-reload")
        old_config = id(agent.config)
        assert await agent.reload() is True
        # The reload's new configuration is frozen too, once the old one's cycles are gone.
        assert id(agent.config) != old_config
        assert not {id(agent.config), id(agent.engine)} & walked()
        await run_job(emulator, "after-reload")
    finally:
        agent.request_stop()
        agent.request_stop()
        async with asyncio.timeout(15):
            code = await task
    assert code == 0
    assert gc.get_freeze_count() == 0
