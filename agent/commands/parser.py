"""The `jobs-agent` argument parser (argparse), built for every command line but the plain
`run` a service manager gives (`cli.parse_arguments`): argparse and the gettext it imports
stay out of an idle daemon (0.4 MB resident for its whole life; issue 18)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jobs_agent import __version__
from jobs_agent.cli import COMMAND_MODULES, COMMANDS


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
