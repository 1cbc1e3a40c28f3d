"""`jobs-agent` command line: one sub-command per module in `agent.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning the exit code. Modules import their heavy
dependencies inside the command, so `jobs-agent --help` stays fast on a gateway; the parser
itself is `commands.parser`.
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell reports for a writer whose reader went away."""

COMMANDS = {
    "run": "jobs_agent.commands.run",
    "demo": "jobs_agent.commands.demo",
    "exec": "jobs_agent.commands.exec_",
    "sim": "jobs_agent.commands.sim",
    "status": "jobs_agent.commands.status",
    "config": "jobs_agent.commands.config_check",
    "sign": "jobs_agent.commands.sign",
    "consent": "jobs_agent.commands.consent",
}
"""Each command's name and the module that registers it (in `jobs-agent --help`'s order)."""
COMMAND_MODULES = tuple(COMMANDS.values())


class UsageError(Exception):
    """A problem with the command line or the configuration: exit code 2."""


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace | SimpleNamespace:
    """The parsed command line. The plain `run` a service manager gives (`run`, `--config PATH`,
    `--log-level LEVEL`) is read by `commands.run.plain_arguments` into what argparse would
    make of it; everything else (help, other options, errors) goes to argparse, which an idle
    daemon then never loads (issue 18)."""
    if list(argv[:1]) == ["run"]:
        from jobs_agent.commands.run import plain_arguments

        args = plain_arguments(argv[1:])
        if args is not None:
            return args
    from jobs_agent.commands.parser import build_parser

    return build_parser(argv).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if list(argv[:1]) == ["run"]:  # the daemon: what its libraries import and it never uses
        from jobs_agent.commands.deferred import UNUSED, defer

        defer(*UNUSED)
    args = parse_arguments(argv)
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"jobs-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `jobs-agent status | head`: the reader is gone, which is not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
