"""progress-storm: a handler calls `progress()` 100,000 times in a tight loop.

What reaches the service must be bounded by the configured rate (here
`progress_interval_seconds: 0.02`, so at most one IN_PROGRESS update per 0.02 s of the storm plus
the first), the agent's CPU time stays close to the loop's own, and the last percent the service
saw is 100. (A storm shorter than one interval sends no IN_PROGRESS update at all, and the final
SUCCEEDED carries only the handler's result: the service then never sees a percent; that shows
as `nan` and fails the goal.)

Floor for CPU: the same 100,000 calls to a `progress()` that only stores its arguments, timed in
this process: the cost of the loop itself.
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.harness import AgentProcess, Measure, Session, cpu_seconds, emulator, new_id

NAME = "progress-storm"
HELP = "100,000 progress() calls: updates sent (rate-bounded), CPU time, final percent"
INTERVAL = 0.02
UPDATE = "UpdateJobExecution"


def floor_cpu(calls: int) -> float:
    latest: dict[str, Any] = {}

    def progress(percent: float | None = None, message: str | None = None, **kw: Any) -> None:
        latest.update(percent=percent, message=message, **kw)

    started = time.process_time()
    for i in range(1, calls + 1):
        progress(percent=i * 100 / calls, message=f"step {i}")
    return time.process_time() - started


async def run(session: Session, quick: bool) -> list[Measure]:
    calls = 100_000
    broker = session.broker()
    thing = new_id("storm")
    async with emulator(broker) as emu:
        agent = AgentProcess(
            broker,
            session.directory("storm"),
            thing,
            "paho",
            handlers={"storm": "benchmarks.handlers:ProgressStorm"},
            jobs={"progress_interval_seconds": INTERVAL},
            tree=session.current,
        )
        await agent.start()
        try:
            before_updates = emu.service.counters[UPDATE]
            before_cpu = cpu_seconds(agent.pid)
            started = time.time()
            emu.service.create_job("storm", [thing], {"operation": "storm", "calls": calls})
            execution = await emu.service.wait_for_status("storm", thing, "SUCCEEDED", timeout=120)
            wall = time.time() - started
            agent_cpu = cpu_seconds(agent.pid) - before_cpu
            updates = emu.service.counters[UPDATE] - before_updates - 1  # minus the final one
            history = emu.service.history("storm", thing)
        finally:
            await agent.stop()
    percents = [
        float(entry.status_details["percent"])
        for entry in history
        if getattr(entry, "status_details", None) and "percent" in entry.status_details
    ]
    last_percent = percents[-1] if percents else math.nan
    bound = math.floor(wall / INTERVAL) + 1
    handler_cpu = float(execution.status_details.get("handlerCpuSeconds", "nan"))
    return [
        Measure(
            "updates",
            "progress updates sent to the service",
            "msgs",
            updates,
            f"bound: 1 + job seconds / {INTERVAL} s interval",
            bound,
            "<= bound",
            lambda v, r: r is not None and v <= r,
            note=f"{calls} progress() calls; job took {wall:.2f} s",
        ),
        Measure(
            "cpu",
            "agent CPU time for the job",
            "s",
            agent_cpu,
            "floor: the bare loop storing the latest value",
            floor_cpu(calls),
            "",
            None,
            note=f"handler's own loop inside the agent: {handler_cpu:.3f} s CPU",
        ),
        Measure(
            "percent",
            "last percent the service saw",
            "%",
            last_percent,
            "expected",
            100.0,
            "== 100",
            lambda v, r: v == 100.0,
        ),
    ]
