"""emulator-cost: what the emulator itself spends per job, apart from the agent and the broker.

The emulator runs as a real `jobs-agent sim serve` process in front of mosquitto; the agent is a
real `jobs-agent run` process (paho, no-op plugin) draining a queue of jobs created through the
emulator's HTTP API. Between the agent's READY and the `notify-next` that says the queue is
empty (seen by a watching MQTT client, so the measurement costs the emulator nothing), the CPU
time (user + system) of each of the three processes is divided by the number of jobs.

With `--baseline REF` (a git ref of this repository, e.g. `main` or a commit) the same drain is
also run against the emulator of REF (extracted with `git archive`, imported from there), the
two alternating round by round, so a change of the emulator is measured before and after in one
run: the baseline is the figure's reference and the ratio is new / old.

Issue 18's goal: the emulator spends at most 1.5 ms CPU per job, so it is never the bottleneck
of the agent's benchmarks (at 4.5 ms it capped any drain near 220 jobs/s on two cores).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from benchmarks.harness import (
    AgentProcess,
    Broker,
    EmulatorProcess,
    Measure,
    Session,
    Tree,
    Watcher,
    cpu_seconds,
    new_id,
)

NAME = "emulator-cost"
HELP = "CPU per job of the emulator (sim serve), the agent and the broker during a drain"
MAX_RUNS = 3
GOAL_MS = 1.5


def counts(quick: bool) -> int:
    return 200 if quick else 500


async def drain(session: Session, tree: Tree | None, count: int) -> dict[str, float]:
    """One drain of `count` queued no-op jobs; CPU ms per job of each process and jobs/s."""
    broker = session.broker()
    label = "current" if tree is None else tree.label
    directory = session.directory(f"emulator-cost-{label}")
    thing = new_id("cost")
    emulator = EmulatorProcess(broker, directory, tree)
    await asyncio.to_thread(emulator.start)
    agent = AgentProcess(
        broker,
        directory,
        thing,
        "paho",
        handlers={"noop": "benchmarks.handlers:Noop"},
        jobs={"progress_interval_seconds": 5},
        tree=session.current,
    )
    try:
        ids = [f"cost-{index:05d}" for index in range(count)]
        await asyncio.to_thread(emulator.create_jobs, thing, ids, {"operation": "noop"})
        watcher = QueueWatcher(broker, thing)
        try:
            await agent.start()
            before = [cpu_seconds(p) for p in (emulator.pid, agent.pid, broker.pid)]
            started = time.monotonic()
            if not await asyncio.to_thread(watcher.empty.wait, max(60.0, count / 5)):
                raise RuntimeError(f"drain through {label} did not finish")
            elapsed = time.monotonic() - started
        finally:
            watcher.close()
        after = [cpu_seconds(p) for p in (emulator.pid, agent.pid, broker.pid)]
        last = await asyncio.to_thread(
            emulator.call, "GET", f"/things/{thing}/jobs/cost-{count - 1:05d}"
        )
        assert last["execution"]["status"] == "SUCCEEDED", last
    finally:
        await agent.stop()
        await asyncio.to_thread(emulator.stop)
    ms = [1000 * (b - a) / count for a, b in zip(before, after, strict=True)]
    return {"emulator": ms[0], "agent": ms[1], "broker": ms[2], "rate": count / elapsed}


class QueueWatcher:
    """Learns that the thing's queue is empty from `notify-next` without an execution, as a
    device would: the broker fans the event out to one more subscriber, the emulator does no
    extra work (polling its HTTP API would count in its CPU)."""

    def __init__(self, broker: Broker, thing: str) -> None:
        self.empty = threading.Event()
        self._watcher = Watcher(broker, [f"$aws/things/{thing}/jobs/notify-next"], self._message)

    def _message(self, topic: str, payload: bytes) -> None:
        if "execution" not in json.loads(payload):
            self.empty.set()

    def close(self) -> None:
        self._watcher.close()


async def run(session: Session, quick: bool) -> list[Measure]:
    count = counts(quick)
    base = session.baseline_tree()
    current = await drain(session, None, count)
    old = await drain(session, base, count) if base is not None else None
    ref_label = f"emulator of {base.label} (same run)" if base is not None else ""
    note = f"{count} no-op plugin jobs, agent on paho, emulator = `jobs-agent sim serve`"

    def measure(key: str, label: str, unit: str, goal: str = "", check: Any = None) -> Measure:
        return Measure(
            key,
            label,
            unit,
            current[key],
            ref_label,
            None if old is None else old[key],
            goal,
            check,
            note,
        )

    return [
        measure(
            "emulator",
            "emulator CPU per job",
            "ms",
            f"<= {GOAL_MS} ms",
            lambda v, r: v <= GOAL_MS,
        ),
        measure("agent", "agent CPU per job", "ms"),
        measure("broker", "broker CPU per job", "ms"),
        measure("rate", "drain rate", "jobs/s"),
    ]
