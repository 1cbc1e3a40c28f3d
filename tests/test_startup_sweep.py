"""The start-up sweep of the job groups an earlier agent left: after the first request, before
the first handler.

Containment needs the sweep (and the cgroup probe it sets up) done before any handler runs, not
before the agent asks the service for work: the engine starts it in a worker thread and the
first request goes out meanwhile (issue 18: 1.5-2 ms of a first start's way to its first
request, strace); the first record processed waits for its end (`Engine._first_runner`), as
does recovery's stop of an execution's leftovers (`JobFiles.stop_leftovers`). A real agent,
mosquitto and the emulator, with a job waiting when the agent starts: its start-next answer
comes at once.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from jobs_agent.daemon import Agent
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.jobs.client import JobsClient
from tests.fixtures.broker import Mosquitto
from tests.harness import agent_config, start_emulator, wait_terminal, write_handler

THING = "gw-sweep"
GUARD_SECONDS = 10.0
"""How long the sweep waits for the first request before it goes on anyway: never reached when
the request goes first; before, the sweep was what the request waited for."""


async def test_the_first_request_goes_before_the_sweep_ends_and_the_first_handler_after(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: Any
) -> None:
    """The sweep (which waits here for the agent's first request) ends after the first
    request and before the handler of the job waiting at start runs; the job succeeds.
    Before, the sweep ran before the first request (failed: no request while it ran)."""
    started = tmp_path / "started"
    write_handler(tmp_path / "handlers", "work", f"#!/bin/sh\ntouch {started}\n")
    asked = threading.Event()
    seen: list[str] = []
    request, sweep_all = JobsClient._request, JobFiles.sweep_all

    async def asking(self: JobsClient, *args: Any) -> Any:
        asked.set()
        return await request(self, *args)

    def waiting_sweep(self: JobFiles) -> int:
        seen.append("request" if asked.wait(GUARD_SECONDS) else "no request")
        swept = sweep_all(self)
        seen.append("handler ran" if started.exists() else "swept")
        return swept

    monkeypatch.setattr(JobsClient, "_request", asking)
    monkeypatch.setattr(JobFiles, "sweep_all", waiting_sweep)
    emulator = await start_emulator(mosquitto.port)
    emulator.service.create_job("at-once", [THING], {"operation": "work"})
    agent = Agent(agent_config(tmp_path, mosquitto.port, thing=THING))
    run = asyncio.create_task(agent.run())
    try:
        execution = await wait_terminal(emulator, "at-once", THING, timeout=30)
        assert str(execution.status) == "SUCCEEDED"
        assert started.exists()
        assert seen == ["request", "swept"]
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
        await emulator.stop()
    assert code == 0


async def test_a_sweep_that_fails_is_tried_again_and_no_handler_runs_before_it_succeeds(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: Any
) -> None:
    """The first sweep raises: the job waiting at start is not run then (its handler has not
    started when the second sweep begins), the engine's next round sweeps again, and the job
    then runs and succeeds. Before, the failed sweep was kept and failed every round: the job
    never ran until a restart."""
    started = tmp_path / "started"
    write_handler(tmp_path / "handlers", "work", f"#!/bin/sh\ntouch {started}\n")
    seen: list[str] = []
    sweep_all = JobFiles.sweep_all

    def failing_once(self: JobFiles) -> int:
        seen.append("handler ran" if started.exists() else "sweep")
        if len(seen) == 1:
            raise OSError("cgroup.procs: device or resource busy")
        return sweep_all(self)

    monkeypatch.setattr(JobFiles, "sweep_all", failing_once)
    emulator = await start_emulator(mosquitto.port)
    emulator.service.create_job("after-retry", [THING], {"operation": "work"})
    agent = Agent(agent_config(tmp_path, mosquitto.port, thing=THING))
    run = asyncio.create_task(agent.run())
    try:
        execution = await wait_terminal(emulator, "after-retry", THING, timeout=30)
        assert str(execution.status) == "SUCCEEDED"
        assert seen == ["sweep", "sweep"]
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            code = await run
        await emulator.stop()
    assert code == 0
