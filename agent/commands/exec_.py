"""`jobs-agent exec DOC.json`: run one job document here, through the agent's own code path.

The same Dispatcher, sandbox and handlers as a real job, with a local job context: progress is
printed, and so is the statusDetails the agent would report (sanitised) and the final status.
`--dry-run` prints the plan (steps, command lines, users, time limits) and runs nothing.
The configuration is loaded as for every command (`--config`, else /etc/jobs-agent/config.yaml
when it exists, else the defaults; JOBS_AGENT_* on top), so the check predicts what the daemon
on this device does; `--handler-dir` overrides the handler directory. The output log and
scratch files go to a temporary directory that is removed at the end (`--state-dir` keeps
them). A reboot that the job asks for is not done: exec says so and continues as the agent
would after the boot.

Exit status: 0 SUCCEEDED, 1 FAILED, 3 REJECTED (the document is wrong), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from jobs_agent.commands.common import add_config_argument

MAX_SIMULATED_REBOOTS = 10
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_REJECTED = 3
_EXIT_CODES = {"SUCCEEDED": EXIT_SUCCEEDED, "FAILED": EXIT_FAILED, "REJECTED": EXIT_REJECTED}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "exec",
        help="run one job document locally (or plan it with --dry-run)",
        description="Run a job document on this device through the same routing, sandbox and "
        "handlers as a real job; print progress, the statusDetails it would report and the "
        "final status. Exit 0 if SUCCEEDED, 1 if FAILED, 3 if REJECTED, 2 on a usage error.",
    )
    parser.add_argument("document", type=Path, metavar="DOC.json", help="the job document")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the handlers' stdout and stderr as they run, and the agent's log lines",
    )
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
        help="keep the output log here (default: a temporary directory, removed at the end)",
    )
    parser.add_argument("--job-id", default="local-exec", help="job id shown to handlers")
    parser.set_defaults(func=_exec)


def _read_document(path: Path) -> dict[str, Any]:
    from jobs_agent.cli import UsageError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: a job document is a JSON object")
    return document


def _exec(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import shutil
    import tempfile

    from jobs_agent.cli import UsageError
    from jobs_agent.commands.common import load_config_or_exit
    from jobs_agent.device import dispatcher as make_dispatcher
    from jobs_agent.dispatch.errors import TrustedKeysError
    from jobs_agent.log import configure_logging

    document = _read_document(args.document)
    config = load_config_or_exit(args, require_thing_name=False, file_optional=True)
    configure_logging("info" if args.verbose else "warning", config.log.format, sys.stderr)
    if args.handler_dir is not None:
        config = dataclasses.replace(
            config, jobs=dataclasses.replace(config.jobs, handler_dir=args.handler_dir.resolve())
        )
    out = sys.stdout
    echo = _echo(out) if args.verbose else None
    try:
        dispatcher = make_dispatcher(config, echo=echo)
    except TrustedKeysError as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        return _dry_run(dispatcher, document, args.job_id, out)
    temporary = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="jobs-agent-exec-")) if temporary else args.state_dir
    config = dataclasses.replace(config, state_dir=state_dir.resolve())
    # The run's own state directory (output logs, containment groups), the same plugins.
    dispatcher = make_dispatcher(config, echo=echo, plugins=dispatcher.plugins)
    try:
        return asyncio.run(_run(dispatcher, config, document, args.job_id, out, keep=not temporary))
    finally:
        from jobs_agent.dispatch.containment import release

        release(config.state_dir)  # its cgroup base, which stayed for ever (a new one per run)
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


EXEC_DIRECTORY = "exec"
"""`state_dir/exec/<jobId>/`: exec's job directories, apart from the daemon's `state_dir/jobs/`."""


def _dry_run(dispatcher: Any, document: dict[str, Any], job_id: str, out: TextIO) -> int:
    from jobs_agent.dispatch.plugins import PluginError
    from jobs_agent_handlers.api import JobRejected

    try:
        handler = dispatcher.resolve(document, job_id=job_id)
        steps = dispatcher.plan(document, job_id=job_id)
    except JobRejected as exc:
        print(f"would be REJECTED: {exc.reason}", file=out)
        return EXIT_REJECTED
    except PluginError as exc:
        print(f"would be FAILED: cannot load the handler: {exc}", file=out)
        return EXIT_FAILED
    print(f"handler: {handler.name}" + (" (resumable)" if handler.resumable else ""), file=out)
    for index, step in enumerate(steps, 1):
        print(f"step {index}: {step.describe()}", file=out)
    print("dry run: nothing was run", file=out)
    return EXIT_SUCCEEDED


def _echo(out: TextIO) -> Any:
    """Handler output as it arrives: stdout to our stdout, stderr to our stderr."""

    def echo(stream: str, chunk: bytes) -> None:
        target = out if stream == "stdout" else sys.stderr
        target.write(chunk.decode("utf-8", errors="replace"))
        target.flush()

    return echo


async def _run(
    dispatcher: Any,
    config: Any,
    document: dict[str, Any],
    job_id: str,
    out: TextIO,
    *,
    keep: bool,
) -> int:
    import asyncio
    import contextlib
    import shutil
    import signal

    from jobs_agent.dispatch.context import LocalJobContext
    from jobs_agent.dispatch.output import log_path
    from jobs_agent.redact import redact_mapping

    # Not `jobs/`: there the daemon keeps `jobs/<namespace>/<jobId>/` (`default` for none), so
    # `--job-id default` with the daemon's `--state-dir` removed every running job's directory
    # at the end of the run.
    base = config.state_dir / EXEC_DIRECTORY / job_id
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
    outcome = await _outcome(dispatcher, ctx, document, job_id, out)
    shutil.rmtree(base, ignore_errors=True)
    details = _sanitize(redact_mapping(dict(outcome.details)))
    print("statusDetails: " + json.dumps(details, ensure_ascii=False, indent=2), file=out)
    print(f"status: {outcome.status}", file=out)
    log_file = log_path(config.state_dir, job_id, 1)
    if keep and log_file.exists():
        print(f"output log: {log_file}", file=out)
    return _EXIT_CODES[outcome.status]


async def _outcome(
    dispatcher: Any, ctx: Any, document: dict[str, Any], job_id: str, out: TextIO
) -> Any:
    """Resolve and run the document as the daemon would, a requested reboot simulated."""
    from jobs_agent.dispatch.plugins import PluginError
    from jobs_agent_handlers.api import JobDeferred, JobRejected, Outcome

    try:
        handler = dispatcher.resolve(document, job_id=job_id)
    except JobRejected as exc:
        return Outcome("REJECTED", {"reason": exc.reason, **exc.details})
    except PluginError as exc:  # what the daemon reports for it
        return Outcome.failed(f"cannot load the handler: {exc}")
    try:
        return await _run_with_reboots(dispatcher, handler, ctx, document, job_id, out)
    except JobDeferred as exc:
        # The daemon would wait and run it again; exec runs once and says so.
        return Outcome.failed(f"the handler deferred the job ({exc.reason}); exec does not wait")


async def _run_with_reboots(
    dispatcher: Any, handler: Any, ctx: Any, document: dict[str, Any], job_id: str, out: TextIO
) -> Any:
    from jobs_agent_handlers.api import Outcome

    outcome = await dispatcher.run(handler, ctx)
    reboots = 0
    while ctx.reboot_requested and outcome.status == "SUCCEEDED":
        reboots += 1
        if reboots > MAX_SIMULATED_REBOOTS:
            return Outcome.failed(f"asked for more than {MAX_SIMULATED_REBOOTS} reboots")
        print(
            "reboot requested: exec does not reboot this device; continuing as after a boot",
            file=out,
        )
        ctx.after_reboot()
        outcome = await dispatcher.run(dispatcher.resolve(document, job_id=job_id), ctx)
    return outcome


def _sanitize(details: dict[str, Any]) -> dict[str, str]:
    from jobs_agent.jobs.status_details import sanitize_status_details

    sanitized: dict[str, str] = sanitize_status_details(details)
    return sanitized
