"""`jobs-agent consent`: grant or reject a job the agent holds back for a person's consent.

    jobs-agent consent JOB                  # accept
    jobs-agent consent JOB --reject REASON  # reject; REASON goes to the job's statusDetails
    jobs-agent consent --list               # what the agent is waiting for

It talks to the running agent over its consent socket (`--socket`, default
`$JOBS_AGENT_CONSENT__SOCKET` or /run/jobs-agent/consent.sock) and needs no configuration file,
so any user the agent allows (`consent.allowed_users`, `consent.allowed_groups`, root) can run
it. Exit status: 0 done (also when the same decision was taken before), 1 refused or no agent,
2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_DONE = 0
EXIT_REFUSED = 1
SOCKET_ENVIRONMENT = "JOBS_AGENT_CONSENT__SOCKET"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "consent",
        help="accept or reject a job waiting for local consent, or list the waiting jobs",
        description="Accept (or with --reject, reject) a job the running agent holds back for "
        "a person's consent, through its consent socket; --list shows the waiting jobs. "
        "Exit 0 when done, 1 when refused or no agent answers.",
    )
    parser.add_argument("job_id", nargs="?", metavar="JOB", help="the job to decide on")
    parser.add_argument(
        "--reject", metavar="REASON", help="reject the job; REASON is reported to the cloud"
    )
    parser.add_argument("--list", action="store_true", help="list the jobs waiting for consent")
    parser.add_argument("--namespace", metavar="NS", help="the job's namespace, if any")
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"the agent's consent socket (default: ${SOCKET_ENVIRONMENT} or "
        "/run/jobs-agent/consent.sock)",
    )
    parser.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    parser.set_defaults(func=_consent)


def _consent(args: argparse.Namespace) -> int:
    from jobs_agent.cli import UsageError
    from jobs_agent.consent.client import ConsentUnavailable, call
    from jobs_agent.consent.protocol import DEFAULT_SOCKET

    if args.list == (args.job_id is not None):
        raise UsageError("consent: name a JOB to decide on, or --list (not both)")
    if args.list and (args.reject is not None or args.namespace):
        raise UsageError("consent: --list takes no --reject or --namespace")
    if args.reject is not None and not args.reject.strip():
        raise UsageError("consent: --reject needs a reason")
    path = args.socket or Path(os.environ.get(SOCKET_ENVIRONMENT) or DEFAULT_SOCKET)
    request: dict[str, Any]
    if args.list:
        request = {"op": "list"}
    elif args.reject is not None:
        request = {"op": "reject", "jobId": args.job_id, "reason": args.reject}
    else:
        request = {"op": "accept", "jobId": args.job_id}
    if args.namespace:
        request["namespace"] = args.namespace
    try:
        answer = call(path, request)
    except ConsentUnavailable as exc:
        print(f"jobs-agent: consent: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    if not answer.get("ok"):
        if not args.json:
            print(
                f"jobs-agent: consent: {_shown(answer.get('message'))} ({answer.get('error')})",
                file=sys.stderr,
            )
        return EXIT_REFUSED
    if not args.json:
        print(_listing(answer) if args.list else _decided(answer))
    return EXIT_DONE


def _shown(value: Any) -> str:
    """Text from the socket, made safe for a terminal (a prompt comes from a job document)."""
    from jobs_agent.consent.protocol import clean_text

    return clean_text(str(value)) if value is not None else ""


def _when(timestamp: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))
    except (TypeError, ValueError, OverflowError):
        return "?"


def _decided(answer: dict[str, Any]) -> str:
    what = _shown(answer.get("decision"))
    line = (
        f"job {_shown(answer.get('jobId'))} (execution {_shown(answer.get('executionNumber'))}):"
        f" {what} by {_shown(answer.get('decidedBy'))}"
    )
    if answer.get("reason"):
        line += f": {_shown(answer.get('reason'))}"
    if answer.get("repeated"):
        line += f" (already, at {_when(answer.get('decidedAt'))})"
    return line


def _listing(answer: dict[str, Any]) -> str:
    waiting = answer.get("waiting") or []
    if not waiting:
        return "no job is waiting for consent"
    lines = []
    for item in waiting:
        namespace = item.get("namespace")
        where = f" [namespace {_shown(namespace)}]" if namespace else ""
        lines.append(
            f"{_shown(item.get('jobId'))}{where} (execution {_shown(item.get('executionNumber'))},"
            f" waiting since {_when(item.get('since'))}): {_shown(item.get('prompt'))}"
        )
    return "\n".join(lines)
