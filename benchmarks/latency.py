"""latency: job created in the emulator -> handler started on the device, awscrt and paho.

One job at a time, each created only once the agent is idle again (no request for
`QUIET_SECONDS` after the start-next that took its job: an agent that asks again after a job
has asked by then), so every sample is the full path: notify-next to the device, start-next
round trip, the durable record that must precede the handler, routing, the handler's first
line. The handler is a Python plugin writing `time.time()` to a file; the creation time is taken
in this process, which hosts the emulator: one machine, one clock.

Floor (the goal's reference): the perfect agent (benchmarks/perfect.py) on the same broker and
emulator, stamping the time where its handler would start: one notify delivery, one round trip
through the same service, one fsync, and nothing else (raw paho; mTLS where the agent uses
awscrt). Also printed: the physical floor without a service, a raw paho client and a trivial
responder (benchmarks/raw.py) plus one fsynced write in the same directory. Issue 18's goal:
p50 <= 1.5x the floor, p99 < 10 ms.

With `--baseline REF` the agent of REF runs the same jobs on the same broker. Who runs first
alternates from run to run (benchmarks/turns.py; the notes say the order of each run), and each
agent runs `WARMUP` jobs, untimed, before its timed ones: on a fresh broker the first agent's
first jobs were slow whichever code it ran, and p99 measured the order, not the code. The first
warm-up job, an agent's first job after start-up, is printed in a row of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.drain import perfect_command
from benchmarks.harness import (
    AgentProcess,
    Broker,
    Measure,
    Session,
    Tree,
    emulator,
    new_id,
    percentile,
    raw_device,
    responder,
)
from benchmarks.turns import order, order_note

NAME = "latency"
HELP = "job created -> handler started, p50/p99, awscrt and paho, beside the perfect agent"
START_NEXT = "StartNextPendingJobExecution"
QUIET_SECONDS = 0.05
P50_FACTOR = 1.5
P99_MS = 10.0
WARMUP = 10
"""Jobs each agent runs, untimed, once it is up and before its timed jobs, on the same broker and
emulator. Per-job latencies of 500-job runs (paho and awscrt, 2 runs, load 1.5-3): an agent's
first job took 42-127 ms (the median 4.5-5.5 ms) in every agent, first on the broker or not, and
the first agent on a fresh broker took 8-87 ms for its jobs 1-4 too; jobs 5-9 read like the
rest, but for 22 and 28 ms at jobs 8 and 9 of one agent (the machine's load gives such jobs
anywhere in a run). p99 of 500 jobs is the 5th slowest, so those few jobs made it: the first
paho agent's p99 read 52.5 ms over all 500 and 14.9 ms without its first 10. Ten is the drain's
warm-up too. The perfect agent's first jobs are as fast as its others; it runs the warm-up all
the same."""
FIRST_NOTE = (
    "the first job is the first warm-up job, not timed with the others: the agent imports what"
    " only a job needs (the dispatcher's router, the plugins' entry points, the engine's runner)"
    " at its first job, not at start-up"
)


def jobs_count(session: Session, quick: bool) -> int:
    if session.smoke:
        return 10
    return 100 if quick else 500


def warmup_count(session: Session) -> int:
    return 1 if session.smoke else WARMUP


async def wait_idle(emu: Any, asked: int, timeout: float = 10.0) -> None:
    """Until the device has sent `asked` start-next requests in all (polling the counter) and
    then no request for `QUIET_SECONDS`: the perfect agent (and this agent before round 13)
    asks again after each job ("nothing queued"); this agent asks nothing when the job's
    events name nothing new (engine/wakes.py)."""
    deadline = time.monotonic() + timeout
    while emu.service.counters[START_NEXT] < asked:
        if time.monotonic() > deadline:
            raise TimeoutError("the device did not ask for the job")
        await asyncio.sleep(0.0005)
    served, quiet_since = sum(emu.service.counters.values()), time.monotonic()
    while time.monotonic() - quiet_since < QUIET_SECONDS:
        await asyncio.sleep(0.002)
        now = sum(emu.service.counters.values())
        if now != served:
            served, quiet_since = now, time.monotonic()


def device(
    session: Session, broker: Broker, transport: str, who: str, tree: Tree | None
) -> tuple[AgentProcess, Path]:
    """The agent of `tree` with the Stamp plugin, or the perfect agent with `--stamp`."""
    directory = session.directory(f"latency-{who}-{transport}")
    stamps = directory / "stamps.txt"
    thing = new_id(f"lat-{transport}")
    command = None
    if tree is None:
        command = perfect_command(session, broker, transport, thing, directory)
        command += ["--stamp", str(stamps)]
    process = AgentProcess(
        broker,
        directory,
        thing,
        transport,
        handlers={"stamp": "benchmarks.handlers:Stamp"},
        env={"BENCH_STAMP_FILE": str(stamps)},
        command=command,
        tree=tree or session.current,
    )
    return process, stamps


@dataclass(frozen=True)
class Latencies:
    """One agent's jobs, created -> handler started, in milliseconds."""

    timed: dict[str, float]
    """By job id, in the order they ran."""
    first: float | None
    """The first warm-up job's: the agent's first job after start-up (None without warm-up)."""


async def one_job(emu: Any, process: AgentProcess, job_id: str) -> float:
    """Create `job_id` for the device, wait until it has succeeded and the device is idle again;
    the time of its creation."""
    # Each job takes a start-next to start it, and then no more or one that finds nothing
    # queued (`wait_idle`).
    asked = emu.service.counters[START_NEXT] + 1

    def done() -> bool:
        execution = emu.service._executions.get((job_id, process.thing))
        return bool(execution) and execution[-1].status.value == "SUCCEEDED"

    created = time.time()
    emu.service.create_job(job_id, [process.thing], {"operation": "stamp"})
    await emu.service.wait_for(done, timeout=30)
    await wait_idle(emu, asked)
    return created


@contextlib.contextmanager
def collector_held() -> Iterator[None]:
    """This process's cyclic garbage collector off while its jobs run: the process hosts the
    emulator, and a full collection of its heap (19 ms, once in about 1,200 jobs) landed in
    whichever job was being timed, for any agent. What is there when the jobs begin is frozen
    out of later collections; `timed_jobs` collects the young garbage between jobs."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


async def timed_jobs(emu: Any, process: AgentProcess, warmup: int, count: int) -> dict[str, float]:
    """Each job's creation time by job id: `warmup` jobs (`warm-N`), then `count` (`lat-N`), one
    at a time, with no garbage collection of this process during any of them."""
    created: dict[str, float] = {}
    names = [f"warm-{i}" for i in range(warmup)] + [f"lat-{i}" for i in range(count)]
    with collector_held():
        for job_id in names:
            created[job_id] = await one_job(emu, process, job_id)
            gc.collect(1)  # the job's young garbage, the agent idle
    return created


async def latencies(
    session: Session,
    broker: Broker,
    transport: str,
    who: str,
    tree: Tree | None,
    count: int,
    warmup: int,
) -> Latencies:
    """Milliseconds from each timed job's creation to its handler's start, after `warmup` jobs
    that are not timed (`WARMUP`)."""
    process, stamps = device(session, broker, transport, who, tree)
    async with emulator(broker) as emu:
        await process.start()
        try:
            await wait_idle(emu, 1)
            created = await timed_jobs(emu, process, warmup, count)
        finally:
            await process.stop()
    started = {}
    for line in stamps.read_text().splitlines():
        job_id, when = line.split()
        started[job_id] = float(when)
    ms = {j: 1000 * (started[j] - created[j]) for j in created}
    first = ms.pop("warm-0", None)
    return Latencies({j: v for j, v in ms.items() if not j.startswith("warm-")}, first)


async def physical_floor(session: Session, tls: bool, count: int) -> list[float]:
    broker = session.broker()
    journal_path = session.directory("latency-physical") / "journal"
    journal = os.open(journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        async with responder(broker):
            raw = await asyncio.to_thread(raw_device, broker, tls)
            try:
                return await asyncio.to_thread(
                    lambda: [1000 * raw.notify_then_round_trip(journal) for _ in range(count)]
                )
            finally:
                raw.close()
    finally:
        os.close(journal)


async def run(session: Session, quick: bool) -> list[Measure]:
    count, warmup = jobs_count(session, quick), warmup_count(session)
    trees = session.trees()
    base = trees[1] if len(trees) > 1 else None
    round_number = session.next_round(NAME)
    who = order(round_number, base is not None)
    tree_of: dict[str, Tree | None] = {"agent": trees[0], "baseline": base, "perfect": None}
    note = f"{count} jobs, one at a time, after {warmup} warm-up jobs per agent"
    note += f"; {order_note(round_number, who, base, 'ran')} (each transport on a fresh broker)"
    measures: list[Measure] = []
    for transport, tls in (("paho", False), ("awscrt", True)):
        broker = session.broker()
        timed: dict[str, Latencies] = {}
        for w in who:
            timed[w] = await latencies(session, broker, transport, w, tree_of[w], count, warmup)
        physical = await physical_floor(session, tls, count)
        measures += figures(transport, tls, timed, physical, base, note)
    return measures


def figures(
    transport: str,
    tls: bool,
    timed: dict[str, Latencies],
    physical: list[float],
    base: Tree | None,
    note: str,
) -> list[Measure]:
    agent, perfect = list(timed["agent"].timed.values()), list(timed["perfect"].timed.values())
    old = list(timed["baseline"].timed.values()) if "baseline" in timed else None
    floor_name = "perfect agent (raw paho" + (", mTLS)" if tls else ")")
    physical_name = "raw paho" + (", mTLS" if tls else "") + ", no service"
    base_label = f"agent of {base.label}" if base else ""
    result = [
        Measure(
            f"p50-{transport}",
            f"p50 created -> handler started ({transport})",
            "ms",
            percentile(agent, 50),
            f"{floor_name}: notify + 1 round trip + 1 fsync",
            percentile(perfect, 50),
            f"<= {P50_FACTOR}x floor",
            lambda v, r: r is not None and v <= P50_FACTOR * r,
            note,
            base_value=percentile(old, 50) if old else None,
            base_label=base_label,
        ),
        Measure(
            f"p99-{transport}",
            f"p99 created -> handler started ({transport})",
            "ms",
            percentile(agent, 99),
            f"{floor_name}, p99",
            percentile(perfect, 99),
            f"< {P99_MS:.0f} ms",
            lambda v, r: v < P99_MS,
            note,
            base_value=percentile(old, 99) if old else None,
            base_label=base_label,
        ),
        Measure(
            f"physical-p50-{transport}",
            f"p50 created -> handler started ({transport})",
            "ms",
            percentile(agent, 50),
            f"physical floor p50 ({physical_name}) + 1 fsync",
            percentile(physical, 50),
            note=note,
            base_value=percentile(old, 50) if old else None,
            base_label=base_label,
        ),
    ]
    first = timed["agent"].first
    if first is not None:
        base_first = timed["baseline"].first if "baseline" in timed else None
        result.append(
            Measure(
                f"first-{transport}",
                f"first job after start-up, created -> handler started ({transport})",
                "ms",
                first,
                f"{floor_name}, its first job",
                timed["perfect"].first,
                note=f"{note}; {FIRST_NOTE}",
                base_value=base_first,
                base_label=base_label,
            )
        )
    return result
