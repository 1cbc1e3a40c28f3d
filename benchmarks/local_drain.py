"""One drain on the in-process local bus, in a process of its own; prints its figures as JSON.

`python -m benchmarks.local_drain --agent jobs-agent|perfect --config CONFIG --jobs N
--warmup W --document JSON` queues W + N jobs in an emulator on a `LocalBus`, then runs the agent
(`connection.transport: local`, the daemon given the bus's transport, as `jobs-agent demo` runs
it) or the perfect agent (benchmarks/perfect.py) on the same bus and loop until the queue is
empty. The window opens when the W-th job has ended (start-up and the first jobs' imports stay
out of it) and closes when `notify-next` says the queue is empty, as in the MQTT drains.

The agent and the emulator share one process and one event loop here, so their CPU is told apart
by timing: every callback of the emulator (and of the watcher that counts ended jobs) runs under
the thread's CPU clock, and that time is subtracted from the process's CPU time. What remains is
the agent's, its share of the event loop's own dispatching included. Their instructions are told
apart the same way (benchmarks/instructions.py): those callbacks are the process's only calls of
`operator.call`, and the window's two ends its only calls of `os.times()`. The jobs are created
before the agent subscribes: created while it runs, 1,000 `notify` events reached it in one
burst, more than its event queue then kept (it now coalesces them), and the clock of the old
in-harness local drain ran while the jobs were being created.

Run from the harness (benchmarks/drain.py) with PYTHONPATH choosing the tree, so `--baseline
REF` runs REF's agent and emulator here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import sys
import time
from pathlib import Path
from typing import Any

from jobs_agent.emulator.embedded import BusTransport, Emulator
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus


def peak_rss_mb() -> float:
    """VmHWM of this process (getrusage's ru_maxrss would carry the harness's over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Meter:
    """CPU seconds spent in the callbacks that are not the agent's."""

    def __init__(self) -> None:
        self.seconds = 0.0


class MeteredTransport(BusTransport):
    """A bus transport whose deliveries are timed on the thread's CPU clock, and made through
    `operator.call`: under callgrind, that C function's inclusive cost is their instructions
    (benchmarks/instructions.py; nothing else in the process calls it)."""

    def __init__(self, bus: LocalBus, client_id: str, meter: Meter) -> None:
        super().__init__(bus, client_id)
        self.meter = meter

    def _deliver(self, message: Message) -> None:
        started = time.thread_time()
        try:
            operator.call(super()._deliver, message)
        finally:
            self.meter.seconds += time.thread_time() - started


class Window:
    """Counts ended jobs from `notify-next`; samples the clocks at the W-th and at the empty
    queue."""

    def __init__(self, warmup: int, emulator: Meter, watcher: Meter) -> None:
        self.warmup = warmup
        self.emulator = emulator
        self.watcher = watcher
        self.ended = 0
        self.start: dict[str, float] | None = None
        self.end: dict[str, float] | None = None
        self.done = asyncio.Event()

    def sample(self) -> dict[str, float]:
        times = os.times()
        return {
            "wall": time.monotonic(),
            "cpu": time.process_time(),
            "emulator": self.emulator.seconds,
            "watcher": self.watcher.seconds,
            "children": times.children_user + times.children_system,
        }

    def on_message(self, message: Message) -> None:
        if json.loads(message.payload).get("execution"):
            self.ended += 1
            if self.ended == self.warmup:
                self.start = self.sample()
        elif self.end is None and self.start is not None:
            self.end = self.sample()
            self.done.set()


async def drain(args: argparse.Namespace) -> dict[str, Any]:
    from jobs_agent.config import load_config
    from jobs_agent.log import configure_logging

    configure_logging("warning", "json")  # to stderr, where the harness counts warnings
    config = load_config(Path(args.config))
    thing = config.thing_name
    emulator_meter, watcher_meter = Meter(), Meter()
    bus = LocalBus()
    emulator = Emulator(
        MeteredTransport(bus, "aws-iot-jobs-emulator", emulator_meter), tick_seconds=None
    )
    await emulator.start(connect_timeout=10)
    document = json.loads(args.document)
    for index in range(args.warmup + args.jobs):
        emulator.service.create_job(f"{thing}-{index:05d}", [thing], document)
    window = Window(args.warmup, emulator_meter, watcher_meter)
    watcher = MeteredTransport(bus, "bench-watcher", watcher_meter)
    await watcher.connect()
    await watcher.subscribe(f"$aws/things/{thing}/jobs/notify-next")
    watcher.set_message_callback(window.on_message)
    try:
        if args.agent == "perfect":
            await run_perfect(bus, config, window, args.timeout)
        else:
            await run_agent(bus, config, window, args.timeout)
    finally:
        await watcher.disconnect()
        await emulator.stop()
    assert window.start is not None and window.end is not None
    delta = {k: window.end[k] - window.start[k] for k in window.start}
    return {
        "jobs": args.jobs,
        "seconds": delta["wall"],
        "agent_cpu": delta["cpu"] - delta["emulator"] - delta["watcher"],
        "emulator_cpu": delta["emulator"],
        "children_cpu": delta["children"],
        "peak_rss_mb": peak_rss_mb(),
    }


async def run_agent(bus: LocalBus, config: Any, window: Window, timeout: float) -> None:
    from jobs_agent.daemon import Agent
    from jobs_agent.transport.local import LocalTransport

    agent = Agent(config, transport=LocalTransport(bus, config.client_id))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 30)
        await asyncio.wait_for(window.done.wait(), timeout)
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)


async def run_perfect(bus: LocalBus, config: Any, window: Window, timeout: float) -> None:
    from benchmarks.perfect import PerfectAgent

    transport = BusTransport(bus, config.client_id)
    await transport.connect()
    perfect = PerfectAgent(
        config.thing_name, transport.publish_nowait, config.state_dir, config.jobs.handler_dir
    )
    for topic_filter in perfect.subscriptions():
        await transport.subscribe(topic_filter)
    transport.set_message_callback(lambda m: perfect.on_message(m.topic, m.payload))
    perfect.ask()
    try:
        await asyncio.wait_for(window.done.wait(), timeout)
    finally:
        await transport.disconnect()
        perfect.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_drain", description=__doc__)
    parser.add_argument("--agent", choices=["jobs-agent", "perfect"], required=True)
    parser.add_argument("--config", required=True, help="the agent's configuration file")
    parser.add_argument("--jobs", type=int, required=True, help="jobs in the window")
    parser.add_argument("--warmup", type=int, default=10, help="jobs before the window")
    parser.add_argument("--document", required=True, help="the job document (JSON)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(drain(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
