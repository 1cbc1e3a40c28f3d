"""`jobs-agent sim fleet`'s process plumbing: the descriptor check every fleet process makes,
and the two sides of `--processes` on the command line (the parent's worker command, the
worker's own run). The spreading itself is `jobs_agent.sim.fleet_workers`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs_agent.cli import EXIT_FAILURE, UsageError


def worker_share(args: argparse.Namespace) -> range | None:
    """--worker's share of the thing numbers (a worker of `--processes`), or None."""
    if args.worker is None:
        return None
    from jobs_agent.sim.fleet_workers import parse_share

    try:
        share = parse_share(args.worker)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if share.start < 1 or share.stop - 1 > args.things:
        raise UsageError(f"--worker {args.worker}: outside 1..{args.things}")
    if args.state_dir is None:
        raise UsageError("--worker needs --state-dir")
    return share


def check_descriptors(args: argparse.Namespace, share: range | None) -> None:
    """Refuse, before connecting anything, a fleet whose processes would run out of file
    descriptors half-way through connecting (the soft limit is raised to the hard one first)."""
    from jobs_agent.sim.fleet import DESCRIPTORS_PER_THING, raise_descriptor_limit, things_that_fit

    limit = raise_descriptor_limit()
    per_process = len(share) if share is not None else -(-args.things // args.processes)
    fit = things_that_fit(limit)
    if per_process > fit:
        raise UsageError(
            f"{per_process} things in one process need about"
            f" {per_process * DESCRIPTORS_PER_THING} file descriptors ({DESCRIPTORS_PER_THING}"
            f" per thing) and the limit here is {limit} (ulimit -Hn): at most {fit} things per"
            f" process; use --processes {-(-args.things // max(1, fit))} or more"
        )


def worker_command(args: argparse.Namespace, state_dir: Path) -> list[str]:
    """The command line of a --processes worker, without its --worker share: the same devices'
    settings, the parent's state directory and job id, and no emulator (the parent has it)."""
    command = [sys.executable, "-m", "jobs_agent", "sim", "fleet"]
    command += ["--things", str(args.things), "--prefix", args.prefix]
    command += ["--broker-host", args.broker_host, "--broker-port", str(args.broker_port)]
    for flag, value in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--handler-dir", str(args.handler_dir.resolve())]
    for spec in args.handler:
        command += ["--handler", spec]
    command += ["--state-dir", str(state_dir), "--log-level", args.log_level]
    command += ["--connect-concurrency", str(args.connect_concurrency)]
    # The parent keeps the time; a worker's own limit only backs it up.
    command += ["--timeout", str(args.timeout + 60.0)]
    if args.job_id is not None:
        command += ["--job-id", args.job_id]
    else:
        command += ["--no-job"]
    return command


async def worker_async(args: argparse.Namespace, share: range, handlers: dict[str, str]) -> int:
    """One worker of `--processes`: its share of the devices, reporting to the parent."""
    import asyncio
    import dataclasses
    import signal

    from jobs_agent.commands.sim_fleet import _connection, _options
    from jobs_agent.sim.fleet import Fleet
    from jobs_agent.sim.fleet_workers import run_worker
    from jobs_agent.transport.base import TransportError

    options = _options(args, _connection(args), args.state_dir, handlers)
    fleet = Fleet(dataclasses.replace(options, members=share))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_worker(fleet, None if args.no_job else args.job_id, args.timeout, stop)
    except (TransportError, OSError) as exc:
        print(f"jobs-agent sim fleet --worker {args.worker}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await fleet.stop()
