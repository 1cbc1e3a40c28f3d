"""`jobs-agent demo`: the agent's main job on an embedded default (no AWS, no broker)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the real agent against the embedded IoT Jobs emulator",
        description="Start the real agent against the embedded AWS IoT Jobs emulator (in-process: "
        "no AWS account, no broker, no configuration file), queue a handful of example jobs "
        "(a script handler, progress, a failure, an invalid document, a cancellation), show "
        "their status live and print what the emulator recorded. Exit 0 when every job ended "
        "as expected.",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the demo's handlers and state database in DIR (default: a temporary "
        "directory removed at the end); inspect it with `jobs-agent status`",
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from jobs_agent.log import configure_logging
    from jobs_agent.sim.demo import run_demo

    configure_logging("warning", "console")
    return asyncio.run(run_demo(keep_state=args.keep))
