"""A stop while the service does not answer the agent's first read (GetPendingJobExecutions at
the first reconciliation) ends the agent at once, not when the request times out (it waited
out the whole `request_timeout_seconds`: 27.8 s with the default 30 s, issue 18). A real
mosquitto with no Jobs service behind it: nothing ever answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jobs_agent.daemon import Agent
from tests.fixtures.broker import Mosquitto
from tests.harness import agent_config, wait_until

THING = "gw-unanswered"


async def test_a_stop_while_the_first_read_is_unanswered_ends_the_agent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The request timeout is an hour: before the fix, the stop waited for it and the
    30 s bound below failed."""
    config = agent_config(tmp_path, mosquitto.port, thing=THING, request_timeout_seconds=3600)
    agent = Agent(config)
    run = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(30):
            await agent.ready.wait()
        engine = agent.engine
        assert engine is not None
        client = engine.client
        await wait_until(lambda: client.requests_waiting > 0, 30, "the first read sent")
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
    finally:
        if not run.done():
            agent.request_stop()
            agent.request_stop()
            run.cancel()
    assert code == 0
