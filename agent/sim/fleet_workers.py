"""`sim fleet --processes N`: the fleet split over N worker processes, one report.

One event loop is one core: past a few thousand devices a fleet is CPU-bound in one process, and
descriptors run out (`fleet.DESCRIPTORS_PER_THING`). The parent (which also hosts the emulator
when there is no --endpoint) starts N `jobs-agent sim fleet --worker FIRST:LAST` processes, each
a `Fleet` of its share of the thing numbers, named as in a one-process fleet. A worker speaks
JSON lines on its stdout (`connected`, then `progress` whenever its counts change, then `done`);
the parent adds them up into the same progress lines and summary as one process.

Lifetime: the parent stops its workers with SIGTERM (on its own SIGINT/SIGTERM, a timeout, or
the end of the rollout), then SIGKILL after `STOP_GRACE_SECONDS`, and reaps every one. A worker
also stops when its stdin reaches end-of-file: the parent holds the other end, so a parent that
dies, even by SIGKILL, leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs_agent.sim.fleet import Fleet, FleetOptions, peak_rss_mb
from jobs_agent.sim.fleet_watch import FINAL

STOP_GRACE_SECONDS = 45.0
"""How long a worker has to close its devices after SIGTERM before it is killed: longer than
a Jobs request's timeout (30 s), which a device waits out when stopped with one in flight."""
REPORT_SECONDS = 0.05
"""How often a worker looks at its devices' outcomes (and writes a line if they changed)."""
SIGNS_EVERY = 20
"""Every this many looks (a second), a worker also takes the signs of life the parent's watchdog
reads, in one visit of every device of the worker (`_signs`; four sums, four visits, before).
Taken at every look, they were four visits of every device 20 times a second: O(devices) a look,
O(devices^2) over a rollout whose time grows with the fleet (issue 18, round 17: a worker of
5,000 devices made 400,000 engine visits a second), as in the one-process watch before
`sim_fleet._SCAN_EVERY`. The parent
reads them once a second too, against a stall timeout of minutes; the line that says the
worker's devices are all done takes them afresh."""


def shares(things: int, processes: int) -> list[range]:
    """Thing numbers 1..things in `processes` contiguous shares differing by at most one."""
    size, extra = divmod(things, processes)
    result: list[range] = []
    first = 1
    for index in range(processes):
        count = size + (1 if index < extra else 0)
        result.append(range(first, first + count))
        first += count
    return [r for r in result if len(r)]


def parse_share(text: str) -> range:
    """`FIRST:LAST` (1-based, inclusive), as the parent writes it."""
    first, sep, last = text.partition(":")
    if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        raise ValueError(f"--worker expects FIRST:LAST, not {text!r}")
    return range(int(first), int(last) + 1)


# -- the worker side ---------------------------------------------------------------------------


def _counts(fleet: Fleet, job_id: str | None) -> Counter[str]:
    return fleet.outcomes(job_id) if job_id is not None else fleet.totals()


def _write(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


async def _stdin_closed() -> None:
    """Returns when stdin reaches end-of-file: the parent is gone (or wants the worker gone)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


def _signs(fleet: Fleet, requests_at_start: int) -> dict[str, int]:
    """The signs of life the parent's watchdog reads (requests, surplus replies, busy devices,
    unanswered requests), taken in one visit of every device (`Fleet.signs`; see
    `SIGNS_EVERY`)."""
    signs = fleet.signs()
    return {
        "requests": signs.requests - requests_at_start,
        "surplus_replies": signs.surplus_replies,
        "busy": signs.busy,
        "unanswered": signs.unanswered,
    }


def _report(fleet: Fleet, job_id: str | None, requests_at_start: int) -> dict[str, Any]:
    """What a worker tells the parent: outcomes, and the signs of life taken now."""
    return {"outcomes": dict(_counts(fleet, job_id)), **_signs(fleet, requests_at_start)}


async def run_worker(fleet: Fleet, job_id: str | None, timeout: float, stop: asyncio.Event) -> int:
    """Start this share of the fleet and report on stdout until its devices all reported
    `job_id` (or, without one, until stopped). 0: every device of the share SUCCEEDED."""
    lifeline = asyncio.create_task(_stdin_closed())
    lifeline.add_done_callback(lambda _: stop.set())
    try:
        await fleet.start(timeout=60.0)
        _write({"event": "connected", "devices": len(fleet.devices)})
        if job_id is not None:
            await fleet.first_look(timeout=60.0)
            _write({"event": "looked"})
        requests_at_start = fleet.requests()
        settled = False
        last: dict[str, Any] | None = None
        signs: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for look in itertools.count():
            outcomes = dict(_counts(fleet, job_id))
            done = sum(n for status, n in outcomes.items() if status in FINAL)
            finished = job_id is not None and done >= len(fleet.devices)
            if look % SIGNS_EVERY == 0 or finished:  # the parent's last look reads them
                signs = _signs(fleet, requests_at_start)
            report: dict[str, Any] = {"outcomes": outcomes, **signs}
            if report != last:
                last = report
                _write({"event": "progress", **report})
            if finished:
                settled = await fleet.settle()  # its last requests, counted in "done"
                break
            if stop.is_set() or loop.time() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_SECONDS):
                    await stop.wait()
        report = _report(fleet, job_id, requests_at_start)
        _write(
            {
                "event": "done",
                **report,
                "settled": settled,
                "peak_rss_mb": peak_rss_mb(),
                "threads": threading.active_count(),
            }
        )
        if job_id is None:
            return 0
        return 0 if report["outcomes"].get("SUCCEEDED", 0) == len(fleet.devices) else 1
    finally:
        lifeline.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await lifeline


# -- the parent side ---------------------------------------------------------------------------


class WorkerFailed(Exception):
    """A worker ended before it was asked to, or said something the parent cannot read."""


@dataclass
class Worker:
    share: range
    process: asyncio.subprocess.Process
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    looked: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    surplus_replies: int = 0
    busy: int = 0
    unanswered: int = 0
    peak_rss_mb: float = 0.0
    threads: int = 0
    settled: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Its last report ("done") is in."""
    reader: asyncio.Task[None] | None = None


class FleetWorkers:
    """The parent's handle on its workers: their commands are built by the caller."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.failed: asyncio.Event = asyncio.Event()
        self.failure: str | None = None

    async def start(self, commands: Sequence[tuple[range, Sequence[str]]]) -> None:
        for share, command in commands:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the workers' logs go where the parent's go
            )
            worker = Worker(share, process)
            worker.reader = asyncio.create_task(self._read(worker))
            self.workers.append(worker)

    def _fail(self, text: str) -> None:
        if self.failure is None:
            self.failure = text
        self.failed.set()

    async def _read(self, worker: Worker) -> None:
        stream = worker.process.stdout
        assert stream is not None
        name = f"worker {worker.share.start}:{worker.share.stop - 1}"
        while line := await stream.readline():
            try:
                message = json.loads(line)
                event = message["event"]
                if event in ("connected", "looked"):
                    getattr(worker, event).set()
                    continue
                worker.outcomes = Counter(message["outcomes"])
                worker.requests = int(message["requests"])
                worker.surplus_replies = int(message["surplus_replies"])
                worker.busy = int(message["busy"])
                worker.unanswered = int(message["unanswered"])
                if event == "done":
                    worker.peak_rss_mb = float(message["peak_rss_mb"])
                    worker.threads = int(message["threads"])
                    worker.settled = bool(message["settled"])
                    worker.finished.set()
            except (ValueError, KeyError, TypeError):
                self._fail(f"{name} wrote {line[:200]!r}, not a report")
                return
        code = await worker.process.wait()
        if not worker.finished.is_set():
            self._fail(f"{name} ended (exit status {code}) before its devices were done")

    async def connected(self, stop: asyncio.Event, what: str = "connected") -> None:
        """Every worker connected its devices (each gives up on a connection by itself, after
        the connect timeout), or with `what="looked"` its devices looked for work, or with
        `what="finished"` wrote its last report; raises `WorkerFailed` if one ended first or
        `stop` was set."""

        async def all_connected() -> None:
            for worker in self.workers:
                await getattr(worker, what).wait()

        async def one_failed() -> None:
            await self.failed.wait()

        async def stopped() -> None:
            await stop.wait()

        tasks = [
            asyncio.create_task(all_connected()),
            asyncio.create_task(one_failed()),
            asyncio.create_task(stopped()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.failure is not None:
            raise WorkerFailed(self.failure)
        if stop.is_set():
            raise WorkerFailed(f"stopped while the workers' devices were not all {what} yet")

    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for worker in self.workers:
            total.update(worker.outcomes)
        return total

    def requests(self) -> int:
        return sum(w.requests for w in self.workers)

    def surplus_replies(self) -> int:
        return sum(w.surplus_replies for w in self.workers)

    def busy(self) -> int:
        return sum(w.busy for w in self.workers)

    def unanswered(self) -> int:
        return sum(w.unanswered for w in self.workers)

    def peak_rss_mb(self) -> float:
        """The workers' peaks and the parent's, added up (the fleet's memory, not one process's)."""
        return round(sum(w.peak_rss_mb for w in self.workers) + peak_rss_mb(), 1)

    def threads(self) -> int:
        return sum(w.threads for w in self.workers) + threading.active_count()

    async def finish(self) -> None:
        """Stop every worker (end-of-file on its stdin and SIGTERM: a worker whose share is done
        is already on its way out), SIGKILL what is left after the grace period, reap all."""
        for worker in self.workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
            _signal(worker.process, signal.SIGTERM)
        pending = [asyncio.create_task(w.process.wait()) for w in self.workers]
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            if late:
                for worker in self.workers:
                    _signal(worker.process, signal.SIGKILL)
                await asyncio.gather(*late)
        readers = [w.reader for w in self.workers if w.reader is not None]
        await asyncio.gather(*readers, return_exceptions=True)


class SpreadFleet:
    """What `sim fleet` asks of a `Fleet`, answered by `processes` workers: `command` is a
    worker's command line, to which each worker's `--worker FIRST:LAST` is added."""

    def __init__(
        self,
        options: FleetOptions,
        command: Sequence[str],
        processes: int,
        stop: asyncio.Event,
    ) -> None:
        """`stop`: set by SIGINT/SIGTERM, it also ends the wait for the workers to connect."""
        self.options = options
        self._stop = stop
        self._command = list(command)
        self._processes = processes
        self._workers = FleetWorkers()

    @property
    def thing_names(self) -> list[str]:
        return [self.options.thing_name(i) for i in self.options.numbers]

    async def start(self, timeout: float = 60.0) -> None:
        commands = [
            (share, [*self._command, "--worker", f"{share.start}:{share.stop - 1}"])
            for share in shares(self.options.things, self._processes)
        ]
        await self._workers.start(commands)
        await self._workers.connected(self._stop)

    async def first_look(self, timeout: float = 60.0) -> None:
        """Every worker's devices looked for work (each worker bounds its own wait)."""
        await self._workers.connected(self._stop, "looked")

    async def settle(self, timeout: float = 60.0) -> bool:
        """Every worker wrote its last report, counted once its devices were idle (each
        worker bounds that wait); whether all of them were. Summed before, the workers'
        counts missed what a worker reported after the parent saw the rollout end."""
        try:
            await self._workers.connected(self._stop, "finished")
        except WorkerFailed:
            return False
        return all(w.settled for w in self._workers.workers)

    def connected(self) -> int:
        return sum(len(w.share) for w in self._workers.workers if w.connected.is_set())

    def outcomes(self, job_id: str) -> Counter[str]:
        """The workers watch the one job they were started for: `job_id` is that one."""
        return self._workers.outcomes()

    def totals(self) -> Counter[str]:
        return self._workers.outcomes()

    def requests(self) -> int:
        return self._workers.requests()

    def surplus_replies(self) -> int:
        return self._workers.surplus_replies()

    def busy(self) -> int:
        return self._workers.busy()

    def unanswered(self) -> int:
        return self._workers.unanswered()

    def failure(self) -> str | None:
        return self._workers.failure

    def peak_rss_mb(self) -> float:
        return self._workers.peak_rss_mb()

    def threads(self) -> int:
        return self._workers.threads()

    async def stop(self) -> None:
        await self._workers.finish()


def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


__all__ = [
    "FleetWorkers",
    "SpreadFleet",
    "WorkerFailed",
    "parse_share",
    "run_worker",
    "shares",
]
