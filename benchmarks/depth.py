"""depth: the agent's CPU per job with 10, 100, 1,000 and 10,000 jobs queued behind it.

Issue 18's goal: flat within 20 % from 10 to 10,000 (an agent that decodes every pending job of
every `notify` pays per job in proportion to the queue, so draining a queue is quadratic).

The queue is held at its depth for the whole window: for each job that ends, the harness creates
one more (over the emulator's HTTP API, from a thread of its own), so every job of the window is
taken with D pending (the one it runs and D - 1 behind it). A plain drain of D jobs would average
D/2, and at D = 10 would be over in less CPU time than /proc's clock resolves. The price, the
same at every depth: each new job sends the agent one more `notify` than a plain drain does (as
AWS does: a ListNotification is published whenever "a new job execution is queued", Jobs
notifications page, with no exception for a job queued behind 10 or 15 others; it carries at most
that many summaries, so its size does not grow with the depth). The D jobs are queued before
the agent starts (and refilled from its first job on); the window opens when the 10th job has
ended and closes K jobs later (300; 100 with --quick), read from `notify-next` by a watching
client, as in `drain`. If the refill falls behind and the queue runs dry, the window stays open
(its jobs are still counted) and the note says so.

Agent: paho, the in-process no-op plugin (the cheapest job, where a per-depth cost shows most).
Reference: the same figure at depth 10 (ratio = cost at D / cost at 10). Emulator and broker are
processes of their own, as in `drain`; with `--baseline REF` the agent of REF runs each depth too.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from benchmarks.drain import DOCUMENTS, Bench, DrainWatcher, agent_process
from benchmarks.harness import Cpu, EmulatorProcess, Measure, Session, Tree, wakeups

NAME = "depth"
HELP = "agent CPU per job at 10, 100, 1,000 and 10,000 queued jobs (queue held at its depth)"
MAX_RUNS = 2
FLAT = 1.2
"""Issue 18: flat within 20 %."""


def sizes(session: Session, quick: bool) -> tuple[tuple[int, ...], int, int]:
    """Depths, jobs in the window, jobs before it."""
    if session.smoke:
        return (10, 100), 10, 2
    return (10, 100, 1000, 10000), (100 if quick else 300), 10


class DepthWatcher(DrainWatcher):
    """The drain's watcher, also reading the agent's wake-ups when the window opens and closes:
    the rhythm beside the CPU (an agent woken more often per job pays more loop turns and reads
    for the same work), so a run whose CPU rises at one depth says whether its rhythm did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wakeups: list[int] = []

    def _sample(self) -> tuple[float, dict[str, Cpu]]:
        sample = super()._sample()
        self.wakeups.append(wakeups(self.pids()["agent"]))
        return sample


class Refill:
    """Creates one job for each job that ends, in a thread of its own (the watcher's callback
    must not wait on HTTP)."""

    def __init__(self, emulator: EmulatorProcess, thing: str) -> None:
        self.emulator = emulator
        self.thing = thing
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="refill", daemon=True)
        self._thread.start()

    def ended(self, count: int) -> None:
        self._queue.put(count)

    def _run(self) -> None:
        while (count := self._queue.get()) is not None:
            job_id = f"{self.thing}-refill-{count:06d}"
            self.emulator.create_jobs(self.thing, [job_id], DOCUMENTS["plugin"])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)


async def at_depth(
    bench: Bench, who: str, tree: Tree, depth: int, window: int, warmup: int, warnings: set[str]
) -> dict[str, float]:
    """Agent, emulator and broker CPU ms per job and jobs/s with `depth` pending; what the
    agent logged as warnings goes to `warnings`."""
    process = agent_process(bench.session, bench.broker, "paho", "plugin", f"{who}-{depth}", tree)
    thing = process.thing
    ids = [f"{thing}-{i:05d}" for i in range(depth)]
    await asyncio.to_thread(bench.emulator.create_jobs, thing, ids, DOCUMENTS["plugin"])
    refill = Refill(bench.emulator, thing)
    watcher = DepthWatcher(
        bench.broker, thing, warmup, window=window, on_ended=refill.ended, refilled=True
    )
    watcher.pids = lambda: {
        "agent": process.pid,
        "emulator": bench.emulator.pid,
        "broker": bench.broker.pid,
    }
    try:
        await process.start()
        await asyncio.to_thread(watcher.wait, max(60.0, (warmup + window) / 2))
    finally:
        watcher.close()
        refill.close()
        await process.stop()
    cpu, rate = watcher.per_job(window)
    warnings.update(f"{who} at {depth}: {w}" for w in process.warnings())
    return {
        "agent": 1000 * cpu["agent"].own,
        "emulator": 1000 * cpu["emulator"].own,
        "broker": 1000 * cpu["broker"].own,
        "rate": rate,
        "wakeups": (watcher.wakeups[-1] - watcher.wakeups[0]) / window,
        "dry": watcher.dry,
    }


async def run(session: Session, quick: bool) -> list[Measure]:
    depths, window, warmup = sizes(session, quick)
    trees = session.trees()
    bench = Bench(session)
    results: dict[str, dict[int, dict[str, float]]] = {"now": {}, "before": {}}
    warnings: set[str] = set()
    try:
        for depth in depths:
            results["now"][depth] = await at_depth(
                bench, "agent", trees[0], depth, window, warmup, warnings
            )
            if len(trees) > 1:
                results["before"][depth] = await at_depth(
                    bench, "baseline", trees[1], depth, window, warmup, warnings
                )
    finally:
        bench.close()
    base_label = f"agent of {trees[1].label}" if len(trees) > 1 else ""
    now, before = results["now"], results["before"]
    shallow = depths[0]
    note = (
        f"queue held at each depth for {window} jobs after {warmup} warm-up jobs; agent paho,"
        " no-op plugin; emulator CPU per job by depth: "
        + ", ".join(f"{d}: {now[d]['emulator']:.2f} ms" for d in depths)
        + "; agent wake-ups per job by depth: "
        + ", ".join(f"{d}: {now[d]['wakeups']:.1f}" for d in depths)
        + (f"; warnings logged: {sorted(warnings)}" if warnings else "")
        + "".join(
            f"; at {d} queued the queue ran dry {now[d]['dry']:.0f} time(s) (the refill fell"
            " behind)"
            for d in depths
            if now[d]["dry"]
        )
    )

    def measure(key: str, label: str, unit: str, depth: int, goal: str, check: Any) -> Measure:
        reference = depth != shallow
        return Measure(
            f"{key}-{depth}",
            f"{label}, {depth} queued",
            unit,
            now[depth]["agent" if key == "cpu" else key],
            f"the same at {shallow} queued" if reference else "",
            now[shallow]["agent" if key == "cpu" else key] if reference else None,
            goal if reference else "",
            check if reference else None,
            note,
            base_value=before[depth]["agent" if key == "cpu" else key] if before else None,
            base_label=base_label,
        )

    measures = []
    for depth in depths:
        measures.append(
            measure(
                "cpu",
                "agent CPU per job",
                "ms",
                depth,
                f"within {100 * (FLAT - 1):.0f} % of {shallow} queued",
                lambda v, r: r is not None and 1 / FLAT <= v / r <= FLAT,
            )
        )
    for depth in depths:
        measures.append(measure("rate", "drain rate", "jobs/s", depth, "", None))

    def spread(results: dict[int, dict[str, float]]) -> float:
        values = [results[d]["agent"] for d in depths]
        return max(values) / min(values)

    measures.append(
        Measure(
            "spread",
            f"agent CPU per job, highest / lowest over {', '.join(map(str, depths))} queued",
            "x",
            spread(now),
            goal=f"<= {FLAT:.2f}",
            check=lambda v, r: v <= FLAT,
            note=note,
            base_value=spread(before) if before else None,
            base_label=base_label,
        )
    )
    return measures
