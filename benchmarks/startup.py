"""startup: process start to READY=1 on an sd_notify socket, against a local broker.

The agent is started as systemd would start a `Type=notify` service: NOTIFY_SOCKET set, the clock
running from the exec to the READY=1 datagram (sent once connected and subscribed). Both
transports; a fresh state directory each time.

Floor: a raw paho client process (benchmarks/raw.py `ready`): interpreter start, import paho,
connect, subscribe, READY=1.
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.harness import AgentProcess, Broker, Measure, Session, emulator, new_id

NAME = "startup"
HELP = "process start -> READY=1 (sd_notify), awscrt and paho, beside a raw paho process"


async def run(session: Session, quick: bool) -> list[Measure]:
    repeats = 3 if quick else 5
    broker = session.broker()
    times: dict[str, list[float]] = {"paho": [], "awscrt": [], "floor": []}
    # The service answers the agent's first start-next, so a stop right after READY is quick
    # (the engine sends that request even when the stop came first; see the report).
    async with emulator(broker):
        await _measure(session, broker, repeats, times)
    return await _results(times, repeats)


async def _measure(
    session: Session, broker: Broker, repeats: int, times: dict[str, list[float]]
) -> None:
    for _ in range(repeats):
        for transport in ("paho", "awscrt", "floor"):
            thing = new_id(f"start-{transport}")
            directory = session.directory(f"startup-{transport}")
            command = None
            if transport == "floor":
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.raw",
                    "ready",
                    "--port",
                    str(broker.port),
                ]
            agent = AgentProcess(
                broker,
                directory,
                thing,
                "paho" if transport == "floor" else transport,
                command=command,
            )
            try:
                times[transport].append(await agent.start())
            finally:
                await agent.stop()


async def _results(times: dict[str, list[float]], repeats: int) -> list[Measure]:
    floor = statistics.median(times["floor"])
    return [
        Measure(
            f"ready-{transport}",
            f"exec -> READY=1 ({transport})",
            "s",
            statistics.median(times[transport]),
            "floor: raw paho process to READY=1",
            floor,
            "< 1 s",
            lambda v, r: v < 1.0,
            note=f"median of {repeats} starts per run",
        )
        for transport in ("awscrt", "paho")
    ]
