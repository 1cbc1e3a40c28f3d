"""`jobs-agent` command line: one sub-command per module in `agent.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` to a
callable taking the parsed arguments and returning the exit code. Modules import their heavy
dependencies inside the command, so `jobs-agent --help` stays fast on a gateway.
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jobs_agent import __version__

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


def terminal_columns() -> int:
    """The terminal's width as `shutil.get_terminal_size` finds it ($COLUMNS, then standard
    output's terminal, else 80), without importing shutil, which loads lzma and bz2 (0.4 MB
    resident for the daemon's whole life; issue 18)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (ValueError, OSError):  # closed, detached, or not a terminal
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, with the width found by `terminal_columns`: argparse makes a formatter at
    every `add_argument`, and its own width lookup imports shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own, whose help formatter (and its sub-commands', which take this class) is
    `HelpFormatter` unless a command asks for another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, when `argv` names one, of that command alone: `run`
    then loads neither the emulator's list of readings (`sim serve --help`) nor the other
    commands (issue 18: a gateway starts the daemon at every boot). The top level takes no
    option with a value, so the first argument not starting with "-" is the command; anything
    else (`--help`, a misspelt command) gets every command, to list them."""
    command = next((a for a in argv or () if not a.startswith("-")), None)
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    parser = ArgumentParser(
        prog="jobs-agent",
        description="Device agent for AWS IoT Jobs.",
    )
    parser.add_argument("--version", action="version", version=f"jobs-agent {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in modules:
        module = importlib.import_module(module_name)
        register: Callable[[Any], None] = module.register
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
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
