"""fleet: `jobs-agent sim fleet --things N`, one job for all N things, until all SUCCEEDED.

The fleet (N engines, each its own MQTT connection, thing name and SQLite store) is one
`jobs-agent sim fleet` process; the emulator runs in this process (its own paho client) and the
job is created through its HTTP API, so the fleet process holds only devices. Figures: the time
from creating the job to the last SUCCEEDED, the emulator's request rate over that time, and the
fleet process's peak RSS.

Floor: the same broker serving the same number of requests (3 per device: start-next at
start-up, start-next on notify, the final update) as back-to-back raw paho round trips.

Size: 1,000 things in one process (200 with --quick). `BENCH_FLEET_THINGS` and
`BENCH_FLEET_PROCESSES` (environment) measure another size, e.g. 10,000 things over 2 processes
(`sim fleet --processes 2`: the RSS is then the sum over the fleet's processes); mosquitto
takes one descriptor per thing under the limit it inherits.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from benchmarks.harness import (
    Measure,
    Session,
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


async def run(session: Session, quick: bool) -> list[Measure]:
    things = int(os.environ.get("BENCH_FLEET_THINGS", 200 if quick else 1000))
    processes = int(os.environ.get("BENCH_FLEET_PROCESSES", 1))
    broker = session.broker()
    directory = session.directory("fleet")
    async with emulator(broker, http_port=0) as emu:
        before = sum(emu.service.counters.values())
        command = [
            *jobs_agent_command(),
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
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=(directory / "fleet.log").open("wb"),
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 600)
        served = sum(emu.service.counters.values()) - before
    if process.returncode != 0:
        raise RuntimeError(
            f"sim fleet failed ({process.returncode}):\n{(directory / 'fleet.log').read_text()}"
        )
    summary = json.loads(stdout)
    rollout = summary["rollout_seconds"]
    floor = await floor_seconds(session, summary["requests"])
    note = (
        f"N = {things}, {processes} process(es); connect {summary['connect_seconds']:.1f} s;"
        f" {summary['threads']} threads;"
        f" {served} requests served by the emulator in all"
    )
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
        ),
    ]
