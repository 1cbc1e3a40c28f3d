"""`jobs-agent run`: the daemon (or, with --dry-run, a read-only look at what it would do)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import structlog

from jobs_agent.commands.common import add_config_argument, load_config_or_exit
from jobs_agent.config import AgentConfig
from jobs_agent.config_cache import ParseCache
from jobs_agent.transport import TransportError

if TYPE_CHECKING:
    import argparse

log = structlog.get_logger("jobs_agent.daemon")
LOG_LEVELS = ("debug", "info", "warning", "error")
PLAIN_OPTIONS = {"--config": "config", "-c": "config", "--log-level": "log_level"}
"""The options `plain_arguments` reads, each with a value: what a service manager passes."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent (the daemon)",
        description="Connect to AWS IoT (or the configured broker), take jobs for this thing one "
        "at a time, run them through the handlers and report their outcome. SIGTERM stops "
        "gracefully (twice: at once), SIGHUP reloads the configuration.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read-only: list pending executions and print the plan for each; never starts or "
        "updates a job",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="with --dry-run: keep listening and plan new jobs as they arrive",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="override log.level from the configuration",
    )
    parser.set_defaults(func=_run)


def plain_arguments(argv: Sequence[str]) -> SimpleNamespace | None:
    """The arguments after `run` as `register`'s parser would give them, when they are only
    `--config PATH` and `--log-level LEVEL` (`-c`, `--option=VALUE`), without argparse, which
    an idle daemon would keep loaded for its whole life (with gettext, 0.4 MB resident; issue
    18). None for anything else (help, --dry-run, an abbreviation, a value that looks like an
    option, a level argparse would refuse): argparse parses those, and reports the errors."""
    values: dict[str, Any] = {"config": None, "log_level": None}
    rest = list(argv)
    while rest:
        option, has_value, value = rest.pop(0).partition("=")
        if option not in PLAIN_OPTIONS or (has_value and option == "-c"):
            return None
        if not has_value:
            if not rest:
                return None
            value = rest.pop(0)
        if value.startswith("-"):
            return None
        values[PLAIN_OPTIONS[option]] = value
    if values["log_level"] not in (None, *LOG_LEVELS):
        return None
    if values["config"] is not None:
        values["config"] = Path(values["config"])
    return SimpleNamespace(command="run", dry_run=False, watch=False, func=_run, **values)


def _run(args: argparse.Namespace | SimpleNamespace) -> int:
    from jobs_agent.cli import UsageError
    from jobs_agent.log import configure_logging

    # The daemon keeps its file's parse for its next start; a dry run only reads the file.
    cache = None if args.dry_run else ParseCache()
    config = load_config_or_exit(args, cache=cache)
    if args.watch and not args.dry_run:
        raise UsageError("--watch only goes with --dry-run")
    configure_logging(
        args.log_level or config.log.level,
        config.log.format,
        journal_socket=config.log.journal_socket,
    )
    if args.dry_run:
        from jobs_agent.dryrun import run_dry

        return asyncio.run(run_dry(config, watch=args.watch))
    from jobs_agent.config import DEFAULT_CONFIG_PATH

    return asyncio.run(_daemon(config, args.config or DEFAULT_CONFIG_PATH, cache))


async def _daemon(config: AgentConfig, path: Path, cache: ParseCache | None = None) -> int:
    """The daemon, handed its transport: the configured one, or for `transport: local` one on
    an embedded emulator's bus (started here, stopped when the daemon ends)."""
    from jobs_agent.daemon import Agent
    from jobs_agent.transport.factory import create_transport
    from jobs_agent.transport.options import LocalOptions

    if not isinstance(config.connection, LocalOptions):
        try:
            transport = create_transport(config)
        except TransportError as exc:
            log.error("cannot start", error=str(exc))
            return 1
        return await Agent(config, config_path=path, transport=transport, parse_cache=cache).run()
    from jobs_agent.sim.local import embedded_emulator

    async with embedded_emulator(config.client_id) as transport:
        agent = Agent(config, config_path=path, transport=transport, parse_cache=cache)
        return await agent.run()
