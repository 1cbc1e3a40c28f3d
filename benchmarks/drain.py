"""drain: what a queued job costs the agent, the emulator and the broker, and how fast a queue
empties, per transport and per job kind, beside the perfect agent on the same emulator and broker.

Transports: paho and awscrt (mTLS) through mosquitto, and the in-process local bus. Job kinds:
an in-process Python plugin (benchmarks.handlers:Noop) and a script run through a Device Client
`runHandler` document (`#!/bin/sh` + `exit 0`, from the agent's handler directory).

Through mosquitto the emulator is a `jobs-agent sim serve` process and the agent a `jobs-agent run`
process: three processes whose CPU time (user + system, from /proc) is read at the two ends of the
window. The jobs are queued over the emulator's HTTP API before the agent starts; the window opens
when the 10th job has ended (start-up, the first start-next and lazy imports stay out) and closes
when `notify-next` says the queue is empty, both learnt from the broker by a watching client (the
measurement costs the emulator nothing). Per job: CPU of each process, the handler processes' own
CPU (reaped children), jobs/s; and the agent's peak RSS (VmHWM). On the local bus the agent and
the emulator share a process: see benchmarks/local_drain.py for how their CPU is told apart.

On the local bus the drain also counts the instructions per job of each agent (callgrind, in a
drain of its own: benchmarks/instructions.py), a figure the machine's speed does not move.

Floor: the perfect agent (benchmarks/perfect.py: the two requests, two fsyncs and, for a script,
one fork/exec per job, nothing else), run the same way against the same emulator and broker.
With `--baseline REF` the agent of REF drains the same queue in the same round; who drains first
alternates from round to round (benchmarks/turns.py), and the notes say the order of each round.

The queue here is modest (500 plugin or 200 script jobs): what the agent pays for a deep queue is
the `depth` benchmark's question.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import instructions
from benchmarks.harness import (
    REPO,
    AgentProcess,
    Broker,
    Cpu,
    EmulatorProcess,
    Measure,
    Session,
    Tree,
    Watcher,
    cpu_sample,
    log_warnings,
    new_id,
    peak_rss_mb,
)
from benchmarks.turns import name, order, order_note

NAME = "drain"
HELP = "CPU per job (agent, emulator, broker), peak RSS and jobs/s per transport and job kind"
MAX_RUNS = 2
TRANSPORTS = ("paho", "awscrt", "local")
KINDS = ("plugin", "script")
AGENT_GOAL_MS = {"plugin": 1.5, "script": 4.0}
EMULATOR_GOAL_MS = 1.5
SCRIPT = "noop.sh"
DOCUMENTS: dict[str, dict[str, Any]] = {
    "plugin": {"operation": "noop"},
    "script": {
        "version": "1.0",
        "steps": [{"action": {"name": "noop", "type": "runHandler", "input": {"handler": SCRIPT}}}],
    },
}
PLUGINS = {"noop": "benchmarks.handlers:Noop"}
JOBS_CONFIG = {"progress_interval_seconds": 5}


def counts(session: Session, quick: bool) -> tuple[dict[str, int], int]:
    """Jobs in the window per kind, and jobs before it."""
    if session.smoke:
        return {"plugin": 12, "script": 6}, 2
    if quick:
        return {"plugin": 200, "script": 100}, 10
    return {"plugin": 500, "script": 200}, 10


@dataclass
class Result:
    """One drain's figures, per job."""

    agent_ms: float
    emulator_ms: float
    broker_ms: float | None
    children_ms: float
    rate: float
    peak_rss_mb: float
    warnings: list[str]
    agent_instructions: float | None = None
    """Thousands per job (local bus only, counted in a drain of its own under callgrind)."""
    emulator_instructions: float | None = None


class DrainWatcher:
    """Counts ended jobs from `notify-next` (one per job: the head moves on when a job ends) and
    samples the processes' CPU when the window opens (the `warmup`-th ended job) and closes (the
    queue is empty, or `window` more jobs have ended). `on_ended` is called per ended job.

    With `refilled` (the depth benchmark: one job is created for each that ends) an empty queue
    does not close the window: it means the refill fell behind, and closing there would divide
    the CPU of the jobs that did end by `window` (at 10 queued it happened 2 runs in 12 on a
    loaded machine, 8 jobs into the window). `dry` counts those moments inside the window."""

    def __init__(
        self,
        broker: Broker,
        thing: str,
        warmup: int,
        window: int | None = None,
        on_ended: Any = None,
        refilled: bool = False,
    ) -> None:
        self.warmup = warmup
        self.window = window
        self.on_ended = on_ended
        self.refilled = refilled
        self.dry = 0
        self.pids: Any = dict
        """Called at each sample: the pids to read, by name (read then: a pid is known only
        once its process is spawned, and the window may open right after READY)."""
        self.ended = 0
        self.start: tuple[float, dict[str, Cpu]] | None = None
        self.end: tuple[float, dict[str, Cpu]] | None = None
        self.done = threading.Event()
        self._watcher = Watcher(broker, [f"$aws/things/{thing}/jobs/notify-next"], self._message)

    def _sample(self) -> tuple[float, dict[str, Cpu]]:
        return time.monotonic(), {name: cpu_sample(pid) for name, pid in self.pids().items()}

    def _message(self, topic: str, payload: bytes) -> None:
        if self.end is not None:
            return
        if json.loads(payload).get("execution"):
            self.ended += 1
            if self.ended == self.warmup:
                self.start = self._sample()
            if self.on_ended is not None:
                self.on_ended(self.ended)
            if self.window is not None and self.ended == self.warmup + self.window:
                self.end = self._sample()
                self.done.set()
        elif self.start is not None:
            if self.refilled:
                self.dry += 1
                return
            self.end = self._sample()
            self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise RuntimeError(f"drain not finished in {timeout:.0f} s ({self.ended} jobs ended)")

    def per_job(self, jobs: int) -> tuple[dict[str, Cpu], float]:
        """CPU per job of each process (seconds), and jobs/s, over the window."""
        assert self.start is not None and self.end is not None
        (t0, before), (t1, after) = self.start, self.end
        cpu = {name: after[name] - before[name] for name in before}
        return {n: Cpu(c.own / jobs, c.children / jobs) for n, c in cpu.items()}, jobs / (t1 - t0)

    def close(self) -> None:
        self._watcher.close()


class Bench:
    """One broker and one emulator process for all MQTT drains of a round (each drain has its own
    thing, and nothing else runs on them during a window)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.broker = session.broker()
        self.emulator = EmulatorProcess(self.broker, session.directory("drain-emulator"))
        self.emulator.start()

    def close(self) -> None:
        self.emulator.stop()


def perfect_command(
    session: Session, broker: Broker, transport: str, thing: str, directory: Path
) -> list[str]:
    """The perfect agent's command line: raw paho, plain TCP, or mTLS for the awscrt drains."""
    command = [*session.current.python(), "-m", "benchmarks.perfect", "--thing", thing]
    command += ["--state-dir", str(directory / "state")]
    command += ["--handler-dir", str(directory / "handlers")]
    if transport == "awscrt":
        c = broker.certs
        command += ["--host", "localhost", "--port", str(broker.tls_port)]
        command += ["--ca", str(c.ca), "--cert", str(c.device_cert), "--key", str(c.device_key)]
    else:
        command += ["--host", broker.host, "--port", str(broker.port)]
    return command


def agent_process(
    session: Session, broker: Broker, transport: str, kind: str, who: str, tree: Tree | None
) -> AgentProcess:
    """A `jobs-agent run` process of `tree`, or the perfect agent, with its handler directory."""
    thing = new_id(f"drain-{transport}-{kind}")
    directory = session.directory(f"drain-{who}-{transport}-{kind}")
    command = None if tree else perfect_command(session, broker, transport, thing, directory)
    process = AgentProcess(
        broker,
        directory,
        thing,
        transport,
        handlers=PLUGINS,
        jobs=JOBS_CONFIG,
        command=command,
        tree=tree or session.current,
    )
    script = directory / "handlers" / SCRIPT
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    return process


async def mqtt_drain(
    bench: Bench, transport: str, kind: str, who: str, tree: Tree | None, jobs: int, warmup: int
) -> Result:
    process = agent_process(bench.session, bench.broker, transport, kind, who, tree)
    thing = process.thing
    ids = [f"{thing}-{i:05d}" for i in range(warmup + jobs)]
    await asyncio.to_thread(bench.emulator.create_jobs, thing, ids, DOCUMENTS[kind])
    watcher = DrainWatcher(bench.broker, thing, warmup)
    watcher.pids = lambda: {
        "agent": process.pid,
        "emulator": bench.emulator.pid,
        "broker": bench.broker.pid,
    }
    try:
        await process.start()
        await asyncio.to_thread(watcher.wait, max(60.0, (warmup + jobs) / 2))
        peak = peak_rss_mb(process.pid)
    finally:
        watcher.close()
        await process.stop()
    cpu, rate = watcher.per_job(jobs)
    return Result(
        agent_ms=1000 * cpu["agent"].own,
        emulator_ms=1000 * cpu["emulator"].own,
        broker_ms=1000 * cpu["broker"].own,
        children_ms=1000 * cpu["agent"].children,
        rate=rate,
        peak_rss_mb=peak,
        warnings=process.warnings(),
    )


def local_arguments(
    session: Session, kind: str, who: str, jobs: int, warmup: int, suffix: str = ""
) -> tuple[list[str], Path]:
    """benchmarks/local_drain.py's arguments for a drain of `who`, and its directory."""
    directory = session.directory(f"drain-{who}-local-{kind}{suffix}")
    thing = new_id(f"drain-local-{kind}")
    config = {
        "thing_name": thing,
        "connection": {"transport": "local"},
        "jobs": {"handler_dir": str(directory / "handlers"), **JOBS_CONFIG},
        "handlers": PLUGINS,
        "state_dir": str(directory / "state"),
        "log": {"level": "warning", "format": "json"},
    }
    (directory / "handlers").mkdir()
    script = directory / "handlers" / SCRIPT
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    config_path = directory / "config.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    agent = "perfect" if who == "perfect" else "jobs-agent"
    arguments = ["--agent", agent, "--config", str(config_path), "--jobs", str(jobs)]
    arguments += ["--warmup", str(warmup), "--document", json.dumps(DOCUMENTS[kind])]
    return arguments, directory


async def local_drain(
    session: Session, kind: str, who: str, tree: Tree | None, jobs: int, warmup: int
) -> Result:
    """benchmarks/local_drain.py in a process of the agent's tree."""
    arguments, directory = local_arguments(session, kind, who, jobs, warmup)
    tree_of_process = tree or session.current
    command = [*tree_of_process.python(), "-m", "benchmarks.local_drain", *arguments]
    log_path = directory / "local.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=tree_of_process.env(),
            cwd=str(REPO),
        )
        out, _ = await asyncio.wait_for(process.communicate(), max(120.0, (warmup + jobs) / 2))
    if process.returncode != 0:
        raise RuntimeError(f"local drain failed:\n{log_path.read_text()[-3000:]}")
    figures = json.loads(out)
    return Result(
        agent_ms=1000 * figures["agent_cpu"] / jobs,
        emulator_ms=1000 * figures["emulator_cpu"] / jobs,
        broker_ms=None,
        children_ms=1000 * figures["children_cpu"] / jobs,
        rate=jobs / figures["seconds"],
        peak_rss_mb=figures["peak_rss_mb"],
        warnings=log_warnings(log_path),
    )


async def counted(
    session: Session, kind: str, who: str, tree: Tree | None, result: Result
) -> Result:
    """`result` with `who`'s instructions per job on the local bus (benchmarks/instructions.py),
    if callgrind could count them."""
    jobs, warmup = instructions.JOBS[kind], instructions.WARMUP
    arguments, directory = local_arguments(session, kind, who, jobs, warmup, "-callgrind")
    count = await instructions.count(tree or session.current, arguments, directory, jobs)
    if count is None:
        return result
    return replace(result, agent_instructions=count.agent, emulator_instructions=count.emulator)


async def one(
    session: Session,
    bench: Bench,
    transport: str,
    kind: str,
    who: str,
    tree: Tree | None,
    jobs: int,
    warmup: int,
) -> Result:
    if transport == "local":
        return await local_drain(session, kind, who, tree, jobs, warmup)
    return await mqtt_drain(bench, transport, kind, who, tree, jobs, warmup)


async def run(session: Session, quick: bool) -> list[Measure]:
    jobs, warmup = counts(session, quick)
    trees = session.trees()
    base = trees[1] if len(trees) > 1 else None
    round_number = session.next_round(NAME)
    who = order(round_number, base is not None)
    tree_of: dict[str, Tree | None] = {"agent": trees[0], "baseline": base, "perfect": None}
    bench = Bench(session)
    measures: list[Measure] = []
    not_counted = instructions.skipped(session.smoke)
    count_instructions = not not_counted and round_number == 1
    try:
        for transport in TRANSPORTS:
            for kind in KINDS:
                n = jobs[kind]
                args = (session, bench, transport, kind)
                drained = {w: await one(*args, w, tree_of[w], n, warmup) for w in who}
                uncut = ""
                if transport == "local" and count_instructions:
                    each = [counted(session, kind, w, tree_of[w], drained[w]) for w in who]
                    drained = dict(zip(who, await asyncio.gather(*each), strict=True))
                    missing = [w for w in who if drained[w].agent_instructions is None]
                    uncut = instructions.uncut([name(w, base) for w in missing])
                found = figures(
                    transport,
                    kind,
                    n,
                    warmup,
                    drained["agent"],
                    drained["perfect"],
                    drained.get("baseline"),
                    base,
                )
                for measure in found:
                    if transport == "local" and (not_counted or uncut):
                        measure.note += f"; {not_counted or uncut}"
                    measure.note += f"; {order_note(round_number, who, base, 'drained')}"
                measures += found
    finally:
        bench.close()
    return measures


def figures(
    transport: str,
    kind: str,
    jobs: int,
    warmup: int,
    now: Result,
    floor: Result,
    old: Result | None,
    base: Tree | None,
) -> list[Measure]:
    where = f"{kind}, {transport}"
    perfect = {
        "paho": "perfect agent (raw paho)",
        "awscrt": "perfect agent (raw paho, mTLS)",
        "local": "perfect agent (on the bus)",
    }[transport]
    note = f"{jobs} {kind} jobs per drain after {warmup} warm-up jobs ({transport})"
    base_label = f"agent of {base.label}" if base else ""
    if now.warnings:
        note += f"; the agent logged {len(now.warnings)} warning(s): {sorted(set(now.warnings))}"
    if old is not None and old.warnings:
        note += f"; the {base_label} logged {sorted(set(old.warnings))}"

    def measure(
        key: str,
        label: str,
        unit: str,
        field: str,
        goal: str = "",
        check: Any = None,
        beside_floor: bool = True,
    ) -> Measure:
        return Measure(
            f"{transport}-{kind}-{key}",
            f"{label}, {where}",
            unit,
            getattr(now, field),
            perfect if beside_floor else "",
            getattr(floor, field) if beside_floor else None,
            goal,
            check,
            note,
            base_value=None if old is None else getattr(old, field),
            base_label=base_label,
        )

    limit = AGENT_GOAL_MS[kind]
    result = [
        measure(
            "agent-cpu",
            "agent CPU per job",
            "ms",
            "agent_ms",
            f"<= {limit} ms",
            lambda v, r, limit=limit: v <= limit,
        ),
    ]
    if transport == "local":
        label = "emulator CPU per job (same process, timed)"
        result.append(measure("emulator-cpu", label, "ms", "emulator_ms"))
        if now.agent_instructions is not None:
            for part in ("agent", "emulator"):
                label = f"{part} instructions per job (callgrind)"
                row = measure(
                    f"{part}-instructions", label, "k instructions", f"{part}_instructions"
                )
                row.note += f"; {instructions.note(kind)}"
                result.append(row)
    else:
        result += [
            measure(
                "emulator-cpu",
                "emulator CPU per job",
                "ms",
                "emulator_ms",
                f"<= {EMULATOR_GOAL_MS} ms",
                lambda v, r: v <= EMULATOR_GOAL_MS,
            ),
            measure("broker-cpu", "broker CPU per job", "ms", "broker_ms"),
        ]
    if kind == "script":
        result.append(measure("script-cpu", "script processes' CPU per job", "ms", "children_ms"))
    result += [
        measure("rate", "drain rate", "jobs/s", "rate"),
        # On the bus, the process holds the emulator too: its peak says little of the agent.
        measure(
            "rss",
            "agent peak RSS" + (" (with its emulator)" if transport == "local" else ""),
            "MB",
            "peak_rss_mb",
            beside_floor=transport != "local",
        ),
    ]
    return result
