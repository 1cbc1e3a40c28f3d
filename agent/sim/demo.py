"""`jobs-agent demo`: the real agent against the embedded IoT Jobs emulator, in one process.

Nothing here is simulated on the agent's side: the same engine, dispatcher, sandbox and state
database as `jobs-agent run`, talking the Jobs MQTT API to the emulator over the in-process bus.
What is printed is read back from the emulator's own history (what the "cloud" saw), so the demo
cannot show an outcome that did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from jobs_agent.config import AgentConfig, JobsConfig, LogConfig
from jobs_agent.transport.options import LocalOptions
from jobs_agent.vocabulary import TERMINAL_STATUSES

THING = "demo-gateway"

HANDLERS: dict[str, str] = {
    "hello": """#!/bin/sh
# Device Client convention: argv is [handler, runAsUser, args...].
shift
echo "hello from $JOBS_AGENT_THING_NAME, job $JOBS_AGENT_JOB_ID, arguments: $*"
""",
    "firmware-update": """#!/bin/sh
# Reports progress through the script protocol: JSON lines on JOBS_AGENT_PROGRESS_FD (fd 3).
for part in 1 2 3 4 5; do
    printf '{"percent": %d, "message": "writing image part %d of 5"}\\n' \\
        $((part * 20)) "$part" >&3
    sleep 0.3
done
echo "firmware 2.1.0 installed"
""",
    "install-package": """#!/bin/sh
echo "Reading package lists..."
echo "E: Unable to locate package $2" >&2
exit 100
""",
    "diagnostics": """#!/bin/sh
# Runs until it is stopped: the operator cancels this job while it runs.
i=0
while true; do
    i=$((i + 1))
    printf '{"percent": %d, "message": "collecting sample %d"}\\n' $((i * 5 % 100)) "$i" >&3
    sleep 0.2
done
""",
}


@dataclass(frozen=True)
class DemoJob:
    job_id: str
    title: str
    document: Mapping[str, Any]
    expected: str


def _jobs(suffix: str) -> list[DemoJob]:
    return [
        DemoJob(
            f"hello-{suffix}",
            "a Device Client document running a script handler",
            {
                "version": "1.0",
                "includeStdOut": "true",
                "steps": [
                    {
                        "action": {
                            "name": "Say hello",
                            "type": "runHandler",
                            "input": {"handler": "hello", "args": ["first", "second arg"]},
                        }
                    }
                ],
            },
            "SUCCEEDED",
        ),
        DemoJob(
            f"firmware-{suffix}",
            "a job that reports progress",
            {"operation": "firmware-update"},
            "SUCCEEDED",
        ),
        DemoJob(
            f"install-{suffix}",
            "a job that fails with its reason",
            {"operation": "install-package", "args": ["no-such-package"]},
            "FAILED",
        ),
        DemoJob(
            f"invalid-{suffix}",
            "an invalid document",
            {"version": "1.0", "steps": "this should be a list"},
            "REJECTED",
        ),
        DemoJob(
            f"diagnostics-{suffix}",
            "a job cancelled while it runs",
            {"operation": "diagnostics"},
            "CANCELED",
        ),
    ]


def _write_handlers(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Handlers must not be writable by group or others (the dispatcher refuses them otherwise).
    os.chmod(directory, 0o755)  # noqa: S103
    for name, text in HANDLERS.items():
        path = directory / name
        path.write_text(text)
        os.chmod(path, 0o755)  # noqa: S103


class Printer:
    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.started = started
        self.bold = out.isatty()

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, job_id: str, status: str, detail: str) -> None:
        elapsed = time.monotonic() - self.started
        self.line(f"  {elapsed:6.2f}s  {job_id:<22} {status:<12} {detail}")


def _detail(details: Mapping[str, str] | None) -> str:
    if not details:
        return ""
    parts = []
    if "percent" in details:
        parts.append(f"{details['percent']}%")
    for key in ("message", "reason", "stdout", "stderr"):
        if details.get(key):
            parts.append(f"{key}: {details[key]}" if key != "message" else details[key])
    return "  ".join(parts)[:110]


async def run_demo(out: TextIO | None = None, keep_state: Path | None = None) -> int:
    from jobs_agent.daemon import Agent
    from jobs_agent.emulator.embedded import EmbeddedEmulator
    from jobs_agent.transport.local import LocalBus, LocalTransport

    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="jobs-agent-demo-") as tmp:
        base = keep_state or Path(tmp)
        handler_dir = base / "handlers"
        _write_handlers(handler_dir)
        config = AgentConfig(
            thing_name=THING,
            connection=LocalOptions(),
            jobs=JobsConfig(
                handler_dir=handler_dir,
                progress_interval_seconds=0.25,
                kill_grace_seconds=2.0,
                handler_timeout_seconds=120.0,
            ),
            state_dir=base / "state",
            log=LogConfig(level="warning", format="console"),
        )
        printer = Printer(out, time.monotonic())
        printer.line("jobs-agent demo: the real agent against the embedded AWS IoT Jobs emulator")
        printer.line(f"  thing {THING}, handlers in {handler_dir}, state in {config.state_dir}")
        printer.line()
        bus = LocalBus()
        emulator = EmbeddedEmulator(bus)
        await emulator.start()
        service = emulator.service
        agent = Agent(config, transport=LocalTransport(bus, THING))
        agent_task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(30):
                await agent.ready.wait()
            jobs = _jobs(format(int(time.time()) % 100000, "05d"))
            for job in jobs:
                service.create_job(job.job_id, [THING], dict(job.document))
                printer.line(f"  queued {job.job_id:<22} {job.title}")
            printer.line()
            printer.line(
                "  time     job                    status       details (as the service saw them)"
            )
            await _follow(service, jobs, printer)
        finally:
            agent.request_stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await agent_task
            await emulator.stop()
        return _summary(service, jobs, agent, printer)


async def _follow(service: Any, jobs: list[DemoJob], printer: Printer) -> None:
    """Print every change the service records; cancel the long job once it shows progress."""
    ids = {job.job_id for job in jobs}
    seen = 0
    cancelled = False
    cancel_id = next(job.job_id for job in jobs if job.expected == "CANCELED")

    def all_done() -> bool:
        return all(service.execution(j, THING).status in TERMINAL_STATUSES for j in ids)

    deadline = time.monotonic() + 90
    while True:
        history = [h for h in service.history(thing=THING) if h.job_id in ids]
        for entry in history[seen:]:
            printer.event(entry.job_id, str(entry.to_status), _detail(entry.status_details))
            percent = (entry.status_details or {}).get("percent", "0")
            if entry.job_id == cancel_id and not cancelled and float(percent) >= 20:
                cancelled = True
                printer.line(f"  operator: cancel job {cancel_id} --force (it is running)")
                service.cancel_job(cancel_id, force=True, comment="demo: cancelled while running")
        seen = len(history)
        if all_done() and seen == len([h for h in service.history(thing=THING) if h.job_id in ids]):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            printer.line("  (gave up waiting after 90 s)")
            return

        def changed(count: int = seen) -> bool:
            return len([h for h in service.history(thing=THING) if h.job_id in ids]) > count

        with contextlib.suppress(TimeoutError):
            await service.wait_for(
                changed,
                timeout=min(remaining, 5.0),
            )


def _summary(service: Any, jobs: list[DemoJob], agent: Any, printer: Printer) -> int:
    printer.line()
    printer.line(f"  {'job':<22} {'expected':<10} {'final status':<13} reported details")
    problems = 0
    for job in jobs:
        execution = service.execution(job.job_id, THING)
        status = str(execution.status)
        mark = "ok" if status == job.expected else "UNEXPECTED"
        problems += status != job.expected
        detail = _detail(execution.status_details) or "-"
        printer.line(f"  {job.job_id:<22} {job.expected:<10} {status:<13} {detail[:80]}  [{mark}]")
    engine = agent.engine
    if engine is not None:
        for key, note in engine.outcomes.items():
            if note.startswith("cancelled"):
                printer.line(f"  agent: {key.job_id}: handler stopped; {note}")
    printer.line()
    if problems:
        printer.line(f"demo finished with {problems} unexpected outcome(s)")
        return 1
    printer.line("demo finished: every job ended as expected and was reported exactly once")
    return 0
