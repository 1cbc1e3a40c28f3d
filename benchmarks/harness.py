"""What every benchmark needs: a broker, the emulator, real agent processes, figures, the machine.

The broker is the test suite's mosquitto wrapper (tests/fixtures/broker.py: `set_tcp_nodelay
true`, a plain listener and an mTLS one) so benchmarks and tests measure the same set-up. The
emulator runs in this process on paho where a job's creation time and a handler's start time
must compare on one clock (`emulator`: latency, startup), or as a `jobs-agent sim serve` process
where its CPU is counted apart (`EmulatorProcess`: drain, depth, emulator-cost). The agent is
always a real process with a generated configuration, told apart from the harness by its own
PID, RSS and CPU time, and run from a code `Tree` as an installed package runs: this checkout,
or the `--baseline` ref's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
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
    base_value: float | None = None
    """The same figure for the agent of `--baseline REF`, measured in the same run."""
    base_label: str = ""


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
    base_label: str = ""
    base_values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ref_median(self) -> float | None:
        return statistics.median(self.ref_values) if self.ref_values else None

    @property
    def base_median(self) -> float | None:
        return statistics.median(self.base_values) if self.base_values else None

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
            "baseline": self.base_label or None,
            "baseline_median": self.base_median,
            "baseline_values": self.base_values,
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


class MachineLoad:
    """What else ran on the machine during a run: busy CPU time from /proc/stat minus this
    process's and its (reaped) children's, and the hypervisor's steal time. Other helpers share
    these 2-core machines; a figure from a loaded machine says so in its section."""

    def __init__(self) -> None:
        self._start = self._read()
        self._load = os.getloadavg()[0]

    @staticmethod
    def _read() -> tuple[float, float, float, float]:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        return (user + nice + system + irq + softirq) / TICKS, steal / TICKS, ours, time.monotonic()

    def describe(self) -> str:
        busy0, steal0, ours0, t0 = self._start
        busy1, steal1, ours1, t1 = self._read()
        capacity = (t1 - t0) * (os.cpu_count() or 1)
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        return (
            f"other processes used {others:.0f} CPU-s during the run ({100 * others / capacity:.0f}"
            f" % of the machine), steal {100 * (steal1 - steal0) / capacity:.1f} %; load average"
            f" {self._load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        )


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
    return cpu_sample(pid).own


@dataclass(frozen=True, slots=True)
class Cpu:
    """A process's CPU seconds: its own from the kernel's per-process CPU clock (nanoseconds),
    its children's from /proc/PID/stat (clock ticks, 10 ms).

    The own time was read in ticks too: a `depth --quick` window of 100 jobs at ~1.8 ms is
    ~18 ticks, so each figure moved by up to one tick (5.5 %) and a ratio of two by up to 11 %
    with nothing changed, half of the 20 % that issue 18's goal allows. /proc's utime + stime
    are that same clock (the kernel's runtime, cut into ticks), so the figures stay comparable
    with earlier runs."""

    own: float
    """User + system time of the process, every thread included (dead ones too)."""
    children: float
    """User + system time of its children that it has reaped (a script handler's own CPU)."""

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)


def process_clock(pid: int) -> int:
    """The clock id of `pid`'s CPU clock, as glibc's `clock_getcpuclockid` makes it (Linux's
    MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)): any process of the same pid namespace may be
    read."""
    return ((~pid) << 3) | 2


def cpu_sample(pid: int) -> Cpu:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = (int(fields[11]) + int(fields[12])) / TICKS
    try:
        own = time.clock_gettime(process_clock(pid))
    except OSError:  # a kernel without per-process clocks: the ticks
        own = ticks
    return Cpu(own, (int(fields[13]) + int(fields[14])) / TICKS)


def wakeups(pid: int) -> int:
    """How many times the process's live threads slept and were woken (voluntary context
    switches). Per job it is a drain's rhythm: an agent woken for each message pays a loop turn
    and a read per message, one woken for a batch pays them once (round 9's script drains: the
    same calls per job, more wake-ups, more CPU). A thread that ended takes its count along."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        start = status.index("\nvoluntary_ctxt_switches:") + 26
        total += int(status[start : status.index("\n", start)])
    return total


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


# -- code trees ----------------------------------------------------------------------------------
def compile_bytecode(*directories: Path) -> None:
    """Write the bytecode of these trees, as an installed package has it.

    These machines export PYTHONDONTWRITEBYTECODE=1, so a checkout never gets its
    `__pycache__`, and every agent start would compile the agent's modules again (~0.15 s of
    a start-up that the figures would wrongly charge to the agent).
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *map(str, directories)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )


SITE_PACKAGES = [p for p in sys.path if p.endswith("site-packages")]
CONSOLE_SCRIPT = (
    "import sys; from jobs_agent.cli import main; sys.argv[0] = 'jobs-agent'; sys.exit(main())"
)
"""What the `jobs-agent` console script runs."""


class Tree:
    """Where an agent's code comes from, run as an installed package runs it.

    A folder of links puts the tree under the installed names (jobs_agent -> agent,
    jobs_agent_handlers -> handlers); processes of the tree run `python -S` with PYTHONPATH =
    that folder, the tree holding the `benchmarks` package (plugins and programs, see below) and
    the virtual environment's site-packages. `-S` leaves out the editable install's import hook,
    which `site` loads into every interpreter of this virtual environment (15-40 ms of each
    start here, which an installed agent does not pay). The tree is this checkout (`checkout`)
    or a git ref extracted to a temporary directory (`extract`, for `--baseline`).

    Only the agent's code comes from the tree. The programs that run inside an agent's process
    (benchmarks/local_drain.py, the plugins of benchmarks/handlers.py) are this checkout's for
    every tree: `programs` (the tree's own folder when it has local_drain.py, else this
    checkout) follows the links on PYTHONPATH, but Python puts a process's working directory
    before PYTHONPATH (`-m`, `-c`), and local_drain.py runs from this checkout (under callgrind,
    benchmarks/instructions.py puts it first too), as does an agent started by a harness run
    from the checkout, the usual way. So this checkout's local_drain.py must keep driving the
    agents of the trees it is run against (instructions.py's program already guards an
    `INLINE_COMMIT_SECONDS` that an older tree lacks).
    """

    def __init__(self, label: str, source: Path, root: Path) -> None:
        self.label = label
        self.links = root / "path"
        self.links.mkdir(parents=True)
        (self.links / "jobs_agent").symlink_to(source / "agent")
        (self.links / "jobs_agent_handlers").symlink_to(source / "handlers")
        has_programs = (source / "benchmarks" / "local_drain.py").exists()
        self.programs = source if has_programs else REPO
        compile_bytecode(source / "agent", source / "handlers", self.programs / "benchmarks")

    @classmethod
    def checkout(cls, root: Path) -> Tree:
        return cls("current", REPO, root)

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
        return cls(ref, target, root)

    def python(self) -> list[str]:
        return [sys.executable, "-S"]

    def jobs_agent(self) -> list[str]:
        """The `jobs-agent` command of this tree."""
        return [*self.python(), "-c", CONSOLE_SCRIPT]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.links), str(self.programs), *SITE_PACKAGES])
        return env


def jobs_agent_command() -> list[str]:
    script = Path(sys.executable).with_name("jobs-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "jobs_agent"]


def log_warnings(path: Path) -> list[str]:
    """Warnings and errors an agent logged (JSON lines), but the configuration warning every
    benchmark provokes on purpose (a plain local broker without credentials)."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and entry.get("level") in ("warning", "error", "critical")
                and entry.get("event") != "configuration warning"
            ):
                found.append(str(entry.get("event")))
    return found


SO_TIMESTAMP = 29
"""SOL_SOCKET's SO_TIMESTAMP (and its SCM_TIMESTAMP message) on x86-64 and arm64, which
Python's socket module does not name."""
_STAMP_SPACE = socket.CMSG_SPACE(16)


def _sent_at(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The datagram's kernel stamp (a struct timeval), or now where the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= 16:
            seconds, microseconds = struct.unpack("qq", data[:16])
            return seconds + microseconds / 1e6
    return time.time()


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
        # The kernel's stamp of each datagram, taken when the agent sent it: the time this
        # loop gets round to reading one can fall after the agent's next step (its first
        # request, seen by a broker watcher), which made READY look later than the request.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        self.received: list[tuple[float, str]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            readable = loop.create_future()
            loop.add_reader(self.sock, readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(self.sock)
            while True:
                try:
                    data, ancillary, _flags, _address = self.sock.recvmsg(4096, _STAMP_SPACE)
                except BlockingIOError:
                    break
                self.received.append((_sent_at(ancillary), data.decode(errors="replace")))
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
        tree: Tree | None = None,
    ) -> None:
        self.broker = broker
        self.tree = tree
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
        if self.tree is None:  # as the other benchmarks have always run it
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            agent = jobs_agent_command()
        else:
            env = self.tree.env()
            agent = self.tree.jobs_agent()
        env.update(self._env)
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        command = self._command or [*agent, "run", "--config", str(self.config_path)]
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

    def warnings(self) -> list[str]:
        return log_warnings(self.log_path)

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

    @property
    def pid(self) -> int:
        process = self._process
        assert process is not None, "the broker is not running"
        return process.pid

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

    def __init__(self, baseline: str | None = None, smoke: bool = False) -> None:
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
        self.baseline = baseline
        """A git ref (`--baseline`) whose agent (emulator-cost: whose emulator) is measured as
        well, in the same run, round by round with this checkout's."""
        self.smoke = smoke
        """Tiny counts that only prove a benchmark runs end to end (the test suite's smoke run);
        its figures mean nothing."""
        self._baseline_tree: Tree | None = None
        self.current = Tree.checkout(self.root / "current")
        self._rounds: dict[str, int] = {}

    def next_round(self, benchmark: str) -> int:
        """1, 2, ...: the how-manyth run of `benchmark` in this session (`--runs`), so that a
        benchmark can change its order from round to round (drain: who drains first)."""
        self._rounds[benchmark] = self._rounds.get(benchmark, 0) + 1
        return self._rounds[benchmark]

    def baseline_tree(self) -> Tree | None:
        """The `--baseline` ref's code, extracted (and compiled) once per session."""
        if self.baseline is None:
            return None
        if self._baseline_tree is None:
            self._baseline_tree = Tree.extract(self.baseline, self.root / "baseline")
        return self._baseline_tree

    def trees(self) -> list[Tree]:
        """This checkout, then the baseline's if there is one: the agents a benchmark runs."""
        base = self.baseline_tree()
        return [self.current] if base is None else [self.current, base]

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


_SCOPE = "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/iot/aws4_request"


class EmulatorProcess:
    """`jobs-agent sim serve` of this checkout on a broker, its HTTP API on a free port: the
    emulator in a process of its own, so its CPU time is told apart from the agent's and the
    broker's (and from the harness's)."""

    def __init__(self, broker: Broker, directory: Path, tree: Tree | None = None) -> None:
        self.tree = tree
        self.broker = broker
        self.log_path = directory / "emulator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 30.0) -> None:
        python = [sys.executable] if self.tree is None else self.tree.python()
        command = [
            *python,
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
                env=dict(os.environ) if self.tree is None else self.tree.env(),
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
        """One request on a connection of its own. (On a kept-alive connection each answer
        would wait ~40 ms: the server writes headers and body apart, Nagle holds the body
        until the headers are acknowledged, and the client delays that acknowledgement.)"""
        url = urllib.parse.urlsplit(self.endpoint)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": _SCOPE, "Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else {}
        finally:
            conn.close()

    def create_jobs(self, thing: str, job_ids: list[str], document: dict[str, Any]) -> None:
        """CreateJob for each id, targeting `thing` (4 requests at a time for a long list)."""
        arn = f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"
        body = {"targets": [arn], "document": json.dumps(document)}
        if len(job_ids) <= 100:
            for job_id in job_ids:
                self.call("PUT", f"/jobs/{job_id}", body)
            return
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda job_id: self.call("PUT", f"/jobs/{job_id}", body), job_ids))

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


class Watcher:
    """A paho client of the harness listening on some topics, in its own network thread.

    The benchmarks learn what the agent does from the broker, as a neighbour on the same broker
    would (the broker fans each message out to one more subscriber): polling the emulator would
    add to the emulator's CPU and delay its answers. `on_message` runs in the network thread.
    """

    def __init__(
        self, broker: Broker, filters: list[str], on_message: Callable[[str, bytes], None]
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, new_id("bench-watch"))
        self.client.on_message = lambda c, u, m: on_message(m.topic, bytes(m.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(f, 1) for f in filters])
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError(f"the watcher could not subscribe to {filters}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
