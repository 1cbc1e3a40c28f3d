"""What every benchmark needs: a broker, the emulator, real agent processes, figures, the machine.

The broker is the test suite's mosquitto wrapper (tests/fixtures/broker.py: `set_tcp_nodelay
true`, a plain listener and an mTLS one) so benchmarks and tests measure the same set-up. The
emulator runs in this process on paho (the service's clock is this machine's clock, so a job's
creation time and a handler's start time compare directly); the agent is always a real
`jobs-agent run` process with a generated configuration, told apart from the harness by its own
PID, RSS and CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jobs_agent.config import ConnectionConfig  # noqa: E402
from jobs_agent.emulator.broker import broker_transport  # noqa: E402
from jobs_agent.emulator.embedded import Emulator  # noqa: E402
from tests.fixtures.broker import Mosquitto, find_mosquitto  # noqa: E402
from tests.fixtures.certs import CertPaths, generate_certs  # noqa: E402

READY_TIMEOUT = 30.0


# -- figures -------------------------------------------------------------------------------------
@dataclass
class Measure:
    """One figure from one run, with its floor or peer from the same run."""

    key: str
    label: str
    unit: str
    value: float
    ref_label: str = ""
    ref_value: float | None = None
    goal: str = ""
    check: Callable[[float, float | None], bool] | None = None
    note: str = ""


@dataclass
class Figure:
    """A figure over all runs: median and spread, beside the reference's median."""

    benchmark: str
    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    ref_label: str = ""
    ref_values: list[float] = field(default_factory=list)
    goal: str = ""
    check: Callable[[float, float | None], bool] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ref_median(self) -> float | None:
        return statistics.median(self.ref_values) if self.ref_values else None

    @property
    def ratio(self) -> float | None:
        ref = self.ref_median
        if ref is None or ref == 0:
            return None
        return self.median / ref

    @property
    def met(self) -> bool | None:
        if self.check is None:
            return None
        return bool(self.check(self.median, self.ref_median))

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
            "reference": self.ref_label or None,
            "reference_median": self.ref_median,
            "reference_values": self.ref_values,
            "ratio": self.ratio,
            "goal": self.goal or None,
            "goal_met": self.met,
            "notes": sorted(set(self.notes)),
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- the machine ---------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_mb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    mosquitto = "not installed"
    binary = find_mosquitto()
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [binary, "-h"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
            found = re.search(r"mosquitto version (\S+)", out)
            mosquitto = found.group(1) if found else "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "memory_mb": memory_mb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "jobs-agent": _version("jobs-agent"),
        "paho-mqtt": _version("paho-mqtt"),
        "awscrt": _version("awscrt"),
        "awsiotsdk": _version("awsiotsdk"),
        "mosquitto": mosquitto,
    }


# -- processes -----------------------------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def jobs_agent_command() -> list[str]:
    script = Path(sys.executable).with_name("jobs-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "jobs_agent"]


class NotifySocket:
    """An sd_notify datagram socket, as systemd gives a `Type=notify` service.

    It is read continuously, as systemd does: an unread socket fills after ten datagrams and
    the agent's next `sendto` would block its event loop.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"notify-{uuid.uuid4().hex[:8]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.received.append((time.time(), data.decode(errors="replace")))
            self._changed.set()

    async def wait_for(self, assignment: str, timeout: float) -> float:
        """Wait for a datagram holding `assignment` (e.g. READY=1); its arrival time."""
        async with asyncio.timeout(timeout):
            while True:
                for when, text in self.received:
                    if assignment in text.split("\n"):
                        return when
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._reader.cancel()
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class AgentProcess:
    """A real `jobs-agent run` process with a generated configuration and a notify socket."""

    def __init__(
        self,
        broker: Broker,
        directory: Path,
        thing: str,
        transport: str = "paho",
        *,
        handlers: Mapping[str, str] | None = None,
        jobs: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        command: list[str] | None = None,
        keepalive_seconds: int = 1200,
    ) -> None:
        self.broker = broker
        self.directory = directory
        self.thing = thing
        self.transport = transport
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "config.yaml"
        self.log_path = directory / "agent.log"
        self._env = dict(env or {})
        self._command = command
        self.process: asyncio.subprocess.Process | None = None
        self.notify: NotifySocket | None = None
        self.started_at = 0.0
        self.ready_at = 0.0
        connection: dict[str, Any]
        if transport == "awscrt":
            certs = broker.certs
            connection = {
                "transport": "awscrt",
                "endpoint": "localhost",
                "port": broker.tls_port,
                "cert": str(certs.device_cert),
                "key": str(certs.device_key),
                "ca": str(certs.ca),
            }
        else:
            connection = {
                "transport": "paho",
                "endpoint": broker.host,
                "port": broker.port,
                "tls": False,
            }
        connection["client_id"] = thing
        connection["keepalive_seconds"] = keepalive_seconds
        config = {
            "thing_name": thing,
            "connection": connection,
            "jobs": {"handler_dir": str(directory / "handlers"), **(jobs or {})},
            "handlers": dict(handlers or {}),
            "state_dir": str(directory / "state"),
            "log": {"level": "warning", "format": "json"},
        }
        (directory / "handlers").mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = READY_TIMEOUT) -> float:
        """Start the process; returns seconds from exec to READY=1."""
        self.notify = NotifySocket(self.directory)
        env = dict(os.environ)
        env.update(self._env)
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = self._command or [
            *jobs_agent_command(),
            "run",
            "--config",
            str(self.config_path),
        ]
        log = self.log_path.open("ab")
        try:
            self.started_at = time.time()
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()
        ready = asyncio.ensure_future(self.notify.wait_for("READY=1", timeout))
        exited = asyncio.ensure_future(self.process.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            raise RuntimeError(f"{self.thing}: agent exited before READY:\n{self.log_tail()}")
        exited.cancel()
        try:
            self.ready_at = ready.result()
        except TimeoutError:
            await self.stop()
            raise RuntimeError(
                f"{self.thing}: no READY=1 in {timeout}s:\n{self.log_tail()}"
            ) from None
        return self.ready_at - self.started_at

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None


# -- broker and emulator ---------------------------------------------------------------------------
class Broker(Mosquitto):
    """The test suite's mosquitto; with `packet_log`, every packet is logged with its client id,
    so messages a client sends can be counted on the broker side."""

    def __init__(self, binary: str, directory: Path, certs: CertPaths, packet_log: bool = False):
        self.packet_log = packet_log
        super().__init__(binary, directory, certs)

    def _write_config(self) -> None:
        super()._write_config()
        if self.packet_log:
            with self.config_path.open("a", encoding="utf-8") as config:
                config.write("log_type debug\nlog_timestamp_format %s\n")

    def packets_from(self, client_id: str, since: float = 0.0) -> list[str]:
        """Control packets the broker received from `client_id` (needs `packet_log`)."""
        found = []
        marker = f" from {client_id} "
        for line in self.log_text().splitlines():
            stamp, _, rest = line.partition(": ")
            if not rest.startswith("Received ") or marker not in rest + " ":
                continue
            with contextlib.suppress(ValueError):
                if float(stamp) >= since:
                    found.append(rest.split()[1])
        return found


class Session:
    """Temporary directory, certificates and brokers shared by one `python -m benchmarks` run."""

    def __init__(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise SystemExit(
                "mosquitto is not installed: run tests/run.sh (or apt-get install mosquitto)"
            )
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="jobs-agent-bench-"))
        self.certs = generate_certs(self.root / "certs")
        self._brokers: list[Broker] = []
        self._counter = 0
        self.baseline: str | None = None
        """A git ref whose emulator emulator-cost measures as well (`--baseline`)."""

    def directory(self, name: str) -> Path:
        self._counter += 1
        path = self.root / f"{self._counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def broker(self, packet_log: bool = False) -> Broker:
        broker = Broker(self.binary, self.directory("mosquitto"), self.certs, packet_log)
        broker.start()
        self._brokers.append(broker)
        return broker

    def close(self, keep: bool = False) -> None:
        for broker in self._brokers:
            broker.kill()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def emulator(broker: Broker, **kwargs: Any) -> Any:
    client_id = f"bench-emulator-{uuid.uuid4().hex[:6]}"
    config = ConnectionConfig(
        transport="paho", endpoint=broker.host, port=broker.port, tls=False, client_id=client_id
    )
    emu = Emulator(broker_transport(config, client_id), tick_seconds=None, **kwargs)
    await emu.start(connect_timeout=10)
    try:
        yield emu
    finally:
        await emu.stop()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.asynccontextmanager
async def responder(broker: Broker) -> Any:
    """The raw floor's service stand-in (benchmarks/raw.py), in its own process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.raw",
        "responder",
        "--port",
        str(broker.port),
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"raw responder did not start: {line!r}")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


def raw_device(broker: Broker, tls: bool = False) -> Any:
    from benchmarks.raw import RawDevice

    if tls:
        c = broker.certs
        return RawDevice(
            "localhost", broker.tls_port, ca=c.ca, cert=c.device_cert, key=c.device_key
        )
    return RawDevice(broker.host, broker.port)
