"""depth: the agent's CPU per job with 10, 100, 1,000 and 10,000 jobs queued behind it.

Issue 18's goal: flat within 20 % from 10 to 10,000 (an agent that decodes every pending job of
every `notify` pays per job in proportion to the queue, so draining a queue is quadratic).

The queue is held at its depth for the whole window: for each job that ends, the harness creates
one more (over the emulator's HTTP API, from a thread of its own), so every job of the window is
taken with D pending (the one it runs and D - 1 behind it). A plain drain of D jobs would average
D/2, and at D = 10 would be over in less CPU time than /proc's ticks resolve. The price, the
same at every depth: each new job sends the agent one more `notify` than a plain drain does (as
AWS does: a ListNotification is published whenever "a new job execution is queued", Jobs
notifications page, with no exception for a job queued behind 10 or 15 others; it carries at most
that many summaries, so its size does not grow with the depth).

Every depth's queue is filled first (one thing and one agent state directory per depth and tree),
then the window is taken in slices, in turn over the depths (and the baseline's agent), every other
turn backwards: start the agent (it resumes from its state), let 10 jobs end, count the next 50 (25
with --quick), stop it; 6 slices (4 with --quick), each figure the slices' median. Before, each
depth was one window taken after the previous depth's: on these shared 2-core machines the other
helpers' load moves from one second to the next, so one depth's window could fall in a busy second
and another's in a quiet one. On 2026-12-03 (load ~5, --quick) the same agent code (this tree and
main) measured 1.11x and 1.40x highest/lowest in one run, 2.04 and 2.52 ms at 10,000. Taken in
turn, a busy second falls on every depth alike, and the median drops a slice that met a burst;
filling first also keeps the emulator's size (every depth's pending jobs) the same for every slice,
so only the thing's own queue differs between depths. A slice's CPU is read from the kernel's
per-process clock (nanoseconds: harness.Cpu), so 50 jobs (~90 ms) are read exactly. If the refill
falls behind and the queue runs dry, the window stays open (its jobs are still counted) and the
note says so.

Agent: paho, the in-process no-op plugin (the cheapest job, where a per-depth cost shows most).
Reference: the same figure at depth 10 (ratio = cost at D / cost at 10). Emulator and broker are
processes of their own, as in `drain`; with `--baseline REF` the agent of REF runs each depth too.
"""

from __future__ import annotations

import asyncio
import json
import queue
import statistics
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from benchmarks.drain import DOCUMENTS, Bench, DrainWatcher, agent_process
from benchmarks.harness import Cpu, EmulatorProcess, Measure, Session, Tree, Watcher, wakeups

NAME = "depth"
HELP = "agent CPU per job at 10, 100, 1,000 and 10,000 queued jobs (queue held at its depth)"
MAX_RUNS = 2
FLAT = 1.2
"""Issue 18: flat within 20 %."""
T = TypeVar("T")


def sizes(session: Session, quick: bool) -> tuple[tuple[int, ...], int, int, int]:
    """Depths, slices per depth, jobs per slice, warm-up jobs per slice."""
    if session.smoke:
        return (10, 100), 2, 5, 2
    return (10, 100, 1000, 10000), (4 if quick else 6), (25 if quick else 50), 10


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

    def ended(self) -> None:
        self._queue.put(0)

    def _run(self) -> None:
        created = 0
        while self._queue.get() is not None:
            created += 1
            job_id = f"{self.thing}-refill-{created:06d}"
            self.emulator.create_jobs(self.thing, [job_id], DOCUMENTS["plugin"])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)


class Held:
    """One agent's thing with `depth` jobs queued, kept at that depth by a refill, for all the
    slices of a run."""

    def __init__(self, bench: Bench, who: str, tree: Tree, depth: int) -> None:
        self.bench = bench
        self.who = who
        self.depth = depth
        self.process = agent_process(
            bench.session, bench.broker, "paho", "plugin", f"{who}-{depth}", tree
        )
        self.refill: Refill | None = None
        self._feeder: Watcher | None = None
        self.slices: list[dict[str, float]] = []

    async def fill(self) -> None:
        """Queue `depth` jobs, then one more for each that ends, slices or not (a job ended
        between a slice's last count and the agent's stop would leave the queue one short)."""
        thing = self.process.thing
        ids = [f"{thing}-{i:05d}" for i in range(self.depth)]
        await asyncio.to_thread(self.bench.emulator.create_jobs, thing, ids, DOCUMENTS["plugin"])
        refill = self.refill = Refill(self.bench.emulator, thing)

        def head_moved(topic: str, payload: bytes) -> None:
            if json.loads(payload).get("execution"):
                refill.ended()

        self._feeder = Watcher(
            self.bench.broker, [f"$aws/things/{thing}/jobs/notify-next"], head_moved
        )

    async def slice(self, jobs: int, warmup: int) -> None:
        """Start the agent (it resumes from its state directory), let `warmup` jobs end, count
        the CPU of the next `jobs`, stop it."""
        bench, process = self.bench, self.process
        watcher = DepthWatcher(bench.broker, process.thing, warmup, window=jobs, refilled=True)
        watcher.pids = lambda: {
            "agent": process.pid,
            "emulator": bench.emulator.pid,
            "broker": bench.broker.pid,
        }
        try:
            await process.start()
            await asyncio.to_thread(watcher.wait, max(60.0, (warmup + jobs) / 2))
        finally:
            watcher.close()
            await process.stop()
        cpu, rate = watcher.per_job(jobs)
        self.slices.append(
            {
                "agent": 1000 * cpu["agent"].own,
                "emulator": 1000 * cpu["emulator"].own,
                "broker": 1000 * cpu["broker"].own,
                "rate": rate,
                "wakeups": (watcher.wakeups[-1] - watcher.wakeups[0]) / jobs,
                "dry": watcher.dry,
            }
        )

    def stop_refill(self) -> None:
        if self._feeder is not None:
            self._feeder.close()
        if self.refill is not None:
            self.refill.close()

    def close(self, warnings: set[str]) -> dict[str, float]:
        """Each figure's median over the slices (`dry`: their sum); the agent's warnings go to
        `warnings`."""
        warnings.update(f"{self.who} at {self.depth}: {w}" for w in self.process.warnings())
        figures = {k: statistics.median(s[k] for s in self.slices) for k in self.slices[0]}
        figures["dry"] = sum(s["dry"] for s in self.slices)
        return figures


def turns(held: list[T], slices: int) -> Iterator[T]:
    """`slices` turns over `held`, every other one backwards (10 -> 10,000 -> 10: a load that
    rises or falls through the run weighs on every depth alike)."""
    for turn in range(slices):
        yield from held if turn % 2 == 0 else reversed(held)


async def hold(
    bench: Bench, trees: list[Tree], depths: tuple[int, ...], slices: int, jobs: int, warmup: int
) -> tuple[dict[str, dict[int, dict[str, float]]], set[str]]:
    """Every depth's queue filled first, then the slices (`turns`)."""
    held = [
        Held(bench, who, tree, depth)
        for depth in depths
        for who, tree in zip(("now", "before"), trees, strict=False)
    ]
    warnings: set[str] = set()
    results: dict[str, dict[int, dict[str, float]]] = {"now": {}, "before": {}}
    try:
        for one in held:
            await one.fill()
        for one in turns(held, slices):
            await one.slice(jobs, warmup)
    finally:
        for one in held:
            one.stop_refill()
    for one in held:
        results[one.who][one.depth] = one.close(warnings)
    return results, warnings


async def run(session: Session, quick: bool) -> list[Measure]:
    depths, slices, jobs, warmup = sizes(session, quick)
    trees = session.trees()
    bench = Bench(session)
    try:
        results, warnings = await hold(bench, trees, depths, slices, jobs, warmup)
    finally:
        bench.close()
    base_label = f"agent of {trees[1].label}" if len(trees) > 1 else ""
    now, before = results["now"], results["before"]
    shallow = depths[0]
    note = (
        f"queue held at each depth for {slices} slices of {jobs} jobs (each after {warmup}"
        " warm-up jobs), taken in turn over the depths, each figure the slices' median; agent"
        " paho, no-op plugin; emulator CPU per job by depth: "
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
