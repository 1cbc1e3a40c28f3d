"""Pieces the engine and operations tests share: handlers on disk, configs, the emulator on a
real broker, and the agent as a real `jobs-agent run` process whose readiness is read from a
real sd_notify socket (no sleeps: every wait is on an event with a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs_agent.config import AgentConfig, ConnectionConfig, JobsConfig
from jobs_agent.daemon import Agent
from jobs_agent.emulator.clock import Clock
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.readings import ALTERNATIVE, DOCUMENTED, Readings
from jobs_agent.transport.options import TransportOptions
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.cgroups import agent_started

TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}
READING_PROFILES: dict[str, Readings] = {"documented": DOCUMENTED, "alternative": ALTERNATIVE}
"""The emulator's readings of the points AWS leaves silent (docs/emulator.md): the engine tests
run under the documented one and under every other reading at once (the `readings` fixture)."""


def write_handler(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    path = directory / name
    path.write_text(script)
    os.chmod(path, 0o755)
    return path


def paho_connection(port: int) -> ConnectionConfig:
    return ConnectionConfig(
        transport="paho",
        endpoint="127.0.0.1",
        port=port,
        tls=False,
        keepalive_seconds=30,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.5,
    )


def awscrt_connection(broker: Any) -> TransportOptions:
    """awscrt with mTLS (the generated device certificate) to `broker`'s TLS listener, with the
    fast keep-alive and reconnects of `paho_connection`."""
    certs = broker.certs
    return ConnectionConfig(
        transport="awscrt",
        endpoint="localhost",
        port=broker.tls_port,
        cert=certs.device_cert,
        key=certs.device_key,
        ca=certs.ca,
        keepalive_seconds=30,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.5,
    )


def connection_yaml(connection: TransportOptions) -> list[str]:
    """The `connection:` lines for `connection`: its transport and every option it has set
    (not `tls` for awscrt: it is always TLS, and the agent refuses paho's option there)."""
    lines = [f"  transport: {connection.transport}"]
    for item in dataclasses.fields(connection):
        value = getattr(connection, item.name)
        if value is None or value == "":
            continue
        if item.name == "tls" and connection.transport == "awscrt":
            continue
        shown = ("true" if value else "false") if isinstance(value, bool) else value
        lines.append(f"  {item.name}: {shown}")
    return lines


def agent_config(tmp_path: Path, port: int, thing: str = "gw-test", **jobs: Any) -> AgentConfig:
    jobs.setdefault("handler_dir", tmp_path / "handlers")
    jobs.setdefault("progress_interval_seconds", 0.1)
    jobs.setdefault("request_timeout_seconds", 5.0)
    jobs.setdefault("kill_grace_seconds", 1.0)
    return AgentConfig(
        thing_name=thing,
        connection=paho_connection(port),
        jobs=JobsConfig(**jobs),
        state_dir=tmp_path / "state",
    )


def config_yaml(config: AgentConfig) -> str:
    """The YAML a `jobs-agent run` process reads for `config`."""
    jobs = config.jobs
    lines = [
        f"thing_name: {config.thing_name}",
        "connection:",
        *connection_yaml(config.connection),
        "jobs:",
        f"  handler_dir: {jobs.handler_dir}",
        f"  progress_interval_seconds: {jobs.progress_interval_seconds}",
        f"  request_timeout_seconds: {jobs.request_timeout_seconds}",
        f"  kill_grace_seconds: {jobs.kill_grace_seconds}",
        f"  stop_timeout_seconds: {jobs.stop_timeout_seconds}",
        f"  boot_id_path: {jobs.boot_id_path}",
        f"  reboot_command: [{', '.join(jobs.reboot_command)}]",
        f"  step_timeout_minutes: {jobs.step_timeout_minutes or 'null'}",
        f"  namespaces: [{', '.join(jobs.namespaces)}]",
        f"  containment: {jobs.containment}",
        f"  allow_http_downloads: {'true' if jobs.allow_http_downloads else 'false'}",
    ]
    if config.handlers:
        lines.append("handlers:")
        lines.extend(f"  {name}: {spec}" for name, spec in config.handlers.items())
    lines += [f"state_dir: {config.state_dir}", "log: {level: debug, format: json}"]
    return "\n".join(lines) + "\n"


async def start_emulator(port: int, clock: Clock | None = None, **kw: Any) -> Emulator:
    """The emulator as the privileged service client of the broker (plain listener).

    Each gets a client id of its own: two emulators on one broker with the same id would take
    each other's MQTT session over, each reconnect closing the other's connection."""
    client_id = f"jobs-emulator-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    transport = PahoTransport(paho_connection(port), client_id)
    emulator = Emulator(transport, clock=clock, **kw)
    await emulator.start(connect_timeout=10)
    return emulator


def device_statuses(emulator: Emulator, job_id: str) -> list[str]:
    """Statuses the device reported for a job, in order, as the service recorded them."""
    return [
        str(h.to_status)
        for h in emulator.service.history(job_id=job_id)
        if str(h.source) == "device"
    ]


def terminal_statuses(emulator: Emulator, job_id: str) -> list[str]:
    return [
        str(h.to_status)
        for h in emulator.service.history(job_id=job_id)
        if str(h.to_status) in TERMINAL and str(h.from_status) not in TERMINAL
    ]


async def wait_terminal(emulator: Emulator, job_id: str, thing: str, timeout: float = 20) -> Any:
    service = emulator.service

    def done() -> bool:
        return str(service.execution(job_id, thing).status) in TERMINAL

    await service.wait_for(done, timeout)
    return service.execution(job_id, thing)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition that no event announces (a file appearing, a process ending)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class AgentProcess:
    """`jobs-agent run` as a real child process; READY=1 arrives on a real NOTIFY_SOCKET."""

    config_path: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    messages: list[str] = field(default_factory=list)
    received: list[tuple[float, str]] = field(default_factory=list)
    """Every sd_notify line with its arrival time (monotonic), never consumed."""
    runs: int = 0

    def start(self, **extra_env: str) -> None:
        self.runs += 1
        agent_started(self._state_dir())  # what it leaves in its cgroup base goes after the test
        sock_path = self.workdir / f"notify-{self.runs}.sock"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(sock_path))
        self._socket.setblocking(False)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NOTIFY_SOCKET": str(sock_path),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            **self.env,
            **extra_env,
        }
        self.log_path = self.workdir / f"agent-{self.runs}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs_agent", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def _drain(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except BlockingIOError:
                return
            now = time.monotonic()
            lines = data.decode().split("\n")
            self.messages.extend(lines)
            self.received.extend((now, line) for line in lines)

    async def wait_message(self, prefix: str, timeout: float = 20) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._drain()
            for message in self.messages:
                if message.startswith(prefix):
                    self.messages.remove(message)
                    return message
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.process.returncode} before {prefix!r}:\n"
                    + self.log_text()
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} from the agent:\n" + self.log_text())
            readable = asyncio.Event()
            loop.add_reader(self._socket.fileno(), readable.set)
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await readable.wait()
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(self._socket.fileno())

    async def wait_ready(self, timeout: float = 20) -> None:
        await self.wait_message("READY=1", timeout)

    async def wait_exit(self, timeout: float = 20) -> int:
        assert self.process is not None
        if not await wait_pid_gone(self.process.pid, timeout):
            raise TimeoutError("agent did not exit:\n" + self.log_text())
        self.process.wait(timeout=5)
        self._socket.close()
        self._log.close()
        return self.process.returncode

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _state_dir(self) -> Path | None:
        """The agent's `state_dir`, as its configuration file names it."""
        with contextlib.suppress(OSError):
            found = re.search(r"^state_dir:\s*(\S.*?)\s*$", self.config_path.read_text(), re.M)
            if found:
                return self.config_path.parent / found.group(1).strip("'\"")
        return None


def side_effects(log: Path) -> list[str]:
    try:
        return [line for line in log.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


async def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for any process (not only a child) to end, woken by its pidfd becoming readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        async with asyncio.timeout(timeout):
            await gone.wait()
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, **kw: Any) -> AsyncIterator[Agent]:
    """The daemon in this event loop, ready (connected, subscribed); on exit it is stopped at
    once: the second stop request skips a resumable handler's grace period."""
    agent = Agent(config, **kw)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(15):
            await agent.ready.wait()
        yield agent
    finally:
        agent.request_stop()
        agent.request_stop()
        async with asyncio.timeout(30):
            await task
