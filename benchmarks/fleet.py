"""fleet: `jobs-agent sim fleet --things N`, one job for all N things, until all SUCCEEDED.

The fleet (N engines, each its own MQTT connection, thing name and SQLite store) is one
`jobs-agent sim fleet` process; the emulator runs in this process (its own paho client) and the
job is created through its HTTP API, so the fleet process holds only devices. Figures: the time
from creating the job to the last SUCCEEDED, the emulator's request rate over that time, and the
fleet process's peak RSS. The job is created once every device has looked for work (its
start-up requests, timed apart as "first look"): the rollout's time and requests are the job's
own. A `--baseline` from before round 12 created it as soon as the devices had connected, so
its rollout also holds part of their start-up, and its first look reads 0.

Floor: the same broker serving the same number of requests (the rollout's own, 2 per device
since round 13: the start-next that takes the job and the final update; the job's other events
ask for no look, engine/wakes.py) as back-to-back raw paho round trips.

Size: 1,000 things in one process (200 with --quick). `BENCH_FLEET_THINGS` and
`BENCH_FLEET_PROCESSES` (environment) measure another size, e.g. 10,000 things over 2 processes
(`sim fleet --processes 2`: the RSS is then the sum over the fleet's processes); mosquitto
takes one descriptor per thing under the limit it inherits.

With `--baseline REF` the same fleet of REF's `jobs-agent` runs after this checkout's, on the
same broker and emulator: the 'before' column. Both then run as trees (`python -S`, see
`harness.Tree`). The fleet's CPU per thing (user + system of the fleet process and its workers,
from the rusage of reaped children) is the figure of issue 18's "flat per thing" goal: it counts
connecting and the rollout, and does not move with the broker's or the emulator's share of two
loaded cores as the wall-clock times do.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from typing import Any

from benchmarks.harness import (
    Broker,
    Measure,
    Session,
    Tree,
    emulator,
    jobs_agent_command,
    new_id,
    raw_device,
    responder,
)

NAME = "fleet"
HELP = "sim fleet: N engines in one process, one job for all, time to all SUCCEEDED"


async def floor_seconds(session: Session, requests: int) -> float:
    broker = session.broker()
    async with responder(broker):
        device = await asyncio.to_thread(raw_device, broker)
        try:
            started = time.perf_counter()
            await asyncio.to_thread(lambda: [device.round_trip() for _ in range(requests)])
            return time.perf_counter() - started
        finally:
            device.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def fleet_run(
    broker: Broker, emu: Any, session: Session, tree: Tree | None, things: int, processes: int
) -> dict[str, Any]:
    """One `sim fleet` (of `tree`; None: the installed checkout) on `emu`: its JSON summary,
    plus `served` (requests the emulator served) and `cpu_seconds` (the fleet's processes)."""
    label = "current" if tree is None else tree.label.replace("/", "-")
    directory = session.directory(f"fleet-{label}")
    before = sum(emu.service.counters.values())
    command = [
        *(jobs_agent_command() if tree is None else tree.jobs_agent()),
        "sim",
        "fleet",
        "--things",
        str(things),
        "--prefix",
        new_id("fl") + "-",
        "--broker-port",
        str(broker.port),
        "--endpoint",
        str(emu.http_endpoint),
        "--state-dir",
        str(directory / "state"),
        "--progress-interval",
        "0",
        "--json",
        *(["--processes", str(processes)] if processes > 1 else []),
    ]
    cpu_before = children_cpu()
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=(directory / "fleet.log").open("wb"),
        env=None if tree is None else tree.env(),
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 600)
    cpu = children_cpu() - cpu_before  # nothing else of this process ends meanwhile
    served = sum(emu.service.counters.values()) - before
    if process.returncode != 0:
        raise RuntimeError(
            f"sim fleet ({label}) failed ({process.returncode}):\n"
            f"{(directory / 'fleet.log').read_text()}"
        )
    summary: dict[str, Any] = json.loads(stdout)
    summary.update(served=served, cpu_seconds=cpu)
    return summary


async def run(session: Session, quick: bool) -> list[Measure]:
    things = int(os.environ.get("BENCH_FLEET_THINGS", 200 if quick else 1000))
    processes = int(os.environ.get("BENCH_FLEET_PROCESSES", 1))
    base = session.baseline_tree()
    broker = session.broker()
    async with emulator(broker, http_port=0) as emu:
        # With a baseline both run as trees, started the same way.
        now_tree = session.current if base else None
        summary = await fleet_run(broker, emu, session, now_tree, things, processes)
        old = await fleet_run(broker, emu, session, base, things, processes) if base else None
    rollout = summary["rollout_seconds"]
    floor = await floor_seconds(session, summary["requests"])
    base_label = f"sim fleet of {base.label}" if base else ""

    def note_of(s: dict[str, Any]) -> str:
        return (
            f"connect {s['connect_seconds']:.1f} s; {s['threads']} threads;"
            f" {s['served']} requests served by the emulator in all"
        )

    note = f"N = {things}, {processes} process(es); " + note_of(summary)
    if old is not None:
        note += f"; {base_label}: " + note_of(old)

    def before(key: str) -> float | None:
        return None if old is None else float(old[key])

    return [
        Measure(
            "rollout",
            f"job created -> all {things} SUCCEEDED",
            "s",
            rollout,
            "floor: same number of raw round trips",
            floor,
            "< 30 s for N = 1000" if things == 1000 else "",
            (lambda v, r: v < 30) if things == 1000 else None,
            note,
            base_value=before("rollout_seconds"),
            base_label=base_label,
        ),
        Measure(
            "connect",
            f"connecting {things} things",
            "s",
            summary["connect_seconds"],
            note=note,
            base_value=before("connect_seconds"),
            base_label=base_label,
        ),
        Measure(
            "first-look",
            f"{things} things looking for work (after connecting, before the job)",
            "s",
            summary.get("first_look_seconds", 0.0),
            note=note,
            base_value=None if old is None else old.get("first_look_seconds"),
            base_label=base_label,
        ),
        Measure(
            "cpu",
            "fleet CPU per thing (connect + rollout)",
            "ms",
            1000 * summary["cpu_seconds"] / things,
            note=note,
            base_value=None if old is None else 1000 * old["cpu_seconds"] / things,
            base_label=base_label,
        ),
        Measure(
            "rate",
            "emulator requests per second during the rollout",
            "req/s",
            summary["requests"] / rollout,
            "floor: raw round trips per second",
            summary["requests"] / floor,
            "",
            None,
            note,
            base_value=None if old is None else old["requests"] / old["rollout_seconds"],
            base_label=base_label,
        ),
        Measure(
            "rss",
            f"fleet process peak RSS (N = {things})",
            "MB",
            summary["peak_rss_mb"],
            "",
            None,
            "",
            None,
            note,
            base_value=before("peak_rss_mb"),
            base_label=base_label,
        ),
    ]
