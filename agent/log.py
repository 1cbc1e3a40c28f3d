"""Logging, configured in one place.

Where the lines go decides how they are written:
* a terminal: a readable console renderer;
* journald (systemd sets `JOURNAL_STREAM` to the device and inode of the stream it reads):
  journald's native protocol, so every line has its PRIORITY (`journalctl -p warning` works)
  and its fields (`journalctl JOB_ID=job-42`); when the native socket cannot be used, JSON
  lines with a syslog `<N>` priority prefix, which journald turns into the priority;
* anything else (files, log shippers): JSON lines.
Every line passes through the secret scrubber, so a presigned URL or a key that ends up in an
event's fields is redacted before it is written; fields whose value is None are left out. Lines
about a job carry `job_id`, `execution_number` and `namespace` because the engine binds them
once per execution.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from jobs_agent.redact import REDACTED, redact_text, redact_value

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
SYSLOG_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}
DEFAULT_JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "jobs-agent"
_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


_PLAIN = (int, float, bool)
"""Values `redact_value` gives back as they are."""
SECRET_KEYS_KEPT = 512
_secret_key: dict[str, bool] = {}
"""Whether a field's name is one whose value is always redacted, asked once per name (the
agent's own fields are a few dozen names; at most `SECRET_KEYS_KEPT` are kept)."""


def _scrubbed(key: str, value: Any) -> Any:
    """`redact_value(key, value)`, without a call for what it gives back as is: a number, or a
    text that carries neither a URL credential nor a key, under a name that is not a secret's."""
    if isinstance(value, str):
        secret = _secret_key.get(key)
        if secret is None:
            secret = redact_value(key, "x") == REDACTED
            if len(_secret_key) < SECRET_KEYS_KEPT:  # a handler's `ctx.log` names its own
                _secret_key[key] = secret
        if secret and value:
            return REDACTED
        return redact_text(value) if "=" in value or "PRIVATE KEY" in value else value
    return value if isinstance(value, _PLAIN) else redact_value(key, value)


def _scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Every field through the secret scrubber, and those whose value is None left out
    (`namespace=None` on every line of a default-namespace job is noise, not information): one
    pass over the fields, where a line at the default level made two, and a call or two per
    field (issue 18)."""
    return {key: _scrubbed(key, value) for key, value in event_dict.items() if value is not None}


def stream_is_journal(stream: TextIO, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when systemd connected `stream` to journald (JOURNAL_STREAM is `device:inode`)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO, a test capture)
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def _priority(event_dict: MutableMapping[str, Any]) -> int:
    return SYSLOG_PRIORITIES.get(str(event_dict.get("level", "info")), 6)


def _message(event_dict: MutableMapping[str, Any]) -> str:
    """The human line journalctl shows: the event, then the fields as key=value."""
    fields = " ".join(
        f"{key}={_text(value)}"
        for key, value in event_dict.items()
        if key not in ("event", "level", "timestamp", "exception")
    )
    text = str(event_dict.get("event", ""))
    text = f"{text} {fields}" if fields else text
    if "exception" in event_dict:
        text += "\n" + str(event_dict["exception"])
    return text


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def _field(name: str, value: Any) -> bytes:
    """One field of journald's native protocol (the binary form for values with newlines)."""
    key = _FIELD_NAME.sub("_", name.upper()).lstrip("_")[:64] or "FIELD"
    if key[0].isdigit():
        key = "F" + key
    data = (
        _text(value).encode("utf-8", "replace")
        if not isinstance(value, str)
        else value.encode("utf-8", "replace")
    )
    if b"\n" in data:
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


def journal_datagram(event_dict: MutableMapping[str, Any]) -> bytes:
    parts = [
        _field("MESSAGE", _message(event_dict)),
        _field("PRIORITY", str(_priority(event_dict))),
        _field("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
    ]
    for key, value in event_dict.items():
        if key in ("event", "level", "timestamp"):
            continue
        parts.append(_field(f"JOBS_AGENT_{key}" if key == "exception" else key, value))
    return b"".join(parts)


class JournalLogger:
    """Sends each rendered event to journald's native socket; if a datagram cannot be sent
    (journald restarting, a message too large for one datagram, or journald's queue full),
    the line goes to the fallback stream with a syslog priority prefix instead, so nothing is
    lost.

    The socket is non-blocking: a stalled journald (its datagram queue is
    `net.unix.max_dgram_qlen` deep, 10 by default) must never stop the event loop, which logs
    from its own thread; the stream behind stderr has a far larger buffer."""

    def __init__(self, socket_path: Path, fallback: TextIO) -> None:
        self._path = str(socket_path)
        self._fallback = fallback
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def msg(self, datagram: bytes, line: str) -> None:
        try:
            self._socket.sendto(datagram, self._path)
        except OSError:
            self._fallback.write(line + "\n")
            self._fallback.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _OneLogger:
    """structlog's logger factory giving the same `PrintLogger` to every bound logger: its
    `PrintLoggerFactory` makes one, with a look-up of its stream's lock, for each, and a module's
    logger is bound again for every line (`cache_logger_on_first_use` stays off, so that a
    SIGHUP's level reaches them; issue 18)."""

    def __init__(self, logger: structlog.PrintLogger) -> None:
        self._logger = logger

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return self._logger


class JournalLoggerFactory:
    """One logger (one socket) per socket path and stream, kept across reloads."""

    _loggers: dict[tuple[str, int], JournalLogger] = {}

    def __init__(self, socket_path: Path, fallback: TextIO) -> None:
        key = (str(socket_path), id(fallback))
        if key not in self._loggers:
            self._loggers[key] = JournalLogger(socket_path, fallback)
        self._logger = self._loggers[key]

    def __call__(self, *args: Any) -> JournalLogger:
        return self._logger


def _journal_renderer(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    # (args, kwargs) for JournalLogger.msg: the datagram, and the line if it cannot be sent.
    return (journal_datagram(event_dict), _prefixed_line(event_dict)), {}


def _prefixed_line(event_dict: MutableMapping[str, Any]) -> str:
    return f"<{_priority(event_dict)}>" + json.dumps(dict(event_dict), default=str)


def _prefixed_renderer(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return _prefixed_line(event_dict)


def _journal_socket_usable(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class _PrefixedFormatter(logging.Formatter):
    """Standard-library lines (paho, botocore) with the syslog priority journald reads."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"<{SYSLOG_PRIORITIES.get(level, 6)}>" + super().format(record)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    journal_socket: Path = DEFAULT_JOURNAL_SOCKET,
) -> str:
    """(Re)configure structlog and the standard library's root logger; returns the output
    chosen: "console", "json", "journal" (native protocol) or "journal-prefixed".

    Safe to call again on SIGHUP to change the level; the stream defaults to stderr so stdout
    stays free for commands that print results (`status --json`, `sim list --json`).
    """
    global _written_from
    stream = stream or sys.stderr
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    _written_from = numeric
    output = _output(fmt, stream, journal_socket)
    renderer: Any
    logger_factory: Any = _OneLogger(structlog.PrintLogger(stream))
    if output == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    elif output == "journal":
        renderer = _journal_renderer
        logger_factory = JournalLoggerFactory(journal_socket, stream)
    elif output == "journal-prefixed":
        renderer = _prefixed_renderer
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
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(stream, output, numeric)
    return output


def _output(fmt: str, stream: TextIO, journal_socket: Path) -> str:
    output = fmt
    if fmt == "auto":
        if stream.isatty():
            output = "console"
        elif stream_is_journal(stream):
            output = "journal"
        else:
            output = "json"
    if output == "journal" and not _journal_socket_usable(journal_socket):
        output = "journal-prefixed"
    return output


def _route_standard_logging(stream: TextIO, output: str, numeric: int) -> None:
    """Libraries that use the standard logging module (paho, botocore) go to the same stream."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    text_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(
        _PrefixedFormatter(text_format)
        if output.startswith("journal")
        else logging.Formatter(text_format)
    )
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


_written_from = logging.DEBUG
"""The lowest level `configure_logging` lets through (every level before it is called)."""


def enabled(level: int) -> bool:
    """Whether a line of `level` (`logging.INFO`...) would be written now. A hot path asks
    before it builds a bound logger for a line the level drops: structlog builds a new logger
    for every `bind`, and for every call on a module's logger (issue 18)."""
    return level >= _written_from


class LazyBound:
    """`logger.bind(**context)`, built when a line is written: a request or a job that logs
    nothing at the configured level never builds it. The lines are those of the bound logger."""

    __slots__ = ("_bound", "_context", "_logger")

    def __init__(self, logger: Any, **context: Any) -> None:
        self._logger = logger
        self._context = context
        self._bound: Any = None

    def bind(self, **more: Any) -> Any:
        if self._bound is None:
            self._bound = self._logger.bind(**self._context)
        return self._bound.bind(**more) if more else self._bound

    def debug(self, event: str, **fields: Any) -> None:
        if enabled(logging.DEBUG):
            self.bind().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        if enabled(logging.INFO):
            self.bind().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.bind().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.bind().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        self.bind().exception(event, **fields)

    def __getattr__(self, name: str) -> Any:
        """The rest of the bound logger's methods (`critical`, `msg`...): a handler is given
        this as `ctx.log` and may use any of them."""
        if name.startswith("_"):  # a slot not yet set (copy, pickle): never built for it
            raise AttributeError(name)
        return getattr(self.bind(), name)


def get_logger(name: str, **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
