"""latency: job created in the emulator -> handler started on the device, awscrt and paho.

One job at a time, each created only once the agent is idle again (its follow-up start-next has
reached the emulator), so every sample is the full path: notify-next to the device, start-next
round trip, the durable "started" write, routing, the handler's first line. The handler is a
Python plugin writing `time.time()` to a file; the creation time is taken in this process, which
hosts the emulator: one machine, one clock.

Floor: the same broker with a raw paho client (benchmarks/raw.py): one notify delivery plus one
request/reply round trip, plain TCP for paho and mTLS for awscrt (the agent's own paths).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.harness import (
    AgentProcess,
    Measure,
    Session,
    emulator,
    new_id,
    percentile,
    raw_device,
    responder,
)

NAME = "latency"
HELP = "job created -> handler started, p50/p99, awscrt and paho, beside the raw floor"
START_NEXT = "StartNextPendingJobExecution"


def jobs_count(quick: bool) -> int:
    return 100 if quick else 500


async def wait_idle(emu: Any, seen: int, timeout: float = 10.0) -> None:
    """Until the agent's start-next after `seen` ones has been answered (polling the counter)."""
    deadline = time.monotonic() + timeout
    while emu.service.counters[START_NEXT] <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError("the agent did not ask for more work after its job")
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.002)  # the answer ("nothing queued") is on its way back to the agent


async def agent_latencies(session: Session, transport: str, count: int) -> list[float]:
    broker = session.broker()
    directory = session.directory(f"latency-{transport}")
    stamps = directory / "stamps.txt"
    async with emulator(broker) as emu:
        agent = AgentProcess(
            broker,
            directory,
            new_id(f"lat-{transport}"),
            transport,
            handlers={"stamp": "benchmarks.handlers:Stamp"},
            env={"BENCH_STAMP_FILE": str(stamps)},
        )
        await agent.start()
        created: dict[str, float] = {}
        try:
            await wait_idle(emu, 0)
            for i in range(count):
                job_id = f"lat-{i}"
                seen: list[int] = []

                def done(job_id: str = job_id, seen: list[int] = seen) -> bool:
                    execution = emu.service._executions.get((job_id, agent.thing))
                    if execution and execution[-1].status.value == "SUCCEEDED":
                        seen.append(emu.service.counters[START_NEXT])
                        return True
                    return False

                created[job_id] = time.time()
                emu.service.create_job(job_id, [agent.thing], {"operation": "stamp"})
                await emu.service.wait_for(done, timeout=30)
                await wait_idle(emu, seen[0])
        finally:
            await agent.stop()
    started = {}
    for line in stamps.read_text().splitlines():
        job_id, when = line.split()
        started[job_id] = float(when)
    return [started[j] - created[j] for j in created]


async def floor_latencies(session: Session, tls: bool, count: int) -> list[float]:
    broker = session.broker()
    async with responder(broker):
        device = await asyncio.to_thread(raw_device, broker, tls)
        try:
            return await asyncio.to_thread(
                lambda: [device.notify_then_round_trip() for _ in range(count)]
            )
        finally:
            device.close()


async def run(session: Session, quick: bool) -> list[Measure]:
    count = jobs_count(quick)
    measures: list[Measure] = []
    for transport, tls in (("paho", False), ("awscrt", True)):
        floor = [x * 1000 for x in await floor_latencies(session, tls, count)]
        agent = [x * 1000 for x in await agent_latencies(session, transport, count)]
        floor_name = "raw paho, mTLS" if tls else "raw paho, TCP"
        measures += [
            Measure(
                f"p50-{transport}",
                f"p50 created -> handler started ({transport})",
                "ms",
                percentile(agent, 50),
                f"floor p50: notify + 1 round trip ({floor_name})",
                percentile(floor, 50),
                "<= 2x floor",
                lambda v, r: r is not None and v <= 2 * r,
                note=f"{count} jobs",
            ),
            Measure(
                f"p99-{transport}",
                f"p99 created -> handler started ({transport})",
                "ms",
                percentile(agent, 99),
                f"floor p99 ({floor_name})",
                percentile(floor, 99),
                "< 10 ms",
                lambda v, r: v < 10,
                note=f"{count} jobs",
            ),
        ]
    return measures
