"""The agent's scenarios that the emulator's readings touch most, under each reading: a queue
deeper than the pending lists' cap, retries, timeouts retried, and a force-cancel followed by
more work. (Cancel while running, duplicate notifications and step timeouts run under both
profiles in test_engine.py.) Real mosquitto, the agent in-process over paho."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from jobs_agent.config import AgentConfig
from jobs_agent.daemon import Agent
from jobs_agent.emulator.clock import ManualClock
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.readings import Readings
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    agent_config,
    side_effects,
    start_emulator,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-readings"


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[Agent]:
    import asyncio

    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(15):
            await agent.ready.wait()
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            await task


@contextlib.asynccontextmanager
async def emulator_for(
    mosquitto: Mosquitto, readings: Readings, **kw: object
) -> AsyncIterator[Emulator]:
    emu = await start_emulator(mosquitto.port, readings=readings, **kw)
    try:
        yield emu
    finally:
        await emu.stop()


async def test_a_queue_deeper_than_the_lists_runs_every_job_once_in_order(
    tmp_path: Path, mosquitto: Mosquitto, readings: Readings
) -> None:
    """25 jobs queued before the agent starts: notify and get show 10 at a time, yet every job
    runs exactly once, oldest first."""
    log = tmp_path / "runs.log"
    write_handler(tmp_path / "handlers", "work", f'#!/bin/sh\necho "$JOBS_AGENT_JOB_ID" >> {log}\n')
    async with emulator_for(mosquitto, readings) as emulator:
        for n in range(25):
            emulator.service.create_job(f"deep-{n:02d}", [THING], {"operation": "work"})
        async with running_agent(agent_config(tmp_path, mosquitto.port, thing=THING)):
            for n in range(25):
                await wait_terminal(emulator, f"deep-{n:02d}", THING, timeout=60)
        assert side_effects(log) == [f"deep-{n:02d}" for n in range(25)]
        for n in range(25):
            assert terminal_statuses(emulator, f"deep-{n:02d}") == ["SUCCEEDED"]


async def test_a_failed_execution_is_retried_and_the_retry_runs(
    tmp_path: Path, mosquitto: Mosquitto, readings: Readings
) -> None:
    """The first attempt fails; the retry (executionNumber 2) runs and succeeds."""
    marker = tmp_path / "first-done"
    write_handler(
        tmp_path / "handlers",
        "flaky",
        f"#!/bin/sh\nif [ -e {marker} ]; then exit 0; fi\ntouch {marker}\nexit 3\n",
    )
    async with emulator_for(mosquitto, readings) as emulator:
        emulator.service.create_job(
            "flaky",
            [THING],
            {"operation": "flaky"},
            retry_config=[{"failureType": "FAILED", "numberOfRetries": 1}],
        )
        async with running_agent(agent_config(tmp_path, mosquitto.port, thing=THING)):
            await emulator.service.wait_for_status("flaky", THING, "SUCCEEDED", 2, timeout=30)
        history = emulator.service.history(job_id="flaky")
        assert [
            (h.execution_number, str(h.to_status)) for h in history if str(h.source) == "device"
        ][-1] == (2, "SUCCEEDED")
        assert emulator.service.execution("flaky", THING, 1).status_details["reason"]


async def test_a_timed_out_execution_is_retried_and_the_retry_runs(
    tmp_path: Path, mosquitto: Mosquitto, readings: Readings
) -> None:
    """The first attempt outlives its in-progress timeout (the emulator's clock moved past it,
    late or not as the reading says); the agent stops it and runs the retry."""
    release = tmp_path / "release"
    started = tmp_path / "started"
    write_handler(
        tmp_path / "handlers",
        "slow",
        f"#!/bin/sh\nif [ -e {started} ]; then exit 0; fi\ntouch {started}\n"
        f"while [ ! -e {release} ]; do sleep 0.05; done\n",
    )
    clock = ManualClock()
    async with emulator_for(mosquitto, readings, clock=clock, tick_seconds=None) as emulator:
        service = emulator.service
        service.create_job(
            "slow",
            [THING],
            {"operation": "slow"},
            in_progress_timeout_minutes=1,
            retry_config=[{"failureType": "TIMED_OUT", "numberOfRetries": 1}],
        )
        async with running_agent(agent_config(tmp_path, mosquitto.port, thing=THING)):
            await service.wait_for_status("slow", THING, "IN_PROGRESS", 1, timeout=15)
            # The first attempt's handler must have marked its start before it is stopped, or
            # the retry would take itself for the first attempt and wait for the release.
            await wait_until(started.exists, 15, "the first attempt's handler to start")
            clock.advance(60 + readings.timeout_delay_seconds)
            assert service.tick() == 1
            await service.wait_for_status("slow", THING, "SUCCEEDED", 2, timeout=30)
        release.touch()
        assert str(service.execution("slow", THING, 1).status) == "TIMED_OUT"
