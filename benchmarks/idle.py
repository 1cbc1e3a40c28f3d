"""idle: what the agent costs while it waits: memory, CPU, and messages on the wire.

Both transports run side by side (an agent each, same broker, same idle window): RSS after
start-up and after 1,000 jobs (in batches of 50, so the queue stays short), then CPU seconds and
control packets the broker received from each agent over 60 idle seconds (10 with --quick).
Packets are counted on the broker side (mosquitto's debug log names the client of every packet).
The agents run with the default keep-alive (1200 s), so a PINGREQ is not expected in the window;
the engine's periodic look for work (a start-next every 30 s, so a lost notification cannot strand
a queued job) is expected.

Floor for memory: a Python process that imported what an agent cannot do without for that
transport and nothing else (benchmarks/python_floor.py's list), measured here in the same run.
The limits are issue 18's (the startup benchmark measures start-up memory against the floor
process that also connects).
"""

from __future__ import annotations

import asyncio
import collections
import time

from benchmarks.harness import (
    AgentProcess,
    Measure,
    Session,
    cpu_seconds,
    emulator,
    new_id,
    rss_mb,
)
from benchmarks.python_floor import COMMON, IMPORTS

NAME = "idle"
HELP = "RSS after start-up and 1,000 jobs, CPU and MQTT packets over 60 idle seconds"
MAX_RUNS = 2
BATCH = 50
RSS_LIMIT_MB = {"awscrt": 35.0, "paho": 29.0}


async def imports_rss(session: Session, transport: str) -> float:
    code = (
        f"import {', '.join(COMMON + IMPORTS[transport])}; import sys;"
        " sys.stdout.write('x'); sys.stdout.flush(); sys.stdin.read()"
    )
    process = await asyncio.create_subprocess_exec(
        *session.current.python(),
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=session.current.env(),
    )
    assert process.stdout is not None and process.stdin is not None
    await process.stdout.readexactly(1)
    value = rss_mb(process.pid)
    process.stdin.close()
    await process.wait()
    return value


async def run(session: Session, quick: bool) -> list[Measure]:
    jobs = 200 if quick else 1000
    window = 10.0 if quick else 60.0
    broker = session.broker(packet_log=True)
    results: dict[str, dict[str, float]] = collections.defaultdict(dict)
    async with emulator(broker) as emu:
        agents = {
            transport: AgentProcess(
                broker,
                session.directory(f"idle-{transport}"),
                new_id(f"idle-{transport}"),
                transport,
                handlers={"noop": "benchmarks.handlers:Noop"},
                tree=session.current,
            )
            for transport in ("paho", "awscrt")
        }
        try:
            for agent in agents.values():
                await agent.start()
            await asyncio.sleep(1.0)  # let start-up work (first start-next, imports) settle
            for transport, agent in agents.items():
                results[transport]["rss_start"] = rss_mb(agent.pid)
            for transport, agent in agents.items():
                for first in range(0, jobs, BATCH):
                    ids = [
                        f"idle-{transport}-{i:05d}" for i in range(first, min(first + BATCH, jobs))
                    ]
                    for job_id in ids:
                        emu.service.create_job(job_id, [agent.thing], {"operation": "noop"})
                    await emu.service.wait_for_status(ids[-1], agent.thing, "SUCCEEDED", timeout=60)
            await asyncio.sleep(1.0)  # the last reports and the follow-up start-next
            start = time.time()
            cpu = {t: cpu_seconds(a.pid) for t, a in agents.items()}
            for transport, agent in agents.items():
                results[transport]["rss_after"] = rss_mb(agent.pid)
            await asyncio.sleep(window)  # the idle window itself is what is measured
            for transport, agent in agents.items():
                results[transport]["cpu"] = cpu_seconds(agent.pid) - cpu[transport]
                packets = broker.packets_from(agent.thing, since=start)
                results[transport]["packets"] = len(packets)
                results[transport]["kinds"] = " ".join(
                    f"{n}x{kind}" for kind, n in collections.Counter(packets).items()
                )  # type: ignore[assignment]
        finally:
            for agent in agents.values():
                await agent.stop()
    measures: list[Measure] = []
    for transport, limit in RSS_LIMIT_MB.items():
        r = results[transport]
        floor = await imports_rss(session, transport)
        kinds = r["kinds"] or "none"
        measures += [
            Measure(
                f"rss-start-{transport}",
                f"RSS after start-up ({transport})",
                "MB",
                r["rss_start"],
                "floor: its imports alone",
                floor,
                f"<= {limit:.0f} MB",
                lambda v, ref, limit=limit: v <= limit,
            ),
            Measure(
                f"rss-after-{transport}",
                f"RSS after {jobs} jobs ({transport})",
                "MB",
                r["rss_after"],
                "after start-up (same run)",
                r["rss_start"],
                f"<= {limit:.0f} MB, growth within noise (+2 MB)",
                lambda v, ref, limit=limit: v <= limit and ref is not None and v - ref <= 2.0,
            ),
            Measure(
                f"cpu-{transport}",
                f"CPU while idle ({transport})",
                "%",
                100 * r["cpu"] / window,
                "",
                None,
                "< 0.1 %",
                lambda v, ref: v < 0.1,
                note=f"idle window {window:.0f} s",
            ),
            Measure(
                f"packets-{transport}",
                f"MQTT packets sent while idle ({transport}), per minute",
                "/min",
                r["packets"] * 60 / window,
                "",
                None,
                "keep-alives only",
                None,
                note=f"{transport} packets in {window:.0f} s: {kinds}",
            ),
        ]
    return measures
