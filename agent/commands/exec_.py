"""`jobs-agent exec DOC.json`: run one job document here, through the agent's own code path.

The same Dispatcher, sandbox and handlers as a real job, with a local job context: progress is
printed, and so is the statusDetails the agent would report (sanitised) and the final status.
`--dry-run` prints the plan (steps, command lines, users, time limits) and runs nothing.
Without `--config` the defaults apply, with the handler directory from `--handler-dir` (else
the default /etc/jobs-agent/handlers; the built-in scripts are always available) and a
temporary state directory. A reboot that the job asks for is not done: exec says so and
continues as the agent would after the boot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jobs_agent.commands.common import add_config_argument

MAX_SIMULATED_REBOOTS = 10


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "exec",
        help="run one job document locally (or plan it with --dry-run)",
        description="Run a job document on this device through the same routing, sandbox and "
        "handlers as a real job; print progress, the statusDetails it would report and the "
        "final status. Exit 0 if SUCCEEDED, 1 otherwise.",
    )
    parser.add_argument("document", type=Path, metavar="DOC.json", help="the job document")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    add_config_argument(parser)
    parser.add_argument(
        "--handler-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="handler directory (overrides the configuration's jobs.handler_dir)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the output log goes (default: a temporary directory, kept and printed)",
    )
    parser.add_argument("--job-id", default="local-exec", help="job id shown to handlers")
    parser.set_defaults(func=_exec)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import dataclasses
    import tempfile

    from jobs_agent.cli import UsageError
    from jobs_agent.config import AgentConfig, ConfigError, load_config

    try:
        text = args.document.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{args.document}: cannot read: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{args.document}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{args.document}: a job document is a JSON object")
    if args.config is not None:
        try:
            config = load_config(args.config, require_thing_name=False)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    else:
        config = AgentConfig(thing_name="local")
    jobs = config.jobs
    if args.handler_dir is not None:
        jobs = dataclasses.replace(jobs, handler_dir=args.handler_dir.resolve())
    state_dir = args.state_dir
    if state_dir is None and not args.dry_run:
        state_dir = Path(tempfile.mkdtemp(prefix="jobs-agent-exec-"))
    if state_dir is not None:
        config = dataclasses.replace(config, state_dir=state_dir.resolve())
    return dataclasses.replace(config, jobs=jobs), document


def _exec(args: argparse.Namespace) -> int:
    import asyncio

    from jobs_agent.cli import UsageError
    from jobs_agent.config import ConfigError
    from jobs_agent.dispatch import Dispatcher
    from jobs_agent_handlers.api import JobRejected

    config, document = _load(args)
    try:
        dispatcher = Dispatcher(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    out = sys.stdout
    if args.dry_run:
        try:
            handler = dispatcher.resolve(document)
            steps = dispatcher.plan(document)
        except JobRejected as exc:
            print(f"would be REJECTED: {exc.reason}", file=out)
            return 1
        print(f"handler: {handler.name}" + (" (resumable)" if handler.resumable else ""), file=out)
        for index, step in enumerate(steps, 1):
            print(f"step {index}: {step.describe()}", file=out)
        print("dry run: nothing was run", file=out)
        return 0
    return asyncio.run(_run(dispatcher, config, document, args.job_id, out))


async def _run(
    dispatcher: Any, config: Any, document: dict[str, Any], job_id: str, out: Any
) -> int:
    import asyncio
    import contextlib
    import signal

    from jobs_agent.dispatch.context import LocalJobContext
    from jobs_agent.dispatch.output import log_path
    from jobs_agent.redact import redact_mapping
    from jobs_agent_handlers.api import JobRejected, Outcome

    base = config.state_dir / "jobs" / job_id
    ctx = LocalJobContext(
        document=document,
        scratch_dir=base / "scratch-1",
        state_dir=base / "state",
        job_id=job_id,
        thing_name=config.thing_name or "local",
        out=out,
    )
    ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
    ctx.state_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, ctx.cancelled.set)
    outcome: Outcome
    try:
        handler = dispatcher.resolve(document)
    except JobRejected as exc:
        outcome = Outcome("REJECTED", {"reason": exc.reason, **exc.details})
    else:
        outcome = await dispatcher.run(handler, ctx)
        reboots = 0
        while ctx.reboot_requested and outcome.status == "SUCCEEDED":
            reboots += 1
            if reboots > MAX_SIMULATED_REBOOTS:
                outcome = Outcome.failed(f"asked for more than {MAX_SIMULATED_REBOOTS} reboots")
                break
            print(
                "reboot requested: exec does not reboot this device; continuing as after a boot",
                file=out,
            )
            ctx.after_reboot()
            outcome = await dispatcher.run(dispatcher.resolve(document), ctx)
    details = _sanitize(redact_mapping(dict(outcome.details)))
    print("statusDetails: " + json.dumps(details, ensure_ascii=False, indent=2), file=out)
    print(f"status: {outcome.status}", file=out)
    log_file = log_path(config.state_dir, job_id, 1)
    if log_file.exists():
        print(f"output log: {log_file}", file=out)
    return 0 if outcome.status == "SUCCEEDED" else 1


def _sanitize(details: dict[str, Any]) -> dict[str, str]:
    """The engine's sanitizer when present; else the same limits applied here."""
    try:
        from jobs_agent.jobs.status_details import sanitize_status_details
    except ImportError:
        from jobs_agent.dispatch.output import single_line

        result: dict[str, str] = {}
        for key, value in list(details.items())[:10]:
            text = single_line(value if isinstance(value, str) else json.dumps(value))
            if text:
                result[str(key)[:128]] = text
        return result
    sanitized: dict[str, str] = sanitize_status_details(details)
    return sanitized
