"""Chaos runs: N mixed jobs through a real agent process while the driver breaks things.

    python -m benchmarks chaos --jobs 200 --seed 7 [--throttle-rate 0.05] [--json]
    python -m benchmarks.chaos --jobs 200 --seed 7        (the same, without the dispatcher)

Set-up, all real: a private mosquitto, the IoT Jobs emulator in this process (paho, straight to
mosquitto), a TCP proxy, and `python -m jobs_agent run --config ...` (the paho transport) connected
through the proxy. The jobs (quick, long with progress, resumable plugin, reboot, failing,
invalid) are queued at once; then, at seeded random moments, the driver SIGKILLs and restarts
the agent, restarts mosquitto, cuts the agent's connections at the proxy, makes the service
answer RequestThrottled to a burst of requests, and force-cancels jobs. Reboot jobs run a fake
`jobs.reboot_command` that records the request; the driver then "reboots": SIGKILL, a new boot
id in the file named by `jobs.boot_id_path`, restart.

When every job is terminal (or the fault phase times out), faults stop, the agent drains, and
the verdict is computed (`benchmarks.chaos_check`) from the service's history, the handlers'
side-effect log and `jobs-agent status --json`. The schedule is seeded, the timing is not: the
same seed gives the same jobs and the same sequence of faults, not the same interleaving.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.chaos_check import (  # noqa: E402
    TERMINAL,
    Change,
    Verdict,
    check,
    parse_side_effects,
)
from benchmarks.chaos_infra import AgentProcess, TcpProxy, kill_leftovers  # noqa: E402
from benchmarks.chaos_setup import (  # noqa: E402
    THING,
    JobSpec,
    Layout,
    agent_command,
    agent_environment,
    config_supports_boot_id_path,
    make_jobs,
    make_layout,
    write_config,
)

FAULT_DECK = ("kill", "kill", "broker", "drop", "drop", "throttle", "cancel")
"""One shuffled deck per cycle: every kind of fault recurs, in a seeded random order."""
THROTTLE_BURST_RATE = 0.5
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MAX_RESTARTS_PER_JOB = 3  # the agent's default jobs.max_agent_restarts_per_job


@dataclass
class ChaosOptions:
    jobs: int = 200
    seed: int | None = None
    throttle_rate: float = 0.05
    """Base RequestThrottled rate during the fault phase (bursts go higher)."""
    fault_interval: float = 2.0
    """Mean seconds between two faults (exponentially distributed)."""
    fault_timeout: float | None = None
    """Stop injecting faults after this long even if jobs remain (default: 3 s per job + 60)."""
    drain_timeout: float = 120.0
    min_faults: int = 0
    """Keep injecting faults until this many were injected, even once every job is terminal
    (so that a short run still sees every kind: the deck holds one of each per 7 faults)."""
    reboot: bool = True
    """Include reboot jobs (needs config `jobs.boot_id_path`; dropped, with a note, without it)."""
    workdir: Path | None = None
    keep: bool = False
    results: Path | None = RESULTS


@dataclass
class ChaosReport:
    seed: int
    jobs: int
    kills: int = 0
    broker_restarts: int = 0
    drops: int = 0
    throttle_bursts: int = 0
    throttles: int = 0
    cancels: int = 0
    reboots: int = 0
    agent_crashes: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_status: int = 0
    cancel_violations: int = 0
    stranded: int = 0
    outbox_left: int = 0
    active_left: int = 0
    interrupted: int = 0
    orphans: int = 0
    started_after_cancel: int = 0
    reboots_after_cancel: int = 0
    agent_stop_code: int | None = None
    """The agent's exit code after the drain's SIGTERM (None: it had to be killed): anything but
    0 is a failed run (a hang or a crash on shutdown)."""
    agent_status_read: bool = False
    """`jobs-agent status --json` answered after the run: without it the agent-side checks
    (stranded records, outbox, active records, outcomes it believes delivered) were not made, so
    the run cannot pass (it used to, with "stranded 0" meaning "not looked at")."""
    wall_seconds: float = 0.0
    drained: bool = False
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and self.lost == 0
            and self.duplicated == 0
            and self.wrong_status == 0
            and self.cancel_violations == 0
            and self.stranded == 0
            and self.outbox_left == 0
            and self.active_left == 0
            and self.agent_crashes == 0
            and self.agent_stop_code == 0
            and self.agent_status_read
        )

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        return (
            f"jobs {self.jobs}  kills {self.kills}  broker restarts {self.broker_restarts}"
            f"  drops {self.drops}  throttles {self.throttles} ({self.throttle_bursts} bursts)"
            f"  cancels {self.cancels}  reboots {self.reboots}\n"
            f"lost {self.lost}  duplicated {self.duplicated}  wrong status {self.wrong_status}"
            f"  cancel violations {self.cancel_violations}  outbox left {self.outbox_left}"
            f"  stranded {self.stranded}"
            f"  agent crashes {self.agent_crashes}"
            f"  agent stop code {self.agent_stop_code}"
            f"{'' if self.agent_status_read else '  agent status NOT READ'}\n"
            f"interrupted (allowed FAILED) {self.interrupted}  orphaned handlers {self.orphans}"
            f"  steps started after cancel {self.started_after_cancel}"
            f"  reboots after cancel {self.reboots_after_cancel}\n"
            f"  wall {self.wall_seconds:.1f} s  seed {self.seed}"
        )


class ChaosRun:
    def __init__(self, options: ChaosOptions, layout: Layout, seed: int) -> None:
        self.options = options
        self.layout = layout
        self.seed = seed
        self.rng = random.Random(seed)
        self.report = ChaosReport(seed=seed, jobs=options.jobs, workdir=str(layout.root))
        self.reboot_jobs = options.reboot and config_supports_boot_id_path()
        if options.reboot and not self.reboot_jobs:
            self.report.notes.append(
                "reboot jobs left out: this agent has no jobs.boot_id_path config key"
            )
        self.specs: list[JobSpec] = make_jobs(options.jobs, seed, self.rng, reboot=self.reboot_jobs)
        self.interruptions: list[float] = []
        self.cancels: dict[str, float] = {}
        self._lifecycle = asyncio.Lock()
        self._stopping = False
        self._restore_throttle: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- log of what the driver did ---------------------------------------------------------
    def fault(self, text: str) -> None:
        stamp = f"{time.time():.6f}"
        with self.layout.faults_log.open("a", encoding="utf-8") as log:
            log.write(f"{stamp} {text}\n")
        self.agent.mark(f"fault: {text}")

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> ChaosReport:
        from jobs_agent.config import ConnectionConfig
        from jobs_agent.emulator.broker import broker_transport
        from jobs_agent.emulator.embedded import Emulator
        from jobs_agent.log import configure_logging
        from tests.fixtures.broker import Mosquitto, find_mosquitto
        from tests.fixtures.certs import generate_certs

        started = time.monotonic()
        # The emulator's and transports' logs go to the work directory, not the figures' stdout.
        self._driver_log = (self.layout.root / "driver.log").open("a", encoding="utf-8")
        configure_logging("info", "json", stream=self._driver_log)
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        certs = await asyncio.to_thread(generate_certs, self.layout.root / "certs")
        self.broker = Mosquitto(binary, self.layout.root / "mosquitto", certs)
        await asyncio.to_thread(self.broker.start)
        client_id = "chaos-emulator"
        transport = broker_transport(
            ConnectionConfig(
                transport="paho",
                endpoint=self.broker.host,
                port=self.broker.port,
                tls=False,
                client_id=client_id,
                keepalive_seconds=30,
                reconnect_min_seconds=0.1,
                reconnect_max_seconds=1.0,
            ),
            client_id,
        )
        self.emulator = Emulator(transport, seed=self.seed)
        self.service = self.emulator.service
        self.proxy = TcpProxy(self.broker.host, self.broker.port)
        await self.emulator.start(connect_timeout=30.0)
        await self.proxy.start()
        write_config(self.layout, self.proxy.port, reboot=self.reboot_jobs)
        self.agent = AgentProcess(
            agent_command(self.layout, "run"),
            agent_environment(self.layout),
            self.layout.agent_log,
            self._unexpected_exit,
        )
        try:
            for spec in self.specs:
                self.service.create_job(spec.job_id, [THING], spec.document)
            self._spawn(self._reboot_watcher())
            await self.agent.start()
            await self._fault_phase()
            await self._drain()
        finally:
            self._stopping = True
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.agent.close()
            kill_leftovers(self._handler_pids())
            await self.emulator.stop()
            await self.proxy.close()
            await asyncio.to_thread(self.broker.kill)
            configure_logging("warning", "auto")
            self._driver_log.close()
        self._verdict()
        self.report.wall_seconds = time.monotonic() - started
        return self.report

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _all_terminal(self) -> bool:
        for spec in self.specs:
            execution = self.service.execution(spec.job_id, THING)
            if str(execution.status) not in TERMINAL:
                return False
        return True

    def _pending(self) -> list[tuple[str, str]]:
        """(jobId, status) of every job not yet terminal."""
        pending = []
        for spec in self.specs:
            status = str(self.service.execution(spec.job_id, THING).status)
            if status not in TERMINAL:
                pending.append((spec.job_id, status))
        return pending

    async def _fault_phase(self) -> None:
        limit = self.options.fault_timeout or 60.0 + 3.0 * self.options.jobs
        deadline = time.monotonic() + limit
        self.service.throttle_rate = self.options.throttle_rate
        deck: list[str] = []
        injected = 0
        while time.monotonic() < deadline:
            delay = self.rng.expovariate(1.0 / self.options.fault_interval)
            try:
                await self.service.wait_for(self._all_terminal, timeout=delay)
                if injected >= self.options.min_faults:
                    break  # everything is terminal: nothing left to break
                await asyncio.sleep(delay)  # the schedule's gap between two faults
            except TimeoutError:
                pass
            injected += 1
            if not deck:
                deck = list(FAULT_DECK)
                self.rng.shuffle(deck)
            await self._inject(deck.pop())
        else:
            self.report.notes.append(f"fault phase stopped after {limit:.0f} s with jobs left")

    async def _inject(self, kind: str) -> None:
        if kind == "kill":
            # Only a ready agent is killed: one still importing has done nothing a kill could
            # interrupt, and on a loaded machine, where a start takes seconds, kill after kill
            # left it no time to connect at all (the smoke run's agent made almost no requests:
            # 15 of 22 kills before READY=1, not one request throttled).
            await self.agent.wait_ready(timeout=30.0)
            target = await self._wait_for_running_handler() if self.rng.random() < 0.6 else None
            async with self._lifecycle:
                self.fault(f"kill the agent (running: {target or 'whatever it was doing'})")
                self.interruptions.append(time.time())
                if await self.agent.kill() is not None:
                    self.report.kills += 1
                await asyncio.sleep(self.rng.uniform(0.0, 0.5))  # the outage
                await self.agent.start()
        elif kind == "broker":
            graceful = self.rng.random() < 0.5
            outage = self.rng.uniform(0.2, 1.5)
            self.fault(f"{'stop' if graceful else 'kill'} mosquitto for {outage:.2f} s")
            await asyncio.to_thread(self.broker.stop if graceful else self.broker.kill)
            await asyncio.sleep(outage)  # the outage
            await asyncio.to_thread(self.broker.start)
            self.report.broker_restarts += 1
        elif kind == "drop":
            refuse = self.rng.uniform(0.0, 1.5)
            dropped = self.proxy.drop(refuse_for=refuse)
            self.fault(f"drop {dropped} agent connection(s), refuse new ones for {refuse:.2f} s")
            self.report.drops += 1
        elif kind == "throttle":
            length = self.rng.uniform(1.0, 3.0)
            self.fault(f"throttle {THROTTLE_BURST_RATE:.0%} of requests for {length:.2f} s")
            self.service.throttle_rate = THROTTLE_BURST_RATE
            if self._restore_throttle is not None:
                self._restore_throttle.cancel()
            self._restore_throttle = asyncio.get_running_loop().call_later(
                length, self._end_throttle_burst
            )
            self.report.throttle_bursts += 1
        elif kind == "cancel":
            self._cancel_one()

    async def _wait_for_running_handler(self) -> str | None:
        """Aim a kill at a long or resumable handler mid-run (random moments mostly hit idle
        gaps or quick jobs). Gives up after a few seconds; returns the job it waited for."""
        kinds = {spec.job_id: spec.kind for spec in self.specs}
        found: list[str] = []

        def long_one_running() -> bool:
            for execution in self.service.executions_for_thing(THING, status="IN_PROGRESS"):
                if kinds.get(execution.job_id) in ("long", "resumable"):
                    found.append(execution.job_id)
                    return True
            return False

        try:
            await self.service.wait_for(long_one_running, timeout=5.0)
        except TimeoutError:
            return None
        await asyncio.sleep(self.rng.uniform(0.2, 0.8))  # into the handler's run
        return found[-1]

    def _end_throttle_burst(self) -> None:
        self._restore_throttle = None
        if not self._stopping:
            self.service.throttle_rate = self.options.throttle_rate

    def _cancel_one(self) -> None:
        from jobs_agent.emulator.service import ControlError

        pending = self._pending()
        running = [job for job, status in pending if status == "IN_PROGRESS"]
        queued = [job for job, status in pending if status == "QUEUED"]
        if running and (self.rng.random() < 0.7 or not queued):
            target = running[0]
        elif queued:
            target = self.rng.choice(queued)
        else:
            return
        when = time.time()
        try:
            self.service.cancel_job(target, force=True, comment="chaos")
        except ControlError as exc:
            self.fault(f"cancel {target} refused: {exc}")
            return
        if str(self.service.execution(target, THING).status) == "CANCELED":
            self.cancels[target] = when
            self.report.cancels += 1
            self.fault(f"force-cancel {target} (was {dict(pending)[target]})")

    def _unexpected_exit(self, pid: int, code: int) -> None:
        self.report.agent_crashes += 1
        self.report.problems.append(
            {"category": "crash", "job_id": "", "detail": f"agent pid {pid} exited with {code}"}
        )
        if not self._stopping:
            self._spawn(self._restart_after_crash())

    async def _restart_after_crash(self) -> None:
        await asyncio.sleep(0.5)  # as systemd's RestartSec: no hot loop if it cannot start
        async with self._lifecycle:
            if self.agent.pid is None and not self._stopping:
                await self.agent.start()

    async def _reboot_watcher(self) -> None:
        """Act as the machine when the agent runs its reboot command: power off, new boot id."""
        seen = 0
        while True:
            await asyncio.sleep(0.05)  # polling period of a file written by another process
            lines = self.layout.reboot_requests.read_text(encoding="utf-8").splitlines()
            if len(lines) <= seen:
                continue
            seen = len(lines)
            async with self._lifecycle:
                self.fault("reboot requested: kill the agent, new boot id")
                self.interruptions.append(time.time())
                await self.agent.kill()
                self.layout.boot_id.write_text(str(uuid.uuid4()) + "\n", encoding="ascii")
                self.report.reboots += 1
                await self.agent.start()

    async def _drain(self) -> None:
        """Stop the faults, let the agent finish everything, then stop it cleanly."""
        if self._restore_throttle is not None:
            self._restore_throttle.cancel()
            self._restore_throttle = None
        self.service.throttle_rate = 0.0
        self.proxy.unblock()
        if not self.broker.running:
            await asyncio.to_thread(self.broker.start)
        self.fault("faults stopped; draining")
        try:
            await self.service.wait_for(self._all_terminal, timeout=self.options.drain_timeout)
            self.report.drained = True
        except TimeoutError:
            left = self._pending()
            self.report.notes.append(
                f"not drained after {self.options.drain_timeout:.0f} s: {left}"
            )
        # The outcome reaches the service before the agent records it as reported.
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            status = await self._agent_status()
            if status is not None and not status.get("outbox") and not status.get("running"):
                break
            await asyncio.sleep(0.2)  # polling another process's database
        async with self._lifecycle:
            self._stopping = True
            self.report.agent_stop_code = await self.agent.stop(timeout=15.0)
        self._final_status = await self._agent_status()
        self.report.agent_status_read = self._final_status is not None
        if self._final_status is None:
            self.report.notes.append("`jobs-agent status --json` failed after the run")

    async def _agent_status(self) -> dict[str, Any] | None:
        process = await asyncio.create_subprocess_exec(
            *agent_command(self.layout, "status", "--json", "--limit", "1000000"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=agent_environment(self.layout),
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            return None
        try:
            parsed: dict[str, Any] = json.loads(out)
        except ValueError:
            return None
        return parsed

    def _handler_pids(self) -> list[int]:
        text = self.layout.side_effects.read_text(encoding="utf-8")
        return sorted({e.pid for e in parse_side_effects(text) if e.pid not in self.agent.pids})

    def _verdict(self) -> None:
        history = [
            Change(
                time=h.time,
                job_id=h.job_id,
                execution_number=h.execution_number,
                to_status=str(h.to_status),
                source=str(h.source),
                status_details=dict(h.status_details),
            )
            for h in self.service.history(thing=THING)
        ]
        effects = parse_side_effects(self.layout.side_effects.read_text(encoding="utf-8"))
        verdict: Verdict = check(
            self.specs,
            history,
            effects,
            interruptions=self.interruptions,
            cancels=self.cancels,
            agent_status=self._final_status,
            max_restarts_per_job=MAX_RESTARTS_PER_JOB,
            reboot_requests=[
                float(line)
                for line in self.layout.reboot_requests.read_text(encoding="utf-8").split()
            ],
        )
        r = self.report
        r.throttles = self.service.counters["throttled"]
        r.lost = verdict.count("lost")
        r.duplicated = verdict.count("duplicated")
        r.wrong_status = verdict.count("wrong")
        r.cancel_violations = verdict.count("cancel")
        r.stranded = verdict.count("stranded")
        r.outbox_left = verdict.outbox_left
        r.active_left = verdict.active_left
        r.interrupted = verdict.interrupted
        r.orphans = verdict.orphans
        r.started_after_cancel = verdict.started_after_cancel
        r.reboots_after_cancel = verdict.reboots_after_cancel
        outcomes: dict[str, Counter[str]] = {}
        for (kind, status_name), count in sorted(verdict.outcomes.items()):
            outcomes.setdefault(kind, Counter())[status_name] += count
        r.outcomes = {kind: dict(counter) for kind, counter in outcomes.items()}
        r.problems += [
            {"category": p.category, "job_id": p.job_id, "detail": p.detail}
            for p in verdict.problems
        ]

    _final_status: dict[str, Any] | None = None

    def write_problems(self) -> Path | None:
        """For each problem: the job's service history, its side effects, the agent's log lines
        about it and the driver's marks around it, so a failure can be diagnosed without a
        re-run (the timing of a seed is not reproducible, its schedule is)."""
        if not self.report.problems:
            return None
        path = self.layout.root / "problems.txt"
        agent_log = self.layout.agent_log.read_text(encoding="utf-8", errors="replace")
        lines = agent_log.splitlines()
        effects = self.layout.side_effects.read_text(encoding="utf-8").splitlines()
        with path.open("w", encoding="utf-8") as out:
            out.write(f"seed {self.seed}; work directory {self.layout.root}\n")
            for problem in self.report.problems:
                job = problem["job_id"]
                out.write(f"\n=== {problem['category']} {job}: {problem['detail']}\n")
                history = self.service.history(job_id=job) if job else []
                if not history:
                    continue
                first, last = history[0].time - 3.0, history[-1].time + 3.0
                out.write("service history:\n")
                for h in history:
                    out.write(
                        f"  {h.time:.6f} #{h.execution_number} {h.from_status}->{h.to_status}"
                        f" by {h.source} v{h.version_number} {h.status_details}\n"
                    )
                out.write("side effects (job exec step event pid ppid time):\n")
                out.writelines(f"  {line}\n" for line in effects if line.startswith(job + " "))
                out.write("agent log (lines naming the job; driver marks near it):\n")
                for line in lines:
                    if job in line or (
                        line.startswith("### ") and _mark_between(line, first, last)
                    ):
                        out.write(f"  {line}\n")
        return path


def _mark_between(line: str, low: float, high: float) -> bool:
    try:
        stamp = float(line.split()[3].rstrip(":"))
    except (IndexError, ValueError):
        return False
    return low <= stamp <= high


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """Run one chaos run and return its figures (the work directory is kept when it failed)."""
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1 << 31)
    root = options.workdir or Path(tempfile.mkdtemp(prefix=f"jobs-agent-chaos-{seed}-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    layout = make_layout(root)
    run = ChaosRun(options, layout, seed)
    try:
        report = await run.run()
    except BaseException:
        print(f"chaos: run aborted; work directory kept at {root}", file=sys.stderr)
        raise
    problems = run.write_problems()
    if problems is not None:
        report.notes.append(f"problem details: {problems}")
    if report.ok and not options.keep and options.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
        report.workdir = ""
    return report


def append_results(report: ChaosReport, path: Path) -> None:
    """Append this run as a `## chaos` section; other benchmarks own other sections."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "PASS" if report.ok else "FAIL"
    outcomes = "; ".join(
        f"{kind}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        for kind, counts in sorted(report.outcomes.items())
    )
    text = (
        f"\n## chaos\n\n"
        f"{date}, seed {report.seed}, `python -m benchmarks chaos --jobs {report.jobs}"
        f" --seed {report.seed}`: **{verdict}**\n\n"
        "| jobs | kills | broker restarts | drops | throttles | cancels | reboots"
        " | lost | duplicated | wrong status | wall |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {report.jobs} | {report.kills} | {report.broker_restarts} | {report.drops}"
        f" | {report.throttles} | {report.cancels} | {report.reboots} | {report.lost}"
        f" | {report.duplicated} | {report.wrong_status} | {report.wall_seconds:.1f} s |\n\n"
        f"Outcomes: {outcomes}. Allowed FAILED after a kill: {report.interrupted};"
        f" cancel violations {report.cancel_violations}; stranded records {report.stranded};"
        f" outbox left {report.outbox_left};"
        f" agent crashes {report.agent_crashes}.\n"
    )
    for note in report.notes:
        if not note.startswith("problem details"):
            text += f"Note: {note}\n"
    with path.open("a", encoding="utf-8") as results:
        results.write(text)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m benchmarks chaos",
        description="Run N mixed jobs through a real agent while killing it, restarting the "
        "broker, dropping its connection, throttling and force-cancelling; then check that no "
        "job was lost or duplicated and every status is one the rules allow.",
    )
    parser.add_argument("--jobs", type=int, default=200, help="number of jobs (default 200)")
    parser.add_argument("--seed", type=int, help="seed of the job mix and fault schedule")
    parser.add_argument(
        "--throttle-rate",
        type=float,
        default=0.05,
        help="fraction of device requests answered RequestThrottled during the fault phase "
        f"(default 0.05; bursts use {THROTTLE_BURST_RATE})",
    )
    parser.add_argument(
        "--fault-interval",
        type=float,
        default=2.0,
        help="mean seconds between two faults (default 2)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds to wait for the drain"
    )
    parser.add_argument(
        "--min-faults",
        type=int,
        default=0,
        help="inject at least this many faults even if the jobs finish first (default 0)",
    )
    parser.add_argument("--no-reboot", action="store_true", help="leave reboot jobs out")
    parser.add_argument("--workdir", type=Path, help="work directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help=f"append the figures to this file (default {RESULTS.relative_to(REPO)})",
    )
    parser.add_argument("--no-results", action="store_true", help="do not append the figures")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print("chaos: --jobs must be at least 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.throttle_rate <= 1.0:
        print("chaos: --throttle-rate must be between 0 and 1", file=sys.stderr)
        return 2
    options = ChaosOptions(
        jobs=args.jobs,
        seed=args.seed,
        throttle_rate=args.throttle_rate,
        fault_interval=args.fault_interval,
        drain_timeout=args.drain_timeout,
        min_faults=args.min_faults,
        reboot=not args.no_reboot,
        workdir=args.workdir,
        keep=args.keep,
        results=None if args.no_results else args.results,
    )
    report = asyncio.run(run_chaos(options))
    if options.results is not None:
        append_results(report, options.results)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(report.summary())
        for kind, counts in sorted(report.outcomes.items()):
            print(f"  {kind:<10} " + "  ".join(f"{s} {n}" for s, n in sorted(counts.items())))
        for problem in report.problems[:20]:
            print(f"  PROBLEM {problem['category']} {problem['job_id']}: {problem['detail']}")
        for note in report.notes:
            print(f"  note: {note}")
        print("PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
