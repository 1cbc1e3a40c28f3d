"""startup: exec -> first request, exec -> READY=1, and resident memory after start-up.

The agent is started as systemd would start a `Type=notify` service (NOTIFY_SOCKET set, a fresh
state directory each time) against a local broker and the emulator. A client watching the
thing's Jobs topics on the broker sees the agent's first request (of any operation) and the
service's first answer; the agent's RSS (VmRSS) is read one second after that answer, once the
start-up work has settled, with its anonymous part (smaps_rollup: what the process made itself,
not the shared libraries' pages). Both transports; bytecode is compiled beforehand
(harness.py), as an installed package has it.

Floor: Python's own (benchmarks/python_floor.py), measured the same way in the same run: the
imports an agent cannot do without (asyncio with ssl, json, sqlite3, structlog, yaml and the
transport's MQTT client), a connection, its subscriptions and the first request; and the bare
interpreter's RSS (in the notes). Issue 18's goals: RSS <= 29 MB with paho and <= 35 MB with
awscrt; start-up to the first request <= 0.15 s with paho. With `--baseline REF` the agent of REF
starts the same way, round by round.

Each agent is also measured restarted: a second start with the configuration and the state
directory of a first one that reached its first answer (a gateway's reboot or service restart,
where the daemon reads its file's kept parse back instead of loading PyYAML: agent/config_cache.py).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    AgentProcess,
    Broker,
    Measure,
    Session,
    Tree,
    Watcher,
    emulator,
    new_id,
    rss_mb,
    threads,
)

NAME = "startup"
HELP = "exec -> first request and READY=1, RSS after start-up, beside Python's floor"
RSS_GOAL_MB = {"paho": 29.0, "awscrt": 35.0}
FIRST_REQUEST_GOAL_S = 0.15
READY_GOAL_S = 1.0
_NOT_REQUESTS = ("/accepted", "/rejected", "/notify", "/notify-next")


def repeats(session: Session, quick: bool) -> tuple[int, float]:
    """Starts per process kind, and seconds between the first answer and the RSS reading."""
    if session.smoke:
        return 1, 0.2
    return (3 if quick else 5), 1.0


def floor_command(session: Session, broker: Broker, transport: str, thing: str) -> list[str]:
    python = session.current.python()
    command = [*python, "-m", "benchmarks.python_floor", transport, "--thing", thing]
    if transport == "awscrt":
        c = broker.certs
        command += ["--host", "localhost", "--port", str(broker.tls_port)]
        command += ["--ca", str(c.ca), "--cert", str(c.device_cert), "--key", str(c.device_key)]
    else:
        command += ["--host", broker.host, "--port", str(broker.port)]
    return command


class FirstMessages:
    """When the device's first request and the service's first answer crossed the broker."""

    def __init__(self, broker: Broker, thing: str) -> None:
        self.request: float | None = None
        self.answered = threading.Event()
        self._watcher = Watcher(broker, [f"$aws/things/{thing}/jobs/#"], self._message)

    def _message(self, topic: str, payload: bytes) -> None:
        if topic.endswith(("/accepted", "/rejected")):
            self.answered.set()
        elif not topic.endswith(_NOT_REQUESTS) and self.request is None:
            self.request = time.time()

    def close(self) -> None:
        self._watcher.close()


async def start_once(
    session: Session,
    broker: Broker,
    transport: str,
    who: str,
    tree: Tree | None,
    settle: float,
    *,
    restart: bool = False,
) -> dict[str, float]:
    """One start of the agent of `tree` (or of Python's floor when None). With `restart`, the
    start measured is the agent's second, with the configuration and state directory of a first
    start that reached its first answer and stopped: a gateway's reboot or service restart."""
    thing = new_id(f"start-{who}-{transport}")
    command = None if tree is not None else floor_command(session, broker, transport, thing)
    process = AgentProcess(
        broker,
        session.directory(f"startup-{who}-{transport}"),
        thing,
        transport,
        command=command,
        tree=tree or session.current,
    )
    if restart:
        await _first_start(broker, process, thing)
    first = FirstMessages(broker, thing)
    try:
        ready = await process.start()
        if not await asyncio.to_thread(first.answered.wait, 30):
            raise RuntimeError(f"{who} {transport}: no answer to a first request")
        await asyncio.sleep(settle)  # the RSS is read once start-up work has settled
        assert first.request is not None
        return {
            "first_request": first.request - process.started_at,
            "ready": ready,
            "rss": rss_mb(process.pid),
            "anonymous": anonymous_mb(process.pid),
            "threads": threads(process.pid),
        }
    finally:
        first.close()
        await process.stop()


async def _first_start(broker: Broker, process: AgentProcess, thing: str) -> None:
    first = FirstMessages(broker, thing)
    try:
        await process.start()
        if not await asyncio.to_thread(first.answered.wait, 30):
            raise RuntimeError(f"{thing}: no answer to a first request")
    finally:
        first.close()
        await process.stop()


def anonymous_mb(pid: int) -> float:
    """The part of a process's RSS that is its own (heap, Python's arenas, thread stacks), not
    pages of the files it maps (libpython, libcrypto, _awscrt), which other processes share
    and which the agent's code cannot shrink (/proc/PID/smaps_rollup)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Anonymous in smaps_rollup of {pid}")


async def bare_rss(session: Session) -> float:
    """The interpreter alone, once it has started (`python -S`, as the floors and agents)."""
    process = await asyncio.create_subprocess_exec(
        *session.current.python(),
        "-c",
        "import sys; sys.stdout.write('x'); sys.stdout.flush(); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    await process.stdout.readexactly(1)
    value = rss_mb(process.pid)
    process.stdin.close()
    await process.wait()
    return value


async def run(session: Session, quick: bool) -> list[Measure]:
    count, settle = repeats(session, quick)
    broker = session.broker()
    trees = session.trees()
    who: list[tuple[str, Tree | None]] = [("agent", trees[0]), ("floor", None)]
    if len(trees) > 1:
        who.insert(1, ("baseline", trees[1]))
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    # The service answers the first start-next, as the agent's start-up waits for it.
    async with emulator(broker):
        for _ in range(count):
            for transport in ("paho", "awscrt"):
                for name, tree in who:
                    sample = await start_once(session, broker, transport, name, tree, settle)
                    samples.setdefault((name, transport), []).append(sample)
                for name, tree in who:
                    if tree is not None:
                        sample = await start_once(
                            session, broker, transport, name, tree, settle, restart=True
                        )
                        samples.setdefault((f"{name}-restart", transport), []).append(sample)
    bare = await bare_rss(session)
    return figures(samples, count, bare, trees)


def figures(
    samples: dict[tuple[str, str], list[dict[str, float]]],
    count: int,
    bare: float,
    trees: list[Tree],
) -> list[Measure]:
    base_label = f"agent of {trees[1].label}" if len(trees) > 1 else ""
    measures = []
    for transport in ("paho", "awscrt"):
        measures += transport_figures(samples, transport, count, bare, base_label)
    return measures


def transport_figures(
    samples: dict[tuple[str, str], list[dict[str, float]]],
    transport: str,
    count: int,
    bare: float,
    base_label: str,
) -> list[Measure]:
    def median(who: str, key: str) -> float | None:
        values = samples.get((who, transport))
        return statistics.median(v[key] for v in values) if values else None

    floor = f"Python's floor ({transport}: imports, connect, subscribe, request)"
    note = (
        f"median of {count} starts per run; threads after start-up ({transport}): agent"
        f" {median('agent', 'threads'):.0f}, floor {median('floor', 'threads'):.0f}; bare"
        f" interpreter RSS {bare:.1f} MB"
    )

    def measure(
        key: str,
        label: str,
        unit: str,
        field: str,
        goal: str = "",
        check: Any = None,
        suffix: str = "",
    ) -> Measure:
        value = median(f"agent{suffix}", field)
        assert value is not None
        return Measure(
            f"{key}-{transport}",
            f"{label} ({transport})",
            unit,
            value,
            floor,
            median("floor", field),
            goal,
            check,
            note,
            base_value=median(f"baseline{suffix}", field),
            base_label=base_label,
        )

    rss_goal = RSS_GOAL_MB[transport]
    first_goal: tuple[str, Any] = (
        (f"<= {FIRST_REQUEST_GOAL_S} s", lambda v, r: v <= FIRST_REQUEST_GOAL_S)
        if transport == "paho"
        else ("", None)
    )
    return [
        measure("first-request", "exec -> first request", "s", "first_request", *first_goal),
        measure(
            "ready",
            "exec -> READY=1",
            "s",
            "ready",
            f"< {READY_GOAL_S:.0f} s",
            lambda v, r: v < READY_GOAL_S,
        ),
        measure(
            "rss",
            "RSS after start-up",
            "MB",
            "rss",
            f"<= {rss_goal:.0f} MB",
            lambda v, r: v <= rss_goal,
        ),
        measure("rss-anonymous", "anonymous part of that RSS", "MB", "anonymous"),
        # A restart with the configuration unchanged (the state directory of the first start
        # kept): what a gateway's reboot or service restart costs, the parse of the file kept.
        measure(
            "first-request-restart",
            "exec -> first request, restarted with the same configuration",
            "s",
            "first_request",
            suffix="-restart",
        ),
        measure(
            "rss-restart",
            "RSS after a restart with the same configuration",
            "MB",
            "rss",
            suffix="-restart",
        ),
    ]
