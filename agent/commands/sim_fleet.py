"""`jobs-agent sim fleet`: N real devices, in this process or spread over worker processes
(`--processes`), rolling a job out through a broker."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import uuid
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

from jobs_agent.cli import EXIT_FAILURE, EXIT_OK, UsageError
from jobs_agent.commands.sim_fleet_workers import (
    check_descriptors,
    worker_async,
    worker_command,
    worker_share,
)
from jobs_agent.commands.sim_http import ApiError, call


def register_fleet(sim: Any) -> None:
    fleet = sim.add_parser(
        "fleet",
        help="simulate N devices (real agent engines) and roll a job out to them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rehearse a rollout locally: start N devices in this process, each the real "
        "agent engine with its own thing name, MQTT connection and state database, against the "
        "emulator through an MQTT broker; create one job targeting all of them; print progress "
        "until every execution ended, then a summary (time, outcomes, request rate, memory).",
        epilog="""examples:
  # a broker on 127.0.0.1:1883 is all it needs (an emulator is started in this process)
  jobs-agent sim fleet --things 200
  # your own document and handlers, against a running `jobs-agent sim serve`
  jobs-agent sim fleet --things 50 --endpoint http://127.0.0.1:8765 \\
      --document update.json --handler-dir ./handlers
  # only the devices: create jobs yourself (sim create-job --thing fleet-0001 ...)
  jobs-agent sim fleet --things 20 --endpoint http://127.0.0.1:8765 --no-job
  # 10,000 devices over 2 worker processes (one event loop per core)
  jobs-agent sim fleet --things 10000 --processes 2

One Jobs service per broker: a second one (a `sim serve` left running) answers every request
too; the fleet sees the extra replies and stops, saying so. Unanswered requests (a broker past
its max_queued_messages drops what is queued for the emulator) are reported; a rollout in which
nothing moves for --stall-timeout seconds stops with what the devices and the service hold.

Each device holds 3 file descriptors (its socket, database and WAL); the soft limit is raised to
the hard one (ulimit -Hn) and a fleet too big for one process is refused with how many fit.

exit status: 0 when every execution SUCCEEDED, 1 otherwise (or on timeout), 2 on bad usage.""",
    )
    fleet.add_argument("--things", type=int, default=10, metavar="N", help="devices (default 10)")
    fleet.add_argument(
        "--prefix",
        default="fleet-",
        help="thing name prefix; things are PREFIX0001..PREFIXN (default fleet-)",
    )
    fleet.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host")
    fleet.add_argument("--broker-port", type=int, default=1883, help="MQTT broker port")
    fleet.add_argument("--ca", type=Path, help="CA certificate for the broker's TLS (enables TLS)")
    fleet.add_argument("--cert", type=Path, help="device certificate (mTLS), shared by all")
    fleet.add_argument("--key", type=Path, help="device private key (mTLS)")
    _job_arguments(fleet)
    _run_arguments(fleet)
    fleet.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="spread the devices over N worker processes, one event loop each (default 1: all "
        "in this process); the report is the same",
    )
    # Internal: how the parent of --processes starts a worker with its share of the things.
    fleet.add_argument("--worker", metavar="FIRST:LAST", help=argparse.SUPPRESS)
    fleet.set_defaults(func=_fleet)


def _job_arguments(fleet: Any) -> None:
    fleet.add_argument(
        "--endpoint",
        help="HTTP endpoint of a running `sim serve` to create the job through; without it an "
        "emulator is started in this process on the same broker",
    )
    fleet.add_argument(
        "--document",
        type=Path,
        help="job document file (JSON); default: the built-in no-op "
        '{"operation": "fleet-noop"}, which succeeds at once',
    )
    fleet.add_argument("--job-id", help="job id (default: a random one)")
    fleet.add_argument(
        "--no-job",
        action="store_true",
        help="create no job: run the devices until SIGINT, printing what they report",
    )
    fleet.add_argument(
        "--handler-dir",
        type=Path,
        default=Path("handlers"),
        help="executables the document may name (jobs.handler_dir; default ./handlers)",
    )
    fleet.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="a Python plugin handler (config `handlers:`), repeatable",
    )


def _run_arguments(fleet: Any) -> None:
    fleet.add_argument(
        "--state-dir",
        type=Path,
        help="where each device keeps its state (STATE_DIR/THING/state.db); default: a "
        "temporary directory removed at exit",
    )
    fleet.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up when the rollout takes longer (default 300)",
    )
    fleet.add_argument(
        "--connect-concurrency",
        type=int,
        default=64,
        metavar="N",
        help="connections set up at once (default 64)",
    )
    fleet.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="stop, saying what is missing, when no device made a Jobs request, reported or ran "
        "a job for this long (default 120, above the devices' 30 s request timeout; 0: never)",
    )
    fleet.add_argument(
        "--progress-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between progress lines (default 1; 0: none)",
    )
    fleet.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log level of the devices (default warning: N devices log N times)",
    )
    fleet.add_argument("--json", action="store_true", help="print the summary as JSON")


def _fleet(args: argparse.Namespace) -> int:
    import asyncio

    if args.things < 1:
        raise UsageError("--things must be at least 1")
    if not 1 <= args.processes <= args.things:
        raise UsageError("--processes must be between 1 and --things")
    share = worker_share(args)
    if args.timeout <= 0 or args.progress_interval < 0 or args.connect_concurrency < 1:
        raise UsageError("--timeout and --connect-concurrency must be positive")
    if args.stall_timeout < 0:
        raise UsageError("--stall-timeout must be 0 (never) or positive")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if args.no_job and args.document:
        raise UsageError("--no-job creates no job, so --document has no use")
    handlers = _handlers(args.handler)
    document = _document(args.document)
    if args.endpoint is not None and not args.endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http(s) URL, not {args.endpoint!r}")
    check_descriptors(args, share)
    from jobs_agent.log import configure_logging

    configure_logging(args.log_level, "console" if sys.stderr.isatty() else "json")
    if share is not None:
        return asyncio.run(worker_async(args, share, handlers))
    return asyncio.run(_fleet_async(args, document, handlers))


def _handlers(specs: list[str]) -> dict[str, str]:
    handlers: dict[str, str] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or not name or ":" not in target:
            raise UsageError(f"--handler {spec!r}: expected NAME=MODULE:CLASS")
        handlers[name] = target
    return handlers


def _document(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"operation": "fleet-noop"}
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return parsed


async def _fleet_async(
    args: argparse.Namespace, document: dict[str, Any], handlers: dict[str, str]
) -> int:
    import asyncio
    import shutil
    import signal
    import tempfile

    from jobs_agent.sim.fleet import Fleet
    from jobs_agent.sim.fleet_workers import SpreadFleet, WorkerFailed
    from jobs_agent.transport.base import TransportError

    connection = _connection(args)
    temporary = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="jobs-agent-fleet-")) if temporary else args.state_dir
    if not args.no_job and args.job_id is None:
        args.job_id = f"fleet-{uuid.uuid4().hex[:12]}"
    options = _options(args, connection, state_dir, handlers)
    stop = asyncio.Event()
    fleet: Any = (
        SpreadFleet(options, worker_command(args, state_dir), args.processes, stop)
        if args.processes > 1
        else Fleet(options)
    )
    emulator: Any = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = time.monotonic()
    try:
        emulator = await _local_emulator(args, connection)
        return await _roll_out(args, fleet, emulator, document, stop, start)
    except (TransportError, OSError, ApiError, WorkerFailed) as exc:
        print(f"jobs-agent sim fleet: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await fleet.stop()
        if emulator is not None:
            await emulator.stop()
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


def _connection(args: argparse.Namespace) -> Any:
    from jobs_agent.transport.options import PahoOptions

    return PahoOptions(
        endpoint=args.broker_host,
        port=args.broker_port,
        tls=args.ca is not None or args.cert is not None,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        keepalive_seconds=300,
    )


def _options(
    args: argparse.Namespace, connection: Any, state_dir: Path, handlers: dict[str, str]
) -> Any:
    from jobs_agent.config import JobsConfig
    from jobs_agent.sim.fleet import FleetOptions

    return FleetOptions(
        things=args.things,
        connection=connection,
        state_dir=state_dir,
        prefix=args.prefix,
        jobs=JobsConfig(handler_dir=args.handler_dir.resolve()),
        handlers=handlers,
        connect_concurrency=args.connect_concurrency,
    )


def _printer(args: argparse.Namespace) -> Any:
    def out(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    return out


async def _local_emulator(args: argparse.Namespace, connection: Any) -> Any:
    """Without --endpoint (and with a job to create), an emulator in this process."""
    if args.endpoint is not None or args.no_job:
        return None
    from jobs_agent.emulator.broker import broker_transport
    from jobs_agent.emulator.embedded import Emulator

    client_id = f"aws-iot-jobs-emulator-{uuid.uuid4().hex[:6]}"
    emulator = Emulator(
        broker_transport(dataclass_replace(connection, client_id=client_id), client_id)
    )
    await emulator.start(connect_timeout=30.0)
    _printer(args)(f"emulator: in this process, on {args.broker_host}:{args.broker_port}")
    return emulator


async def _roll_out(
    args: argparse.Namespace,
    fleet: Any,
    emulator: Any,
    document: dict[str, Any],
    stop: Any,
    start: float,
) -> int:
    out = _printer(args)
    out(f"connecting {args.things} devices ({fleet.thing_names[0]}..{fleet.thing_names[-1]})")
    await fleet.start(timeout=60.0)
    connected = time.monotonic() - start
    out(f"connected {fleet.connected()} devices in {connected:.1f} s")
    if args.no_job:
        return await _fleet_serve(args, fleet, stop, out)
    await fleet.first_look(timeout=60.0)
    looked = time.monotonic() - start - connected
    out(f"every device looked for work in {looked:.1f} s")
    job_id = args.job_id
    requests_before = fleet.requests()
    created = time.monotonic()
    await _create(args, emulator, fleet.thing_names, job_id, document)
    out(f"created job {job_id} for {args.things} things")
    finished, counts, problem = await _watch(args, fleet, emulator, job_id, created, stop)
    rollout = finished if finished is not None else time.monotonic() - created
    settled = finished is not None and await fleet.settle()  # requests after a report count
    problem = fleet.failure() or problem
    if problem is not None:
        out(f"stopped: {problem}")
    if fleet.unanswered():
        from jobs_agent.sim.fleet_watch import unanswered_warning

        out(unanswered_warning(fleet.unanswered()))
    summary = _summary(args, fleet, emulator, job_id, counts, requests_before)
    summary.update(
        problem=problem,
        connect_seconds=round(connected, 3),
        first_look_seconds=round(looked, 3),
        rollout_seconds=round(rollout, 3),
        finished=finished is not None,
        settled=settled,
        requests_per_second=(round(summary["requests"] / rollout, 1) if rollout > 0 else None),
    )
    _print_summary(args, summary, counts, connected, rollout)
    ok = finished is not None and counts.get("SUCCEEDED", 0) == args.things
    return EXIT_OK if ok else EXIT_FAILURE


async def _create(
    args: argparse.Namespace,
    emulator: Any,
    things: list[str],
    job_id: str,
    document: dict[str, Any],
) -> None:
    import asyncio

    if emulator is not None:
        emulator.service.create_job(job_id, things, document)
        return
    body = {
        "targets": [f"arn:aws:iot:us-east-1:123456789012:thing/{t}" for t in things],
        "document": json.dumps(document),
    }
    await asyncio.to_thread(call, args.endpoint, "PUT", f"/jobs/{urllib.parse.quote(job_id)}", body)


async def _watch(
    args: argparse.Namespace, fleet: Any, emulator: Any, job_id: str, created: float, stop: Any
) -> tuple[float | None, Any, str | None]:
    """Follow the outcomes until every device reported, the timeout, a stop signal, or the
    watchdog's word that the rollout cannot go on (`sim.fleet_watch`): that is the third."""
    import asyncio
    import contextlib

    from jobs_agent.sim.fleet_watch import FINAL, Watchdog, explain

    out = _printer(args)
    finished: float | None = None
    counts: Any = {}
    printed = -1.0
    watchdog = Watchdog(args.stall_timeout, time.monotonic())
    requests = surplus = ticks = 0
    while True:
        counts = fleet.outcomes(job_id)
        done = sum(n for status, n in counts.items() if status in FINAL)
        if ticks % _SCAN_EVERY == 0 or done >= args.things:  # and before it says "done"
            requests, surplus = fleet.requests(), fleet.surplus_replies()
        ticks += 1
        problem = watchdog.check(counts, requests, surplus, fleet.busy, time.monotonic())
        if problem is not None and (done < args.things or surplus > 0):
            things = fleet.thing_names
            service = None if emulator is None else emulator.service
            return None, counts, explain(problem, watchdog, counts, service, job_id, things)
        elapsed = time.monotonic() - created
        if done >= args.things:
            finished = elapsed
        due = args.progress_interval and elapsed - printed >= args.progress_interval
        if due or finished is not None:
            printed = elapsed
            out(
                f"[{elapsed:6.1f} s] "
                + " ".join(f"{s} {counts.get(s, 0)}" for s in _SHOWN)
                + "".join(f" {s} {n}" for s, n in sorted(counts.items()) if s not in _SHOWN)
                + f" pending {args.things - done}"
            )
        if finished is not None or elapsed > args.timeout or stop.is_set() or fleet.failure():
            return finished, counts, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WATCH_SECONDS):
                await stop.wait()


def _summary(
    args: argparse.Namespace,
    fleet: Any,
    emulator: Any,
    job_id: str,
    counts: Any,
    requests_before: int,
) -> dict[str, Any]:
    service_requests = None
    if emulator is not None:
        service_requests = sum(n for k, n in emulator.service.counters.items() if k != "throttled")
    return {
        "job_id": job_id,
        "things": args.things,
        "outcomes": dict(counts),
        "requests": fleet.requests() - requests_before,
        "unanswered_requests": fleet.unanswered(),
        "emulator_requests": service_requests,
        "peak_rss_mb": fleet.peak_rss_mb(),
        "threads": fleet.threads(),
        "processes": args.processes,
    }


def _print_summary(
    args: argparse.Namespace, summary: dict[str, Any], counts: Any, connected: float, rollout: float
) -> None:
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    state = "done" if summary["finished"] else "NOT finished"
    print(
        f"{state}: {counts.get('SUCCEEDED', 0)}/{args.things} SUCCEEDED in {rollout:.1f} s"
        f" (connect {connected:.1f} s); {summary['requests']} Jobs requests,"
        f" {summary['requests_per_second']}/s; peak RSS {summary['peak_rss_mb']} MB;"
        f" {summary['threads']} threads"
    )


_SHOWN = ("SUCCEEDED", "FAILED")
_WATCH_SECONDS = 0.05
"""How often the devices' outcomes are looked at (the rollout time's resolution)."""
_SCAN_EVERY = 20
"""Every this many looks, the watchdog's signs that visit every device (requests made, replies
no request waited for) are taken too: at every look they cost the fleet's loop O(devices) 20
times a second, O(devices^2) over a rollout whose time grows with the fleet (issue 18: 1,000
things, 20 ms a look under load). A second service or a stall is still seen within a second of
looks, against a stall timeout of minutes, and always at the look that finds every device done:
a rollout that ended with a second service answering fails, naming it."""


async def _fleet_serve(args: argparse.Namespace, fleet: Any, stop: Any, out: Any) -> int:
    """--no-job: report what the devices do until SIGINT/SIGTERM."""
    import asyncio
    import contextlib
    from collections import Counter

    out(
        f"ready: create jobs for things {fleet.thing_names[0]}..{fleet.thing_names[-1]}"
        f" (e.g. jobs-agent sim create-job --thing {fleet.thing_names[0]} --document DOC);"
        " Ctrl-C to stop"
    )
    last: Counter[str] = Counter()
    while not stop.is_set() and fleet.failure() is None:
        totals = fleet.totals()
        if totals != last:
            out("reported: " + " ".join(f"{s} {n}" for s, n in sorted(totals.items())))
            last = totals
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.progress_interval or 1.0):
                await stop.wait()
    if fleet.failure() is not None:
        out(f"stopped: {fleet.failure()}")
        return EXIT_FAILURE
    return EXIT_OK
