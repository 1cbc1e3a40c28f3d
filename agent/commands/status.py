"""`jobs-agent status`: whether the agent is alive, what it is doing and has done.

Read-only and independent of the running daemon: liveness comes from the instance lock (held
by the kernel for exactly as long as the agent process lives, so a `kill -9` shows at once),
the connection and last heartbeat from the file the daemon refreshes (`agent.json`), jobs from
the SQLite database. It works while the agent is stopped, crashed or offline: exactly when an
operator needs it.

Exit status: 0 when the status was shown (whether or not the agent runs: see `agent` in
`--json`), 1 when there is nothing to show (no database at `state_dir`), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

from jobs_agent.commands.common import add_config_argument, load_config_or_exit
from jobs_agent.datamodel import model

EXIT_SHOWN = 0
EXIT_NO_DATABASE = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show whether the agent runs, the running job, the outbox and recent outcomes",
        description="Show whether the agent is alive (the process holding the state "
        "directory's lock, its last heartbeat and connection), the running job (step, "
        "progress, output log), status updates waiting in the outbox and recent outcomes. "
        "Exit 0 when shown, 1 without a state database.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--limit", type=int, default=20, help="recent outcomes to show")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="show the status again every SECONDS (default 2) until interrupted",
    )
    parser.set_defaults(func=_status)


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _status(args: argparse.Namespace) -> int:
    import sys

    config = load_config_or_exit(args)
    if args.watch is None:
        return _show(config, args, sys.stdout)
    if args.watch <= 0:
        from jobs_agent.cli import UsageError

        raise UsageError("--watch: expected a number of seconds above 0")
    while True:
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: a live view
        _show(config, args, sys.stdout)  # without a database yet: keep watching for it
        sys.stdout.write(f"\n(every {args.watch:g} s; Ctrl-C to stop)\n")
        sys.stdout.flush()
        time.sleep(args.watch)


def _liveness(state_dir: Path) -> dict[str, Any]:
    from jobs_agent.engine.heartbeat import read_heartbeat
    from jobs_agent.engine.instance_lock import holder_pid

    pid = holder_pid(state_dir)
    beat = read_heartbeat(state_dir)
    result: dict[str, Any] = {"running": pid is not None, "pid": pid or None}
    if beat is not None:
        result.update(
            heartbeat_at=beat.heartbeat_at,
            started_at=beat.started_at,
            connected=beat.connected if pid is not None else False,
            connection_changed_at=beat.connection_changed_at,
            transport=beat.transport,
            endpoint=beat.endpoint or None,
            activity=beat.activity,
        )
    return result


@model(frozen=False)
class _Snapshot:
    """What the state database says, read once."""

    state_dir: Path
    alive: dict[str, Any]
    active: list[Any]
    outbox: list[Any]
    recent: list[Any]
    packages: list[Any]
    """What the device's jobs installed, and removals still to be reported (`$package`)."""
    config: Any = None

    def output_log(self, key: Any) -> str | None:
        from jobs_agent.dispatch.output import log_path

        log = log_path(self.state_dir, key.job_id, key.execution_number)
        return str(log) if log.exists() else None


def _show(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    from jobs_agent.engine.lifecycle import ACTIVE_STATES
    from jobs_agent.engine.store import Store, StoreError

    path = config.state_dir / "state.db"
    alive = _liveness(config.state_dir)
    if not path.exists():
        message = f"no state database at {path}: the agent has not run with this state_dir yet"
        if args.json:
            print(json.dumps({"agent": alive, "error": message}, indent=2), file=out)
        else:
            print(f"jobs-agent: {message}", file=out)
        return EXIT_NO_DATABASE
    try:
        store = Store(path)
        active = store.active()
        outbox = store.outbox()
        recent = [r for r in store.recent(args.limit) if r.state not in ACTIVE_STATES]
        packages = store.packages() + [p for p in store.packages(pending=True) if not p.version]
        store.close()
    except StoreError as exc:
        print(f"jobs-agent: {exc}", file=out)
        return 1
    snapshot = _Snapshot(config.state_dir, alive, active, outbox, recent, packages, config)
    if args.json:
        print(json.dumps(_as_json(snapshot), indent=2), file=out)
    else:
        print(f"thing {config.thing_name}, state {config.state_dir}", file=out)
        _print_text(snapshot, out)
    return EXIT_SHOWN


def _windows(config: Any) -> dict[str, Any]:
    """The device's maintenance windows now: open until when, or when the next one opens."""
    from jobs_agent.engine.deferral import iso
    from jobs_agent.schedule import clock
    from jobs_agent.schedule.windows import describe

    windows = config.jobs.maintenance_windows
    now = clock.now()
    following = windows.next_opening(now)
    return {
        "configured": [w.describe() for w in windows.windows],
        "now": describe(windows, now),
        "next_opening": None if following is None else iso(following),
    }


def _deferral(record: Any, config: Any) -> dict[str, Any] | None:
    import contextlib

    from jobs_agent.dispatch.agent_fields import max_deferral_minutes
    from jobs_agent.engine.deferral import iso, waited
    from jobs_agent.engine.lifecycle import ExecutionState
    from jobs_agent.schedule import clock
    from jobs_agent_handlers.api import JobRejected

    deferral = record.deferral
    if record.state is not ExecutionState.DEFERRED or deferral is None:
        return None
    limit = config.jobs.max_deferral_minutes
    with contextlib.suppress(JobRejected):
        limit = min(limit, max_deferral_minutes(record.document) or limit)
    return {
        "kind": deferral.kind,
        "until": None if deferral.until is None else iso(deferral.until),
        "reason": deferral.reason,
        "deferrals": record.deferrals,
        "total_minutes": round(waited(record, clock.now()) / 60, 1),
        "limit_minutes": limit,
    }


def _as_json(snapshot: _Snapshot) -> dict[str, Any]:
    config = snapshot.config
    return {
        "agent": snapshot.alive,
        "maintenance_windows": _windows(config),
        "consent_socket": str(config.consent.socket),
        "running": [
            {
                "job_id": r.key.job_id,
                "execution_number": r.key.execution_number,
                "namespace": r.key.namespace,
                "state": str(r.state),
                "handler": r.handler,
                "step": r.step,
                "progress": r.progress,
                "restarts": r.restarts,
                "deferred": _deferral(r, config),
                "output_log": snapshot.output_log(r.key),
            }
            for r in snapshot.active
        ],
        "outbox": [
            {
                "job_id": e.key.job_id,
                "execution_number": e.key.execution_number,
                "status": e.status,
                "status_details": e.status_details,
                "attempts": e.attempts,
                "last_error": e.last_error,
            }
            for e in snapshot.outbox
        ],
        "recent": [
            {
                "job_id": r.key.job_id,
                "execution_number": r.key.execution_number,
                "namespace": r.key.namespace,
                "state": str(r.state),
                "status": r.outcome_status,
                "details": r.outcome_details,
                "note": r.note,
                "updated_at": r.updated_at,
                "output_log": snapshot.output_log(r.key),
            }
            for r in snapshot.recent
        ],
        "packages": [
            {
                "name": p.name,
                "version": p.version,
                "attributes": p.attributes,
                "waiting_for_package_shadow": p.report,
            }
            for p in snapshot.packages
        ],
    }


def _print_text(snapshot: _Snapshot, out: TextIO) -> None:
    print(_describe_agent(snapshot.alive), file=out)
    windows = _windows(snapshot.config)
    configured = "; ".join(windows["configured"]) or "none configured"
    print(f"maintenance windows: {windows['now']} ({configured})", file=out)
    socket = snapshot.config.consent.socket
    print(f"consent socket: {socket} (jobs-agent consent --list)", file=out)
    if not snapshot.active:
        print("running: nothing", file=out)
    for r in snapshot.active:
        progress = r.progress or {}
        verb = "running" if snapshot.alive["running"] else "interrupted (the agent is not running)"
        line = f"{verb}: {r.key} [{r.state}] handler {r.handler or '-'} step {r.step}"
        if "percent" in progress:
            line += f" {progress['percent']}%"
        if "message" in progress:
            line += f" {progress['message']}"
        print(line, file=out)
        deferral = _deferral(r, snapshot.config)
        if deferral is not None:
            until = deferral["until"] or "consent is given (jobs-agent consent)"
            print(
                f"  deferred ({deferral['kind']}) until {until}: {deferral['reason']};"
                f" {deferral['total_minutes']} of {deferral['limit_minutes']} min deferred",
                file=out,
            )
        log = snapshot.output_log(r.key)
        if log:
            print(f"  output log: {log}", file=out)
    print(f"outbox: {len(snapshot.outbox)} update(s) waiting for the service", file=out)
    for e in snapshot.outbox:
        print(
            f"  {e.key} {e.status} attempts {e.attempts} last error {e.last_error or '-'}",
            file=out,
        )
    waiting = [p for p in snapshot.packages if p.report]
    print(
        f"software inventory: {len(snapshot.packages)} package(s) recorded from jobs,"
        f" {len(waiting)} waiting to be reported to $package",
        file=out,
    )
    for p in waiting:
        print(f"  {p.name} {p.version or '(removed)'}", file=out)
    print("recent outcomes:", file=out)
    if not snapshot.recent:
        print("  none", file=out)
    for r in snapshot.recent:
        reason = (r.outcome_details or {}).get("reason", "")
        status = r.outcome_status or "-"
        note = f" ({r.note})" if r.note else ""
        print(f"  {_ago(r.updated_at):>9}  {status:<10} {r.key}  {reason}{note}", file=out)
        log = snapshot.output_log(r.key)
        if log:
            print(f"{'':13}output log: {log}", file=out)


def _describe_agent(alive: dict[str, Any]) -> str:
    beat = alive.get("heartbeat_at")
    if not alive["running"]:
        last = f"; last heartbeat {_ago(beat)}" if beat else ""
        return f"agent: NOT RUNNING (no process holds the state directory's lock){last}"
    parts = [f"agent: running, pid {alive['pid']}"]
    if beat is not None:
        parts.append(f"last heartbeat {_ago(beat)}")
        where = f"{alive.get('transport')}" + (
            f" {alive['endpoint']}" if alive.get("endpoint") else ""
        )
        state = "connected" if alive.get("connected") else "NOT CONNECTED"
        parts.append(f"{state} ({where}) since {_ago(alive['connection_changed_at'])}")
    return ", ".join(parts)
