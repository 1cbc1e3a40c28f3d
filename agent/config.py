"""Typed configuration, loaded from one YAML file and validated before anything starts.

Errors name the key, the line and what was expected, e.g.
`connection.port: expected an integer from 1 to 65535, got "abc" (line 7)`, because an operator
fixing a gateway's config over a slow shell needs the exact place, not a traceback.
Environment variables `JOBS_AGENT_<SECTION>__<KEY>` (or `JOBS_AGENT_<KEY>` for top-level keys)
override the file; their values are parsed as YAML scalars/flow collections.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from jobs_agent.vocabulary import (
    GREENGRASS_NAMESPACE,
    NAMESPACE_RE,
    STEP_TIMEOUT_MAX,
    STEP_TIMEOUT_MIN,
    THING_NAME_RE,
)

DEFAULT_CONFIG_PATH = Path("/etc/jobs-agent/config.yaml")
ENV_PREFIX = "JOBS_AGENT_"
TRANSPORTS = ("awscrt", "paho", "greengrass", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json", "journal")
ANY_USER = "*"
"""In `jobs.allowed_users`: any user of the device (what the Device Client allows)."""


class ConfigError(Exception):
    """A configuration problem; the message is complete and meant for the operator."""


@dataclass(frozen=True)
class ConnectionConfig:
    transport: str = "awscrt"
    endpoint: str = ""
    port: int = 8883
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    client_id: str = ""
    """Empty means: the thing name."""
    alpn: bool = False
    """mTLS on port 443 with ALPN `x-amzn-mqtt-ca` (awscrt)."""
    websocket: bool = False
    """MQTT over WebSockets signed with SigV4 from the default AWS credential chain (awscrt)."""
    region: str = ""
    """Signing region for WebSockets; empty means: taken from the endpoint."""
    proxy_host: str = ""
    proxy_port: int = 0
    tls: bool = True
    """paho only: false for a plain TCP local broker."""
    username: str = ""
    password: str = ""
    keepalive_seconds: int = 1200
    session_expiry_seconds: int = 3600
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 120.0


@dataclass(frozen=True)
class JobsConfig:
    namespaces: tuple[str, ...] = ()
    step_timeout_minutes: int | None = 10
    handler_dir: Path = Path("/etc/jobs-agent/handlers")
    request_timeout_seconds: float = 30.0
    progress_interval_seconds: float = 5.0
    handler_timeout_seconds: float = 3600.0
    """Default per-step limit for a handler when the document gives none (never infinite)."""
    kill_grace_seconds: float = 10.0
    output_log_max_bytes: int = 10 * 1024 * 1024
    allowed_users: tuple[str, ...] = (ANY_USER,)
    """Who jobs may run as: `runAsUser`, or the agent's own user when a step names none."""
    allow_root: bool | None = None
    """Deprecated (kept so that an upgraded gateway with an earlier configuration still starts
    and stays reachable): `false` refuses root even where `allowed_users` allows it."""
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    max_agent_restarts_per_job: int = 3
    stop_timeout_seconds: float = 60.0
    idle_poll_seconds: float = 900.0
    """Idle, ask for work this often even without a notification (0: never)."""
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    """Where the boot id is read to confirm a requested reboot happened (tests, containers)."""
    handler_environment: tuple[str, ...] = ()
    """Extra environment for handlers: `NAME=value`, or `NAME` to pass the agent's own value."""
    plugin_path: tuple[Path, ...] = ()
    """Directories put on `sys.path` before Python plugins are imported (checked like handlers)."""
    rerun_after_reboot: tuple[str, ...] = ("reboot.sh",)
    """Handlers (the Device Client's reboot.sh) whose step is run again after the boot it asked
    for, because they confirm the reboot on their second run."""
    output_logs_max_count: int = 200
    """Per-job output logs kept under state_dir/logs (the oldest are deleted first)."""
    output_logs_max_total_bytes: int = 100 * 1024 * 1024
    """Total size the per-job output logs may take (the oldest are deleted first)."""
    containment: str = "auto"
    """How a step's processes are kept together: a cgroup per step, or a child subreaper."""
    allow_http_downloads: bool = False
    """The download handler fetches https:// only unless this is true."""


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"
    """auto: console on a terminal, journald under systemd (JOURNAL_STREAM), else JSON lines."""
    journal_socket: Path = Path("/run/systemd/journal/socket")
    """journald's native socket; without it, journal lines carry syslog `<N>` priorities."""


@dataclass(frozen=True)
class AgentConfig:
    thing_name: str = ""
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    handlers: Mapping[str, str] = field(default_factory=dict)
    """Python plugins by name: `{name: "package.module:Class"}`."""
    state_dir: Path = Path("/var/lib/jobs-agent")
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def client_id(self) -> str:
        return self.connection.client_id or self.thing_name


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

_Where = str
"""Where a value came from, as shown to the operator: "line 7" or "environment JOBS_AGENT_X"."""


@dataclass(frozen=True)
class _Rule:
    """How one key is checked: a description of what is expected and a converter."""

    expected: str
    convert: Callable[[Any], Any]


def _int_in(low: int, high: int) -> _Rule:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError
        return value

    return _Rule(f"an integer from {low} to {high}", convert)


def _number_in(low: float, high: float) -> _Rule:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if not low <= value <= high:
            raise ValueError
        return float(value)

    return _Rule(f"a number from {low:g} to {high:g}", convert)


def _choice(*choices: str) -> _Rule:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError
        return value.lower()

    return _Rule("one of " + ", ".join(choices), convert)


def _pattern(regex: re.Pattern[str], description: str, *, allow_empty: bool = False) -> _Rule:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        if value == "" and allow_empty:
            return value
        if not regex.fullmatch(value):
            raise ValueError
        return value

    return _Rule(description, convert)


def _string() -> _Rule:
    def convert(value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)

    return _Rule("a string", convert)


def _bool() -> _Rule:
    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value

    return _Rule("true or false", convert)


def _path(*, optional: bool) -> _Rule:
    def convert(value: Any) -> Path | None:
        if value is None or value == "":
            if optional:
                return None
            raise ValueError
        if not isinstance(value, str):
            raise ValueError
        return Path(value).expanduser()

    return _Rule("a file system path" + (" or null" if optional else ""), convert)


def _optional(rule: _Rule) -> _Rule:
    def convert(value: Any) -> Any:
        return None if value is None else rule.convert(value)

    return _Rule(rule.expected + " or null", convert)


def _list_of(rule: _Rule, *, non_empty: bool = False) -> _Rule:
    def convert(value: Any) -> tuple[Any, ...]:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ValueError
        if non_empty and not value:
            raise ValueError
        return tuple(rule.convert(item) for item in value)

    return _Rule(f"a list of {rule.expected}" + (" (not empty)" if non_empty else ""), convert)


def _plugin_map() -> _Rule:
    target = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    def convert(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError
        result: dict[str, str] = {}
        for name, spec in value.items():
            if not isinstance(name, str) or not isinstance(spec, str) or not target.match(spec):
                raise ValueError
            result[name] = spec
        return result

    return _Rule('a mapping of handler names to "package.module:Class"', convert)


_RULES: dict[str, _Rule] = {
    "thing_name": _pattern(THING_NAME_RE, "1 to 128 characters of [a-zA-Z0-9:_-]"),
    "state_dir": _path(optional=False),
    "handlers": _plugin_map(),
    "connection.transport": _choice(*TRANSPORTS),
    "connection.endpoint": _string(),
    "connection.port": _int_in(1, 65535),
    "connection.cert": _path(optional=True),
    "connection.key": _path(optional=True),
    "connection.ca": _path(optional=True),
    "connection.client_id": _pattern(
        re.compile(r"^[\x21-\x7e]{1,128}$"), "1 to 128 printable characters", allow_empty=True
    ),
    "connection.alpn": _bool(),
    "connection.websocket": _bool(),
    "connection.region": _string(),
    "connection.proxy_host": _string(),
    "connection.proxy_port": _int_in(0, 65535),
    "connection.tls": _bool(),
    "connection.username": _string(),
    "connection.password": _string(),
    "connection.keepalive_seconds": _int_in(30, 1200),
    "connection.session_expiry_seconds": _int_in(0, 604800),
    "connection.reconnect_min_seconds": _number_in(0.01, 3600),
    "connection.reconnect_max_seconds": _number_in(0.01, 3600),
    "jobs.namespaces": _list_of(_pattern(NAMESPACE_RE, "a namespace of [a-zA-Z0-9_-]")),
    "jobs.step_timeout_minutes": _optional(_int_in(STEP_TIMEOUT_MIN, STEP_TIMEOUT_MAX)),
    "jobs.handler_dir": _path(optional=False),
    "jobs.request_timeout_seconds": _number_in(0.1, 3600),
    "jobs.progress_interval_seconds": _number_in(0, 3600),
    "jobs.handler_timeout_seconds": _number_in(0.1, 7 * 24 * 3600),
    "jobs.kill_grace_seconds": _number_in(0, 3600),
    "jobs.output_log_max_bytes": _int_in(1024, 1 << 34),
    "jobs.allowed_users": _list_of(
        _pattern(re.compile(r"^(\*|[^\x00-\x20:/]{1,256})$"), 'a user name or "*"')
    ),
    "jobs.require_signature": _bool(),
    "jobs.allow_root": _bool(),
    "jobs.trusted_keys": _list_of(_path(optional=False)),
    "jobs.reboot_command": _list_of(_string(), non_empty=True),
    "jobs.max_agent_restarts_per_job": _int_in(1, 100),
    "jobs.stop_timeout_seconds": _number_in(0, 3600),
    "jobs.idle_poll_seconds": _number_in(0, 86400),
    "jobs.boot_id_path": _path(optional=False),
    "jobs.handler_environment": _list_of(
        _pattern(
            re.compile(
                r"^(?!JOBS_AGENT_|PATH=|PATH$|HOME=|HOME$)[A-Za-z_][A-Za-z0-9_]*(=[^\x00]*)?$"
            ),
            "NAME=value or NAME (passed from the agent's environment); not PATH, HOME or"
            " JOBS_AGENT_*",
        )
    ),
    "jobs.plugin_path": _list_of(_path(optional=False)),
    "jobs.rerun_after_reboot": _list_of(
        _pattern(re.compile(r"^[^/\x00]{1,255}$"), "a handler file name")
    ),
    "jobs.output_logs_max_count": _int_in(1, 1_000_000),
    "jobs.output_logs_max_total_bytes": _int_in(1024, 1 << 40),
    "jobs.containment": _choice("auto", "cgroup", "subreaper"),
    "jobs.allow_http_downloads": _bool(),
    "log.level": _choice(*LOG_LEVELS),
    "log.format": _choice(*LOG_FORMATS),
    "log.journal_socket": _path(optional=False),
}

_TOP_LEVEL_KEYS = frozenset({"thing_name", "connection", "jobs", "handlers", "state_dir", "log"})
_SECTIONS: dict[str, type] = {
    "connection": ConnectionConfig,
    "jobs": JobsConfig,
    "log": LogConfig,
}


def _located(node: yaml.Node, lines: dict[str, int], path: str) -> Any:
    """Turn a composed YAML node into plain data, remembering the line of every key."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            key_path = f"{path}.{key}" if path else str(key)
            lines[key_path] = key_node.start_mark.line + 1
            if key in result:
                raise ConfigError(
                    f"{key_path}: duplicate key (line {key_node.start_mark.line + 1})"
                )
            result[key] = _located(value_node, lines, key_path)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_located(item, lines, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _did_you_mean(key: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[str, _Where]]:
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML: {problem}{where}") from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    data = _located(node, lines, "")
    return data, {key: f"line {line}" for key, line in lines.items()}


def _apply_environment(
    data: dict[str, Any], where: dict[str, _Where], environ: Mapping[str, str]
) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"{name}: expected JOBS_AGENT_<KEY> or JOBS_AGENT_<SECTION>__<KEY>")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        key_path = ".".join(parts)
        if parts[0] not in _TOP_LEVEL_KEYS:
            # Not a setting (JOBS_AGENT_VENV, the handlers' JOBS_AGENT_JOB_ID, test hooks...):
            # only names that start with a real section or key are overrides.
            continue
        if len(parts) == 1:
            data[parts[0]] = value
        else:
            section = data.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: {parts[0]} is not a section")
            section[parts[1]] = value
        where[key_path] = f"environment {name}"


SECRET_KEYS = frozenset({"connection.password"})
"""Settings whose value is never shown, not even when it is wrong (an error message, a log line
about a refused reload)."""


def _convert(key_path: str, value: Any, where: dict[str, _Where]) -> Any:
    rule = _RULES[key_path]
    try:
        return rule.convert(value)
    except (ValueError, TypeError):
        location = where.get(key_path, "")
        suffix = f" ({location})" if location else ""
        shown = (
            f"a {_kind(value)} (its value is not shown: it is a secret)"
            if key_path in SECRET_KEYS
            else _show(value)
        )
        raise ConfigError(f"{key_path}: expected {rule.expected}, got {shown}{suffix}") from None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _build_section(section: str, cls: type, values: Any, where: dict[str, _Where]) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        location = where.get(section, "")
        raise ConfigError(
            f"{section}: expected a mapping of settings, got {_show(values)}"
            + (f" ({location})" if location else "")
        )
    known = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key_path = f"{section}.{key}"
        if key not in known:
            location = where.get(key_path, "")
            raise ConfigError(
                f"{key_path}: unknown key{_did_you_mean(str(key), known)}"
                + (f" ({location})" if location else "")
            )
        kwargs[key] = _convert(key_path, value, where)
    return cls(**kwargs)


def config_from_data(
    data: Mapping[str, Any],
    where: dict[str, _Where] | None = None,
    *,
    require_thing_name: bool = True,
) -> AgentConfig:
    """Validate plain data (as parsed from YAML) into an `AgentConfig`."""
    where = where or {}
    top_known = [f.name for f in fields(AgentConfig)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top_known:
            location = where.get(str(key), "")
            raise ConfigError(
                f"{key}: unknown key{_did_you_mean(str(key), top_known)}"
                + (f" ({location})" if location else "")
            )
        if key in _SECTIONS:
            kwargs[key] = _build_section(key, _SECTIONS[key], value, where)
        else:
            kwargs[key] = _convert(key, value, where)
    config = AgentConfig(**kwargs)
    _check_whole(config, where, require_thing_name=require_thing_name)
    return config


def _check_whole(
    config: AgentConfig, where: dict[str, _Where], *, require_thing_name: bool
) -> None:
    """Rules that involve more than one key."""
    conn = config.connection
    if require_thing_name and not config.thing_name:
        raise ConfigError("thing_name: required (the AWS IoT thing this agent serves)")
    if conn.transport in ("awscrt", "paho") and not conn.endpoint:
        raise ConfigError(
            f"connection.endpoint: required with transport {conn.transport}"
            " (the AWS IoT data endpoint or the broker's host name)"
        )
    if (
        conn.transport == "awscrt"
        and not conn.websocket
        and (conn.cert is None or conn.key is None)
    ):
        raise ConfigError(
            "connection.cert and connection.key: required with transport awscrt"
            " unless connection.websocket is true"
        )
    if (conn.cert is None) != (conn.key is None):
        missing = "connection.key" if conn.key is None else "connection.cert"
        raise ConfigError(f"{missing}: required when the other half of the key pair is given")
    if conn.reconnect_min_seconds > conn.reconnect_max_seconds:
        raise ConfigError(
            "connection.reconnect_min_seconds: must not exceed reconnect_max_seconds"
            f" ({where.get('connection.reconnect_min_seconds', 'default')})"
        )
    if GREENGRASS_NAMESPACE in config.jobs.namespaces:
        raise ConfigError(
            f"jobs.namespaces: {GREENGRASS_NAMESPACE} belongs to the Greengrass nucleus and is"
            f" never served by this agent ({where.get('jobs.namespaces', '')})"
        )
    if config.jobs.require_signature and not config.jobs.trusted_keys:
        raise ConfigError("jobs.trusted_keys: required when jobs.require_signature is true")


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_thing_name: bool = True,
    missing_ok: bool = False,
) -> AgentConfig:
    """Load, override from the environment and validate. Raises `ConfigError`.

    With `missing_ok`, a file that does not exist counts as an empty one (the defaults, then
    the environment); relative paths are then relative to the working directory.
    """
    environ = os.environ if environ is None else environ
    path = path or DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not missing_ok:
            raise ConfigError(f"{path}: no such configuration file (use --config PATH)") from None
        # No file, so no connection either: only what runs jobs matters (`exec`).
        data: dict[str, Any] = {"connection": {"transport": "local"}}
        where: dict[str, _Where] = {}
        _apply_environment(data, where, environ)
        config = config_from_data(data, where, require_thing_name=require_thing_name)
        return resolve_relative_paths(config, Path.cwd())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc}") from None
    data, where = _parse_yaml(text, str(path))
    _apply_environment(data, where, environ)
    _thing_name_from_greengrass(data, where, environ)
    try:
        config = config_from_data(data, where, require_thing_name=require_thing_name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return resolve_relative_paths(config, path.parent.resolve())


def _thing_name_from_greengrass(
    data: dict[str, Any], where: dict[str, _Where], environ: Mapping[str, str]
) -> None:
    """Under Greengrass the nucleus names the thing (AWS_IOT_THING_NAME) unless the file does."""
    connection = data.get("connection")
    transport = connection.get("transport") if isinstance(connection, dict) else None
    if (
        transport == "greengrass"
        and not data.get("thing_name")
        and environ.get("AWS_IOT_THING_NAME")
    ):
        data["thing_name"] = environ["AWS_IOT_THING_NAME"]
        where["thing_name"] = "environment AWS_IOT_THING_NAME"


def resolve_relative_paths(config: AgentConfig, base: Path) -> AgentConfig:
    """Relative paths in a config file mean: relative to the file, not to the working directory."""

    def fix(value: Path | None) -> Path | None:
        return value if value is None or value.is_absolute() else base / value

    conn = config.connection
    jobs = config.jobs
    return replace(
        config,
        state_dir=fix(config.state_dir) or config.state_dir,
        connection=replace(conn, cert=fix(conn.cert), key=fix(conn.key), ca=fix(conn.ca)),
        jobs=replace(
            jobs,
            handler_dir=fix(jobs.handler_dir) or jobs.handler_dir,
            boot_id_path=fix(jobs.boot_id_path) or jobs.boot_id_path,
            trusted_keys=tuple(fix(k) or k for k in jobs.trusted_keys),
            plugin_path=tuple(fix(p) or p for p in jobs.plugin_path),
        ),
        log=replace(
            config.log, journal_socket=fix(config.log.journal_socket) or config.log.journal_socket
        ),
    )
