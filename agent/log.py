"""Logging, configured in one place.

JSON lines when the output is not a terminal (journald, files, log shippers), a readable console
renderer on a tty. Every line passes through the secret scrubber, so a presigned URL or a key
that ends up in an event's fields is redacted before it is written. Lines about a job carry
`job_id`, `execution_number` and `namespace` because the engine binds them once per execution.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from jobs_agent.redact import redact_mapping

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return redact_mapping(event_dict)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """(Re)configure structlog and the standard library's root logger.

    Safe to call again on SIGHUP to change the level; the stream defaults to stderr so stdout
    stays free for commands that print results (`status --json`, `sim list --json`).
    """
    stream = stream or sys.stderr
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _scrub,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (paho, botocore) go to the same stream.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


def get_logger(name: str, **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
