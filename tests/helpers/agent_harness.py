"""The real agent against the embedded emulator, in the test's event loop.

Everything is the production code path (`Agent.run`: store, Jobs client, engine, dispatcher,
sandbox) on an in-process `LocalBus`; the only test-side additions are a loop exception handler
(an exception in a transport callback is otherwise only printed, and a fuzz test must see it)
and a JSON log capture that can be waited on. What a test asserts is read back from the
emulator's history, i.e. what the service saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobs_agent import daemon
from jobs_agent.config import AgentConfig, ConnectionConfig, JobsConfig, LogConfig
from jobs_agent.daemon import Agent
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.model import TERMINAL, Execution
from jobs_agent.emulator.service import JobsService
from jobs_agent.log import configure_logging
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.fixtures.logs import logging_restored

THING = "fuzz-gw"
TERMINAL_NAMES = frozenset(str(s) for s in TERMINAL)

RUN_LOG_SCRIPT = """#!/bin/sh
# Records every run (job id and execution number) so tests can prove nothing ran twice.
printf '%s#%s\\n' "$JOBS_AGENT_JOB_ID" "$JOBS_AGENT_EXECUTION_NUMBER" >> {runs}
echo ok
"""


def write_script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


@contextlib.contextmanager
def plugin_on_path(base: Path, module: str, source: str) -> Iterator[None]:
    """A plugin module `module` (its text `source`) importable for the block: written in a
    `plugins` folder under `base`, put on `sys.path`, and forgotten again afterwards."""
    package = base / "plugins"
    package.mkdir()
    (package / f"{module}.py").write_text(source)
    sys.path.insert(0, str(package))
    try:
        yield
    finally:
        sys.path.remove(str(package))
        sys.modules.pop(module, None)


def make_handler_dir(base: Path) -> Path:
    directory = base / "handlers"
    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)
    write_script(directory, "ok.sh", RUN_LOG_SCRIPT.format(runs=base / "runs.log"))
    return directory


def make_config(base: Path, *, state_dir: Path | None = None, **jobs: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "handler_dir": base / "handlers",
        "progress_interval_seconds": 0.05,
        "kill_grace_seconds": 1.0,
        "handler_timeout_seconds": 60.0,
        "request_timeout_seconds": 5.0,
    }
    settings.update(jobs)
    return AgentConfig(
        thing_name=THING,
        connection=ConnectionConfig(transport="local"),
        jobs=JobsConfig(**settings),
        state_dir=state_dir or base / "state",
        log=LogConfig(level="debug", format="json"),
    )


def hold_heartbeat_off(monkeypatch: pytest.MonkeyPatch, seconds: float = 3600.0) -> None:
    """The agent's heartbeat, written at start, then not woken for `seconds`. It polls every
    5 s from the agent's start, and its first poll sees the link come up and writes the file
    (`json.dumps` with `sort_keys`, `asyncio.to_thread`, `asyncio.sleep`): a test that counts
    the agent's calls over a few jobs counted that poll too once the machine's load stretched
    the agent's start and its jobs past 5 s."""
    from jobs_agent.engine import heartbeat

    monkeypatch.setattr(heartbeat, "_POLL_SECONDS", seconds)
    monkeypatch.setattr(
        daemon, "keep_heartbeat", functools.partial(heartbeat.keep_heartbeat, interval=seconds)
    )


def runs(base: Path) -> Counter[str]:
    """`jobId#executionNumber` -> how many times `ok.sh` ran for it."""
    path = base / "runs.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


class LogCapture(io.TextIOBase):
    """A text stream for `configure_logging` that keeps JSON log records and can be waited on.

    structlog writes from the event loop's thread (the engine and client log there), so waking
    waiters with a plain `asyncio.Event` is safe; a write from another thread hops over.
    """

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.records: list[dict[str, Any]] = []
        self._partial = ""
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        self._partial += s
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.records.append(record)
        if self._changed is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._changed.set)
        return len(s)

    def matching(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [r for r in self.records if predicate(r)]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` records satisfy `predicate`; returns them."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                found = self.matching(predicate)
                if len(found) >= count:
                    return found
                await self._changed.wait()


@contextlib.contextmanager
def captured_logs(level: str = "debug") -> Any:
    """JSON logs of everything (engine, client, emulator) into a `LogCapture`, then restore."""
    capture = LogCapture()
    with logging_restored():
        configure_logging(level, "json", stream=capture)
        yield capture


@dataclass
class Harness:
    base: Path
    bus: LocalBus
    emulator: EmbeddedEmulator
    agent: Agent
    task: asyncio.Task[int]
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def service(self) -> JobsService:
        return self.emulator.service

    def assert_alive(self) -> None:
        """The agent's task is still running and nothing blew up in a callback."""
        if self.task.done():
            raise AssertionError(f"the agent stopped: {self.task!r}")
        assert not self.loop_errors, [str(e.get("exception") or e) for e in self.loop_errors]

    def is_terminal(self, job_id: str) -> bool:
        return str(self.service.execution(job_id, THING).status) in TERMINAL_NAMES

    async def wait_terminal(self, job_id: str, timeout: float = 15.0) -> Execution:
        await self.service.wait_for(lambda: self.is_terminal(job_id), timeout=timeout)
        return self.service.execution(job_id, THING)

    async def run_job(
        self, job_id: str, document: dict[str, Any], timeout: float = 15.0
    ) -> Execution:
        self.service.create_job(job_id, [THING], document)
        return await self.wait_terminal(job_id, timeout)

    def terminal_reports(self, job_id: str) -> Counter[int]:
        """executionNumber -> how many times it reached a terminal status (must be 1)."""
        return Counter(
            entry.execution_number
            for entry in self.service.history(job_id=job_id, thing=THING)
            if str(entry.to_status) in TERMINAL_NAMES
        )

    def details_seen(self, job_id: str) -> list[dict[str, str]]:
        """Every statusDetails map the service recorded for the job (progress and final)."""
        return [dict(e.status_details) for e in self.service.history(job_id=job_id, thing=THING)]


@contextlib.asynccontextmanager
async def running_agent(
    base: Path,
    config: AgentConfig | None = None,
    *,
    bus: LocalBus | None = None,
    before_emulator: Callable[[LocalBus], Any] | None = None,
) -> AsyncIterator[Harness]:
    """Emulator and agent on one bus; `before_emulator(bus)` (may be async) runs first, so a
    test's extra client subscribes before the emulator and is delivered to first."""
    config = config or make_config(base)
    bus = bus or LocalBus()
    if before_emulator is not None:
        result = before_emulator(bus)
        if asyncio.iscoroutine(result):
            await result
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    emulator = EmbeddedEmulator(bus, tick_seconds=None)
    await emulator.start()
    agent = Agent(config, transport=LocalTransport(bus, config.client_id))
    task = asyncio.create_task(agent.run(), name="agent")
    harness = Harness(base, bus, emulator, agent, task, errors)
    try:
        ready = asyncio.create_task(agent.ready.wait())
        await asyncio.wait({ready, task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise AssertionError(f"the agent did not become ready: {task!r}")
        yield harness
    finally:
        agent.request_stop()
        agent.request_stop()  # a second request abandons a running handler at once
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await task
        await emulator.stop()
        loop.set_exception_handler(previous)
