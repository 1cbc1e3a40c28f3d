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
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    AgentProcess,
    Broker,
    Measure,
    Session,
    cpu_seconds,
    new_id,
)

NAME = "emulator-cost"
HELP = "CPU per job of the emulator (sim serve), the agent and the broker during a drain"
MAX_RUNS = 3
GOAL_MS = 1.5
_SCOPE = "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/iot/aws4_request"


def counts(quick: bool) -> int:
    return 200 if quick else 500


class Tree:
    """Where an emulator's code comes from: this checkout, or a git ref extracted to a temp dir
    and put first on PYTHONPATH under the installed names (jobs_agent, jobs_agent_handlers)."""

    def __init__(self, label: str, pythonpath: Path | None) -> None:
        self.label = label
        self.pythonpath = pythonpath

    @classmethod
    def extract(cls, ref: str, root: Path) -> Tree:
        target = root / "tree"
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref],
            capture_output=True,
            check=True,
            timeout=60,
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        path = root / "path"
        path.mkdir()
        (path / "jobs_agent").symlink_to(target / "agent")
        (path / "jobs_agent_handlers").symlink_to(target / "handlers")
        return cls(ref, path)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.pythonpath), env.get("PYTHONPATH")])
            )
        return env


class EmulatorProcess:
    """`jobs-agent sim serve` on a broker, its HTTP API on a free port."""

    def __init__(self, tree: Tree, broker: Broker, directory: Path) -> None:
        self.tree = tree
        self.broker = broker
        self.log_path = directory / "emulator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 30.0) -> None:
        command = [
            sys.executable,
            "-m",
            "jobs_agent",
            "sim",
            "serve",
            "--broker-host",
            self.broker.host,
            "--broker-port",
            str(self.broker.port),
            "--http-port",
            "0",
            "--client-id",
            new_id("bench-emulator"),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.tree.env(),
                cwd=str(REPO),
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode(errors="replace")
            if not line:
                break
            found = re.match(r"HTTP: (http://\S+)", line)
            if found:
                self.endpoint = found.group(1)
                return
        raise RuntimeError(f"sim serve did not start:\n{self.log_path.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.endpoint + path,
            data=data,
            method=method,
            headers={"Authorization": _SCOPE, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else {}

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def drain(session: Session, tree: Tree, count: int) -> dict[str, float]:
    """One drain of `count` queued no-op jobs; CPU ms per job of each process and jobs/s."""
    broker = session.broker()
    directory = session.directory(f"emulator-cost-{tree.label}")
    thing = new_id("cost")
    emulator = EmulatorProcess(tree, broker, directory)
    await asyncio.to_thread(emulator.start)
    agent = AgentProcess(
        broker,
        directory,
        thing,
        "paho",
        handlers={"noop": "benchmarks.handlers:Noop"},
        jobs={"progress_interval_seconds": 5},
    )
    try:
        arn = f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"
        document = json.dumps({"operation": "noop"})
        for index in range(count):
            body = {"targets": [arn], "document": document}
            await asyncio.to_thread(emulator.call, "PUT", f"/jobs/cost-{index:05d}", body)
        watcher = QueueWatcher(broker, thing)
        try:
            await agent.start()
            before = [cpu_seconds(p) for p in (emulator.pid, agent.pid, broker_pid(broker))]
            started = time.monotonic()
            if not await asyncio.to_thread(watcher.empty.wait, max(60.0, count / 5)):
                raise RuntimeError(f"drain through {tree.label} did not finish")
            elapsed = time.monotonic() - started
        finally:
            watcher.close()
        after = [cpu_seconds(p) for p in (emulator.pid, agent.pid, broker_pid(broker))]
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
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.empty = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, new_id("watch"))
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe(f"$aws/things/{thing}/jobs/notify-next", qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the queue watcher could not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if "execution" not in json.loads(message.payload):
            self.empty.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def broker_pid(broker: Broker) -> int:
    process = broker._process
    assert process is not None
    return process.pid


_BASELINE: dict[str, Tree] = {}


def baseline_tree(ref: str | None) -> Tree | None:
    """The baseline emulator, extracted once per benchmark process."""
    if not ref:
        return None
    if ref not in _BASELINE:
        root = Path(tempfile.mkdtemp(prefix="jobs-agent-baseline-"))
        _BASELINE[ref] = Tree.extract(ref, root)
    return _BASELINE[ref]


def cleanup() -> None:
    for tree in _BASELINE.values():
        if tree.pythonpath is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tree.pythonpath.parent)
    _BASELINE.clear()


async def run(session: Session, quick: bool) -> list[Measure]:
    count = counts(quick)
    base = baseline_tree(getattr(session, "baseline", None))
    current = await drain(session, Tree("current", None), count)
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
