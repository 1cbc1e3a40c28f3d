"""`jobs-agent status`: what the agent is doing and has done, from its state database.

Read-only and independent of the running daemon (it opens the SQLite file the daemon writes), so
it works while the agent is stopped, crashed or offline: exactly when an operator needs it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from jobs_agent.commands.common import add_config_argument, load_config_or_exit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the running job, the outbox and recent outcomes",
        description="Show the running job (step, progress), status updates waiting in the "
        "outbox and recent outcomes, read from the agent's state database.",
    )
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--limit", type=int, default=20, help="recent outcomes to show")
    parser.set_defaults(func=_status)


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _status(args: argparse.Namespace) -> int:
    from jobs_agent.engine.store import ACTIVE_STATES, Store, StoreError

    config = load_config_or_exit(args)
    path = config.state_dir / "state.db"
    if not path.exists():
        print(f"no state database at {path}: the agent has not run with this state_dir yet")
        return 0
    try:
        store = Store(path)
        active = store.active()
        outbox = store.outbox()
        recent = [r for r in store.recent(args.limit) if r.state not in ACTIVE_STATES]
        store.close()
    except StoreError as exc:
        print(f"jobs-agent: {exc}")
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "running": [
                        {
                            "job_id": r.key.job_id,
                            "execution_number": r.key.execution_number,
                            "namespace": r.key.namespace or None,
                            "state": str(r.state),
                            "handler": r.handler,
                            "step": r.step,
                            "progress": r.progress,
                            "restarts": r.restarts,
                        }
                        for r in active
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
                        for e in outbox
                    ],
                    "recent": [
                        {
                            "job_id": r.key.job_id,
                            "execution_number": r.key.execution_number,
                            "namespace": r.key.namespace or None,
                            "state": str(r.state),
                            "status": r.outcome_status,
                            "details": r.outcome_details,
                            "note": r.note,
                            "updated_at": r.updated_at,
                        }
                        for r in recent
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"thing {config.thing_name}, state {path}")
    if not active:
        print("running: nothing")
    for r in active:
        progress = r.progress or {}
        line = f"running: {r.key} [{r.state}] handler {r.handler or '-'} step {r.step}"
        if "percent" in progress:
            line += f" {progress['percent']}%"
        if "message" in progress:
            line += f" {progress['message']}"
        print(line)
    print(f"outbox: {len(outbox)} update(s) waiting for the service")
    for e in outbox:
        print(f"  {e.key} {e.status} attempts {e.attempts} last error {e.last_error or '-'}")
    print("recent outcomes:")
    if not recent:
        print("  none")
    for r in recent:
        reason = (r.outcome_details or {}).get("reason", "")
        status = r.outcome_status or "-"
        note = f" ({r.note})" if r.note else ""
        print(f"  {_ago(r.updated_at):>9}  {status:<10} {r.key}  {reason}{note}")
    return 0
