"""A stop while the service does not answer the agent's first reads (GetPendingJobExecutions at
the first reconciliation, and before it DescribeJobExecution of each execution the agent still
holds) ends the agent at once, not when the request times out (it waited out the whole
`request_timeout_seconds`: 27.8 s with the default 30 s, issue 18). A real mosquitto with no
Jobs service behind it: nothing ever answers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from jobs_agent.daemon import Agent
from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.engine.store import Store
from jobs_agent.vocabulary import ExecutionRef
from tests.fixtures.broker import Mosquitto
from tests.harness import AgentProcess, agent_config, config_yaml, wait_until

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


async def test_a_stop_while_the_first_reconciliations_describe_is_unanswered_ends_the_agent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The state database holds an execution an earlier agent left RUNNING: the first
    reconciliation asks the service about it (DescribeJobExecution) before anything else, and
    nothing answers. SIGTERM to the real `jobs-agent run` ends it at once, with the record as
    it was (the read given up wrote nothing); before, it waited out the hour's request timeout
    and the 30 s bound below failed."""
    config = agent_config(tmp_path, mosquitto.port, thing=THING, request_timeout_seconds=3600)
    ref = ExecutionRef(None, "left-running", 1)
    config.state_dir.mkdir(mode=0o700)
    store = Store(config.state_dir / "state.db")
    try:
        store.record_taken(ref, {"operation": "work"}, 2)
        store.transition(ref, ExecutionState.RUNNING)
    finally:
        store.close()
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    try:
        agent.start()
        await agent.wait_ready()
        await wait_until(
            lambda: '"operation": "DescribeJobExecution"' in agent.log_text(),
            30,
            "the first reconciliation's describe sent",
        )
        assert "GetPendingJobExecutions" not in agent.log_text()  # the describe comes first
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=30) == 0
    finally:
        agent.kill()
    store = Store(config.state_dir / "state.db")
    try:
        record = store.get(ref)
    finally:
        store.close()
    assert record is not None and record.state is ExecutionState.RUNNING
    assert record.note in ("", None)
