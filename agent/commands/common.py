"""Pieces every command shares: the --config option and turning config errors into exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jobs_agent.cli import UsageError
from jobs_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from jobs_agent.config_cache import ParseCache

if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH}; "
        "JOBS_AGENT_<SECTION>__<KEY> environment variables override it)",
    )


def load_config_or_exit(
    args: argparse.Namespace | SimpleNamespace,
    *,
    require_thing_name: bool = True,
    file_optional: bool = False,
    cache: ParseCache | None = None,
) -> AgentConfig:
    """The one way every command loads its configuration: `--config PATH`, else the default
    file, with the JOBS_AGENT_* environment on top. With `file_optional` (`exec`), a missing
    default file means the defaults (plus the environment) rather than an error, so a quick
    check on a device predicts what the daemon there would do. `cache`: the daemon's
    (`config_cache`); every other command parses the file itself."""
    try:
        return load_config(
            args.config,
            require_thing_name=require_thing_name,
            missing_ok=file_optional and args.config is None,
            cache=cache,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
