"""A fleet of simulated devices in one process: N real engines, each its own thing and connection.

Used by `jobs-agent sim fleet` to rehearse a rollout locally: every device is the real agent
stack, assembled by `build_device` (`Engine` + `JobsClient` + `Dispatcher`, a durable SQLite
store of its own under
`state_dir/<thing>/`), so a job document that works here went through exactly what a gateway
runs, only multiplied. Connections use `FleetTransport`, the gateway's `PahoTransport` driven by
the event loop with no thread per connection (a thousand devices are a thousand sockets on one
event loop), which sends a device's eight subscriptions in one SUBSCRIBE (fleet_transport.py);
the stores share `STORE_THREADS` writer threads, each device always on the same one.

File descriptors bound a fleet's size: each device holds `DESCRIPTORS_PER_THING` (its socket,
its database and the database's WAL; the stores use SQLite's exclusive locking mode, so there
is no shared-memory file, and open their start-next marker only to write it, so it holds no
descriptor between jobs). `raise_descriptor_limit`
lifts the soft limit to the hard one and says how many things fit; `sim fleet --processes N`
spreads larger fleets over N processes.

Python's cyclic garbage collector is kept off the devices once they are up, and off what they
kept from their first look for work, and its young collections are spaced further apart while
the fleet is up, so that a thing's collections do not cost more in a bigger fleet
(fleet_heap.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import resource
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.device import STATE_DATABASE, Device, build_device
from jobs_agent.dispatch.plugins import PluginRegistry
from jobs_agent.engine.store import Store
from jobs_agent.sim.fleet_heap import FleetHeap
from jobs_agent.sim.fleet_transport import FleetTransport, KeepAlives
from jobs_agent.sim.fleet_watch import BUSY_STATES, JobOutcomes, Signs, surplus_replies
from jobs_agent.transport.options import PahoOptions
from jobs_agent.vocabulary import ExecutionRef

log = structlog.get_logger("jobs_agent.sim.fleet")

NOOP_OPERATION = "fleet-noop"
"""The built-in handler of `sim fleet`: a Python plugin that succeeds at once."""
DESCRIPTORS_PER_THING = 3
"""Open per simulated device: its MQTT socket, its state database and the database's WAL. The
start-next marker (`state.db.taking`) is open only while the store writes it (`hold_marker`):
held open, it was a fourth, and 5,000 things did not fit under a limit of 20,000."""
DESCRIPTORS_RESERVED = 256
"""For everything else in a fleet process: the emulator, standard streams, logs, scripts' pipes."""


PREPARE_THREADS = 8
"""Threads creating state databases while a fleet starts (their fsyncs overlap)."""


STORE_THREADS = 8
"""Threads writing the devices' state databases, each device always on the same one (its writes
stay in order). With one thread for the fleet, every device's fsyncs (two or three per job) waited
in one line; concurrent fdatasyncs on different files overlap in the kernel (on this project's
disks 8 threads did 7-20x the fdatasyncs per second of one)."""


DATABASE_MODE = 0o644
"""SQLite's own mode for a database it creates (less the umask), kept for the copies."""

SETTLE_SECONDS, SETTLE_LOOK_SECONDS = 10.0, 0.05
"""How long `Fleet.settle` waits for every device to be idle after a rollout (a device's last
request is the start-next after its report, one round trip), and how often it looks."""

PAGE_SIZE = 1024
"""The devices' database pages (a gateway's store keeps SQLite's default, 4,096; 1,024 was that
default until SQLite 3.12). An open database's page cache starts with one allocation of 20
pages: 86 kB a device with 4 kB pages, the largest single part of the ~330 kB a device costs
(SQLite's own allocations were 162 kB of it, `sqlite3_memory_used` over 300 open stores). With
1 kB pages they are 96 kB and the file is 13 kB instead of 45; the store's transactions and
fsyncs are the same, each page it writes is smaller."""


@dataclass(frozen=True)
class DatabaseTemplate:
    """An empty state database as bytes, and where in them its database id is written."""

    data: bytes
    id_at: int

    def with_new_id(self) -> bytes:
        """The same database with an id of its own: the id is 32 hex digits of text in the
        `meta` table, so one of the same length in its place leaves every page, record header
        and the file header valid (SQLite pages carry no checksum)."""
        new = os.urandom(16).hex().encode("ascii")
        return self.data[: self.id_at] + new + self.data[self.id_at + len(new) :]


def database_template(directory: Path) -> DatabaseTemplate:
    """An empty state database as `Store` makes it (schema, settings, a database id), as bytes:
    made once per fleet in `directory` (then removed), copied for each device."""
    path = directory / STATE_DATABASE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None)
        try:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("VACUUM")  # writes the header of an empty database: its page size
        finally:
            db.close()
        store = Store(path, exclusive=True)
        made = store.database_id.encode("ascii")
        store.close()  # closing checkpoints: no WAL is left beside it
        data = path.read_bytes()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if data.count(made) != 1:
        raise RuntimeError(f"the database id is {data.count(made)} times in the template, not once")
    return DatabaseTemplate(data, data.index(made))


def _create_database(path: Path, template: DatabaseTemplate) -> None:
    """A device's state database: the template's bytes with a database id of its own.

    Making each one through `Store` cost 3.1 ms of CPU and 7 ms here (16 fdatasyncs: its schema
    and settings are a transaction each), about half of the CPU a thing cost to connect. A copy
    given its id by SQLite (an UPDATE, then the checkpoint at close) still cost 2.6 ms of CPU and
    5 fdatasyncs a device (strace of 100); the id is now written into the bytes before they are
    written (`DatabaseTemplate.with_new_id`): one fdatasync, no SQLite connection. The copy is
    written under a temporary name, fsynced, and linked into place, so the device's path holds
    either nothing or a complete database with its own id; an existing database (a fleet run
    again on its state directory) is opened as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        Store(path, exclusive=True).close()
        return
    fresh = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)  # left by a fleet stopped while making it
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(fresh, flags, DATABASE_MODE)
    try:
        view = memoryview(template.with_new_id())
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    try:
        os.link(fresh, path)  # never over a database made meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(fresh)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def peak_rss_mb() -> float:
    """This process's peak resident memory."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def raise_descriptor_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def things_that_fit(limit: int) -> int:
    """How many simulated devices one process can hold under a descriptor limit of `limit`."""
    return max(0, (limit - DESCRIPTORS_RESERVED) // DESCRIPTORS_PER_THING)


class NoopHandler:
    """Succeeds at once: the cost of a rollout without the cost of its work."""

    async def run(self, ctx: object) -> None:
        return None


@dataclass(frozen=True)
class FleetOptions:
    things: int
    connection: PahoOptions
    """Broker settings shared by every device; client ids are the thing names."""
    state_dir: Path
    prefix: str = "fleet-"
    jobs: JobsConfig = field(default_factory=JobsConfig)
    handlers: Mapping[str, str] = field(default_factory=dict)
    connect_concurrency: int = 64
    """Connections being set up at once (each is a TCP connect, perhaps TLS, a CONNACK and one
    SUBACK for all of its subscriptions)."""
    members: range | None = None
    """The thing numbers (1..things) this process runs; None: all of them. `sim fleet
    --processes N` gives each worker a share, named as in a one-process fleet."""

    def thing_name(self, index: int) -> str:
        width = max(4, len(str(self.things)))
        return f"{self.prefix}{index:0{width}d}"

    @property
    def numbers(self) -> range:
        return self.members if self.members is not None else range(1, self.things + 1)


@dataclass
class Member:
    """One simulated device of the fleet and its engine's task."""

    thing_name: str
    device: Device
    task: asyncio.Task[None] | None = None


class _FirstLook:
    """A device's `on_status`: its engine's first status (idle, a job found, or stopped)
    follows its first look for work; `Fleet.start` counts them."""

    __slots__ = ("_fleet", "_seen")

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._seen = False

    def __call__(self, status: object) -> None:
        if not self._seen:
            self._seen = True
            self._fleet._looked()


class Fleet:
    def __init__(self, options: FleetOptions) -> None:
        if options.things < 1:
            raise ValueError("a fleet has at least one thing")
        self.options = options
        self.devices: list[Member] = []
        handlers = {NOOP_OPERATION: f"{__name__}:NoopHandler", **options.handlers}
        self._plugins = PluginRegistry.discover(handlers)
        self._handlers = handlers
        # STORE_THREADS store threads for the whole fleet (a thread per device would be 1,000
        # threads), each device on one of them: a single worker per device keeps its writes
        # in order, and the devices' fsyncs overlap (see STORE_THREADS).
        self._store_executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fleet-store-{n}")
            for n in range(STORE_THREADS)
        ]
        self._watches: dict[str, JobOutcomes] = {}
        self.keep_alives = KeepAlives()
        """The keep-alive checks of every device, from one timer (fleet_transport.py)."""
        self._heap = FleetHeap()
        self._looks = 0
        self._all_looked = asyncio.Event()

    @property
    def thing_names(self) -> list[str]:
        return [self.options.thing_name(i) for i in self.options.numbers]

    def _config(self, thing: str, connection: PahoOptions) -> AgentConfig:
        o = self.options
        return AgentConfig(
            thing_name=thing,
            connection=connection,
            jobs=o.jobs,
            handlers=self._handlers,
            state_dir=o.state_dir / thing,
        )

    async def _start_one(
        self,
        thing: str,
        timeout: float,
        prepare: Executor,
        template: DatabaseTemplate,
        store: ThreadPoolExecutor,
    ) -> Member:
        connection = dataclasses.replace(self.options.connection, client_id=thing)
        config = self._config(thing, connection)
        # Creating a database is a few fsyncs: done on a thread, so that the store opened on
        # the loop below (the device's own, as on a gateway) finds it made and writes nothing.
        await asyncio.get_running_loop().run_in_executor(
            prepare, _create_database, config.state_dir / STATE_DATABASE, template
        )
        transport = FleetTransport(connection, thing, self.keep_alives)
        # One Dispatcher per device (it writes output logs under its own state_dir), sharing
        # the plugin registry so entry points are scanned once, not once per device.
        device = build_device(
            config,
            transport,
            store_executor=store,
            dispatcher_options={"plugins": self._plugins},
            on_status=_FirstLook(self),
            exclusive_store=True,
        )
        device.engine.listen_outcomes(functools.partial(self._noted, thing))
        try:
            await transport.connect(timeout=timeout)
            await device.client.start()
        except BaseException:
            await device.close()
            await transport.disconnect()
            raise
        return Member(thing, device)

    async def start(self, timeout: float = 60.0) -> None:
        """Connect and subscribe every device, then start their engines (each looks for work)."""
        gate = asyncio.Semaphore(max(1, self.options.connect_concurrency))

        template = await asyncio.to_thread(
            database_template, self.options.state_dir / f".template-{os.getpid()}"
        )
        prepare = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="fleet-new")

        stores = self._store_executors

        async def start_one(index: int, thing: str) -> Member:
            async with gate:
                store = stores[index % len(stores)]
                return await self._start_one(thing, timeout, prepare, template, store)

        with self._heap.building():  # no collection walks the devices (`stop` gives them back)
            try:
                results = await asyncio.gather(
                    *(start_one(i, t) for i, t in enumerate(self.thing_names)),
                    return_exceptions=True,
                )
            finally:
                prepare.shutdown(wait=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        self.devices = [r for r in results if isinstance(r, Member)]
        if failures:
            await self.stop()
            raise failures[0]
        for device in self.devices:
            device.task = asyncio.create_task(device.device.engine.run(), name=device.thing_name)

    async def first_look(self, timeout: float = 60.0) -> None:
        """Return once every device has looked for work (its engine's first reconciliation
        and start-next answered) or after `timeout` (the engines go on asking): `sim fleet`
        creates its job then, as a real fleet is idle when a rollout begins. A job created
        while thousands of devices were still starting counted their start-up requests
        (GetPendingJobExecutions and a start-next each) in its rollout, and their start-next
        took the job at once for some: 4.2 to 5 requests a device in round 11's runs, the
        share depending on how much the two overlapped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_looked.wait()
        self._heap.looked()

    async def settle(self, timeout: float = SETTLE_SECONDS) -> bool:
        """Return True once every device is idle (`Engine.idle`), False after `timeout`. A
        device that has reported its job still asks for its next one: counted before that,
        a rollout's requests missed the ones made after the count, and the service's own
        count was higher (CI, round 12: 69 against 70 for 20 things)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(member.device.engine.idle for member in self.devices):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(SETTLE_LOOK_SECONDS)
        return True

    def _looked(self) -> None:
        self._looks += 1
        if self._looks >= len(self.devices):
            self._all_looked.set()

    def outcomes(self, job_id: str) -> Counter[str]:
        """What the devices reported for `job_id` so far (status -> devices; an outcome the
        service refused counts as `NOT_REPORTED`, final too).

        Called every few tens of milliseconds while a rollout runs. The first call for a job
        reads what every device noted for it so far; from then on each device tells its
        outcomes as it notes them (`_noted`), so a call costs nothing per device: looking at
        the devices still working at every call cost a thing 10 engine visits in a rollout of
        1,000 things and 24 in one of 5,000, whose rollout lasts five times longer (issue 18)."""
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = JobOutcomes()
            for member in self.devices:
                for ref, note in member.device.engine.outcomes.items():
                    if ref.job_id == job_id:
                        watch.note(member.thing_name, ref, note)
        return watch.counts()

    def _noted(self, thing: str, ref: ExecutionRef, note: str) -> None:
        """A device noted an outcome (its engine's `listen_outcomes`)."""
        watch = self._watches.get(ref.job_id)
        if watch is not None:
            watch.note(thing, ref, note)

    def totals(self) -> Counter[str]:
        """Every outcome the devices reported so far, whatever the job (status -> executions)."""
        totals: Counter[str] = Counter()
        for member in self.devices:
            totals.update(member.device.engine.outcomes.values())
        return totals

    def requests(self) -> int:
        """Jobs API requests the devices made (each one answered by the service)."""
        return sum(d.device.client.stats.requests for d in self.devices)

    def surplus_replies(self) -> int:
        """Replies beyond one per request (`fleet_watch.surplus_replies`): a second service."""
        return sum(surplus_replies(d.device.client.stats) for d in self.devices)

    def unanswered(self) -> int:
        """Request attempts the devices gave up waiting for (and asked again): lost messages,
        or a service too far behind."""
        return sum(d.device.client.stats.timeouts for d in self.devices)

    def busy(self) -> int:
        """Devices at work on a job (running, deferring, awaiting a reboot): not stalled."""
        return sum(1 for d in self.devices if d.device.engine.status.state in BUSY_STATES)

    def signs(self) -> Signs:
        """`requests`, `surplus_replies`, `busy` and `unanswered` in one visit of every device: a
        `--processes` worker takes them every second of a rollout, and as four sums they were
        four visits of each of its devices (20,000 a second for 5,000 devices), O(devices^2)
        over a rollout whose time grows with the fleet (issue 18)."""
        requests = surplus = busy = unanswered = 0
        for member in self.devices:
            device = member.device
            stats = device.client.stats
            requests += stats.requests
            surplus += surplus_replies(stats)
            unanswered += stats.timeouts
            busy += device.engine.status.state in BUSY_STATES
        return Signs(requests, surplus, busy, unanswered)

    def connected(self) -> int:
        return len(self.devices)

    def failure(self) -> str | None:
        """Why the fleet cannot go on (a worker of `--processes` ended); one process: None."""
        return None

    def peak_rss_mb(self) -> float:
        return peak_rss_mb()

    def threads(self) -> int:
        return threading.active_count()

    async def stop(self) -> None:
        for member in self.devices:
            member.device.engine.request_stop(immediate=True)
        for device in self.devices:
            if device.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await device.task

        async def close(member: Member) -> None:
            device = member.device
            with contextlib.suppress(Exception):
                await device.client.close()
            with contextlib.suppress(Exception):
                await device.transport.disconnect()
            with contextlib.suppress(Exception):
                await device.store.close()

        await asyncio.gather(*(close(d) for d in self.devices))
        self.devices = []
        self._watches.clear()
        for executor in self._store_executors:
            executor.shutdown(wait=True)
        self._heap.release()  # the closed devices' cycles are garbage now


__all__ = [
    "DESCRIPTORS_PER_THING",
    "NOOP_OPERATION",
    "Fleet",
    "FleetOptions",
    "NoopHandler",
    "peak_rss_mb",
    "raise_descriptor_limit",
    "things_that_fit",
]
