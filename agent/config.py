"""Typed configuration, loaded from one YAML file and validated before anything starts.

Errors name the key, the line and what was expected, e.g.
`connection.port: expected an integer from 1 to 65535, got "abc" (line 7)`, because an operator
fixing a gateway's config over a slow shell needs the exact place, not a traceback.
Environment variables `JOBS_AGENT_<SECTION>__<KEY>` (or `JOBS_AGENT_<KEY>` for top-level keys)
override the file; their values are parsed as YAML scalars/flow collections. The YAML is read
by `config_yaml` (PyYAML is loaded only then); the daemon passes a `config_cache.ParseCache`,
and a start whose file is unchanged takes the parse kept in the state directory instead.

This module parses and routes: every option is declared (with its rule, `option_rules`) by its
owner. `connection:` is checked against the options of the transport it names
(`jobs_agent.transport.options`), which that backend receives as they are; `jobs:` and `log:`
are declared here, and the engine and the dispatcher get the parts they read as settings of
their own (`AgentConfig.engine_settings()`, `dispatch_settings()`), never this module.

The module is longer than 500 lines: it declares every setting of `jobs:` and the top level, each
with the line of docstring that says what it does, and splitting the declarations from the loader
would put the one list an operator's key is checked against in two places.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs_agent.config_cache import DEFAULT_STATE_DIR, ParseCache
from jobs_agent.config_json import plain_json
from jobs_agent.consent.settings import ConsentSettings
from jobs_agent.datamodel import model
from jobs_agent.dispatch.settings import ANY_USER, DispatchSettings
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.inventory.reading import InventoryError
from jobs_agent.inventory.settings import InventorySettings, inventory_settings
from jobs_agent.option_rules import (
    Rule,
    boolean,
    choice,
    int_in,
    is_secret,
    list_of,
    number_in,
    option,
    optional,
    path,
    pattern,
    plugin_map,
    rule_of,
    string,
)
from jobs_agent.schedule.windows import Windows, windows_from_config
from jobs_agent.transport.options import (
    TRANSPORT_OPTIONS,
    AwscrtOptions,
    TransportOptions,
    transport_options,
)
from jobs_agent.vocabulary import (
    GREENGRASS_NAMESPACE,
    NAMESPACE_RE,
    STEP_TIMEOUT_MAX,
    STEP_TIMEOUT_MIN,
    THING_NAME_RE,
)

if TYPE_CHECKING:
    # Read when the file has a `system_update:` section, or by the first job that runs the
    # handler: an agent without one never loads it (issue 18).
    from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

DEFAULT_CONFIG_PATH = Path("/etc/jobs-agent/config.yaml")
ENV_PREFIX = "JOBS_AGENT_"
TRANSPORTS = tuple(TRANSPORT_OPTIONS)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json", "journal")

ConnectionConfig = transport_options
"""The `connection:` section is the options of its transport; this builds them from keywords
(`ConnectionConfig(transport="paho", endpoint=...)`), under the name it has always had."""


class ConfigError(Exception):
    """A configuration problem; the message is complete and meant for the operator."""


_HANDLER_ENVIRONMENT = re.compile(
    r"(?!JOBS_AGENT_|PATH=|PATH$|HOME=|HOME$)[A-Za-z_][A-Za-z0-9_]*(=[^\x00]*)?"
)


@model
class JobsConfig:
    """The `jobs:` section: how jobs are taken, run and reported."""

    namespaces: tuple[str, ...] = option(
        (), list_of(pattern(NAMESPACE_RE, "a namespace of [a-zA-Z0-9_-]"))
    )
    step_timeout_minutes: int | None = option(
        10, optional(int_in(STEP_TIMEOUT_MIN, STEP_TIMEOUT_MAX))
    )
    handler_dir: Path = option(Path("/etc/jobs-agent/handlers"), path(optional=False))
    request_timeout_seconds: float = option(30.0, number_in(0.1, 3600))
    progress_interval_seconds: float = option(5.0, number_in(0, 3600))
    handler_timeout_seconds: float = option(3600.0, number_in(0.1, 7 * 24 * 3600))
    """Default per-step limit for a handler when the document gives none (never infinite)."""
    kill_grace_seconds: float = option(10.0, number_in(0, 3600))
    output_log_max_bytes: int = option(10 * 1024 * 1024, int_in(1024, 1 << 34))
    allowed_users: tuple[str, ...] = option(
        (ANY_USER,), list_of(pattern(re.compile(r"\*|[^\x00-\x20:/]{1,256}"), 'a user name or "*"'))
    )
    """Who jobs may run as: `runAsUser`, or the agent's own user when a step names none."""
    allow_root: bool | None = option(None, boolean())
    """Deprecated (kept so that an upgraded gateway with an earlier configuration still starts
    and stays reachable): `false` refuses root even where `allowed_users` allows it."""
    require_signature: bool = option(False, boolean())
    trusted_keys: tuple[Path, ...] = option((), list_of(path(optional=False)))
    reboot_command: tuple[str, ...] = option(
        ("systemctl", "reboot"), list_of(string(), non_empty=True)
    )
    max_agent_restarts_per_job: int = option(3, int_in(1, 100))
    stop_timeout_seconds: float = option(60.0, number_in(0, 3600))
    idle_poll_seconds: float = option(900.0, number_in(0, 86400))
    """Idle, ask for work this often even without a notification (0: never)."""
    boot_id_path: Path = option(Path("/proc/sys/kernel/random/boot_id"), path(optional=False))
    """Where the boot id is read to confirm a requested reboot happened (tests, containers)."""
    handler_environment: tuple[str, ...] = option(
        (),
        list_of(
            pattern(
                _HANDLER_ENVIRONMENT,
                "NAME=value or NAME (passed from the agent's environment); not PATH, HOME or"
                " JOBS_AGENT_*",
            )
        ),
    )
    """Extra environment for handlers: `NAME=value`, or `NAME` to pass the agent's own value."""
    plugin_path: tuple[Path, ...] = option((), list_of(path(optional=False)))
    """Directories put on `sys.path` before Python plugins are imported (checked like handlers)."""
    rerun_after_reboot: tuple[str, ...] = option(
        ("reboot.sh",), list_of(pattern(re.compile(r"[^/\x00]{1,255}"), "a handler file name"))
    )
    """Handlers (the Device Client's reboot.sh) whose step is run again after the boot it asked
    for, because they confirm the reboot on their second run."""
    output_logs_max_count: int = option(200, int_in(1, 1_000_000))
    """Per-job output logs kept under state_dir/logs (the oldest are deleted first)."""
    output_logs_max_total_bytes: int = option(100 * 1024 * 1024, int_in(1024, 1 << 40))
    """Total size the per-job output logs may take (the oldest are deleted first)."""
    containment: str = option("auto", choice("auto", "cgroup", "subreaper"))
    """How a step's processes are kept together: a cgroup per step, or a child subreaper."""
    allow_http_downloads: bool = option(False, boolean())
    """The download handler fetches https:// only unless this is true."""
    maintenance_windows: Windows = option(rule=Rule("", windows_from_config, True), factory=Windows)
    """When jobs may run (`jobs_agent.schedule.windows`); none: always."""
    max_deferral_minutes: int = option(STEP_TIMEOUT_MAX, int_in(1, STEP_TIMEOUT_MAX))
    """How long one execution may wait deferred in all before it is reported FAILED."""
    defer_default_seconds: float = option(900.0, number_in(1, 86400))
    """How long a handler's "not now" waits when it names no time."""
    max_document_refreshes: int = option(10, int_in(0, 1000))
    """How often one run of a handler may ask the service for its job document again, for
    newly signed presigned URLs (an expired URL, a resumed download); 0: never."""
    run_others_while_deferred: bool = option(False, boolean())
    """While an execution is deferred, run other QUEUED executions (one at a time); a reload
    applies it from the next deferral."""


@model
class LogConfig:
    """The `log:` section: how much the agent logs, and where."""

    level: str = option("info", choice(*LOG_LEVELS))
    format: str = option("auto", choice(*LOG_FORMATS))
    """auto: console on a terminal, journald under systemd (JOURNAL_STREAM), else JSON lines."""
    journal_socket: Path = option(Path("/run/systemd/journal/socket"), path(optional=False))
    """journald's native socket; without it, journal lines carry syslog `<N>` priorities."""


@model
class AgentConfig:
    """The whole configuration file, validated: each section as its owner declares it."""

    thing_name: str = option("", pattern(THING_NAME_RE, "1 to 128 characters of [a-zA-Z0-9:_-]"))
    connection: TransportOptions = field(default_factory=AwscrtOptions)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    handlers: Mapping[str, str] = option(rule=plugin_map(), factory=dict)
    """Python plugins by name: `{name: "package.module:Class"}`."""
    state_dir: Path = option(DEFAULT_STATE_DIR, path(optional=False))
    log: LogConfig = field(default_factory=LogConfig)
    consent: ConsentSettings = option(
        rule=Rule("", ConsentSettings.from_mapping, True), factory=ConsentSettings
    )
    """The consent socket and who may answer it (`jobs_agent.consent.settings`)."""
    inventory: InventorySettings = field(default_factory=InventorySettings)
    """`inventory:`, declared and checked by its owner (`jobs_agent.inventory.settings`)."""
    system_update: SystemUpdateSettings | None = None
    """The device's updaters and health checks for the `system-update` handler; None when the
    file has no `system_update:` section (`system_update_settings()`: the defaults then)."""

    @property
    def client_id(self) -> str:
        return self.connection.client_id or self.thing_name

    def engine_settings(self) -> EngineSettings:
        """What the engine reads, as the engine declares it."""
        return EngineSettings(**self._routed(EngineSettings))

    def dispatch_settings(self) -> DispatchSettings:
        """What the dispatcher and its sandbox read, as the dispatcher declares it."""
        return DispatchSettings(**self._routed(DispatchSettings))

    def system_update_settings(self) -> SystemUpdateSettings:
        """The `system_update:` section, or its defaults when the file has none (built here:
        the module that declares them loads only for an agent that uses them)."""
        if self.system_update is not None:
            return self.system_update
        from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

        return SystemUpdateSettings()

    def _routed(self, owner: type) -> dict[str, Any]:
        """Every setting `owner` declares, by its name, from the top level or `jobs:` (a name
        found in neither is a KeyError: an owner cannot ask for an option nobody declares)."""
        values = {
            "thing_name": self.thing_name,
            "state_dir": self.state_dir,
            "handlers": self.handlers,
            **{f.name: getattr(self.jobs, f.name) for f in fields(self.jobs)},
        }
        names = [f.name for f in fields(owner)]
        if "system_update" in names:
            values["system_update"] = self.system_update_settings()
        return {name: values[name] for name in names}


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

_Where = str
"""Where a value came from, as shown to the operator: "line 7" or "environment JOBS_AGENT_X"."""


def _did_you_mean(key: str, candidates: list[str]) -> str:
    import difflib  # only for a misspelt key: 0.2 MB an agent that starts need not carry

    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    from jobs_agent.config_yaml import shown

    return shown(value)


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[str, _Where]]:
    from jobs_agent.config_yaml import YamlProblem, parse_yaml

    try:
        return parse_yaml(text)
    except YamlProblem as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _apply_environment(
    data: dict[str, Any], where: dict[str, _Where], environ: Mapping[str, str]
) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"{name}: expected JOBS_AGENT_<KEY> or JOBS_AGENT_<SECTION>__<KEY>")
        if parts[0] not in _TOP_LEVEL_KEYS:
            # Not a setting (JOBS_AGENT_VENV, the handlers' JOBS_AGENT_JOB_ID, test hooks...):
            # only names that start with a real section or key are overrides (and only they
            # load PyYAML, to read their value).
            continue
        from jobs_agent.config_yaml import scalar

        value = scalar(raw)
        key_path = ".".join(parts)
        if len(parts) == 1:
            data[parts[0]] = value
        else:
            section = data.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: {parts[0]} is not a section")
            section[parts[1]] = value
        where[key_path] = f"environment {name}"


_TOP_LEVEL_KEYS = frozenset(f.name for f in fields(AgentConfig))
_SECTIONS: dict[str, type] = {
    "jobs": JobsConfig,
    "log": LogConfig,
}


def _located_suffix(where: dict[str, _Where], key_path: str) -> str:
    location = where.get(key_path, "")
    return f" ({location})" if location else ""


def _convert(
    key_path: str, item: dataclasses.Field[Any], value: Any, where: dict[str, _Where]
) -> Any:
    rule = rule_of(item)
    if rule is None:  # sections are built by their own functions
        raise ConfigError(f"{key_path}: not a setting")
    return _checked(key_path, rule, value, where, secret=is_secret(item))


def _checked(
    key_path: str, rule: Rule, value: Any, where: dict[str, _Where], *, secret: bool = False
) -> Any:
    try:
        return rule.convert(value)
    except (ValueError, TypeError) as exc:
        if rule.explains and str(exc):
            raise ConfigError(f"{exc}{_located_suffix(where, key_path)}") from None
        shown = (
            f"a {_kind(value)} (its value is not shown: it is a secret)" if secret else _show(value)
        )
        raise ConfigError(
            f"{key_path}: expected {rule.expected}, got {shown}{_located_suffix(where, key_path)}"
        ) from None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _section_values(section: str, values: Any, where: dict[str, _Where]) -> dict[Any, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{section}: expected a mapping of settings, got {_show(values)}"
            + _located_suffix(where, section)
        )
    return values


def _unknown_key(
    key_path: str, key: object, known: list[str], where: dict[str, _Where]
) -> ConfigError:
    suggestion = _did_you_mean(str(key), known)
    return ConfigError(f"{key_path}: unknown key{suggestion}{_located_suffix(where, key_path)}")


def _build_section(section: str, cls: type, values: Any, where: dict[str, _Where]) -> Any:
    """A section's dataclass from its values, each checked by the rule its field declares."""
    by_name = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in _section_values(section, values, where).items():
        key_path = f"{section}.{key}"
        if key not in by_name:
            raise _unknown_key(key_path, key, list(by_name), where)
        kwargs[key] = _convert(key_path, by_name[key], value, where)
    return cls(**kwargs)


_TRANSPORT_RULE = choice(*TRANSPORTS)


def _build_connection(values: Any, where: dict[str, _Where]) -> TransportOptions:
    """The options of the transport the section names, routed to that backend's dataclass."""
    values = dict(_section_values("connection", values, where))
    chosen = values.pop("transport", "awscrt")
    transport = _checked("connection.transport", _TRANSPORT_RULE, chosen, where)
    owner = TRANSPORT_OPTIONS[transport]
    own = [f.name for f in fields(owner)]
    for key in values:
        if key not in own:
            others = [name for name, cls in TRANSPORT_OPTIONS.items() if key in _names(cls)]
            if not others:
                raise _unknown_key(f"connection.{key}", key, ["transport", *own], where)
            raise ConfigError(
                f"connection.{key}: not an option of transport {transport} (it is one of"
                f" {', '.join(others)})" + _located_suffix(where, f"connection.{key}")
            )
    options: TransportOptions = _build_section("connection", owner, values, where)
    for name, message in options.problems():
        raise ConfigError(
            f"connection.{name}: {message}" + _located_suffix(where, f"connection.{name}")
        )
    return options


def _build_inventory(values: Any, where: dict[str, _Where]) -> InventorySettings:
    try:
        return inventory_settings(values)
    except InventoryError as exc:
        key = str(exc).partition(":")[0].partition("[")[0]
        raise ConfigError(f"{exc}{_located_suffix(where, key)}") from None


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def config_from_data(
    data: Mapping[str, Any],
    where: dict[str, _Where] | None = None,
    *,
    require_thing_name: bool = True,
) -> AgentConfig:
    """Validate plain data (as parsed from YAML) into an `AgentConfig`."""
    where = where or {}
    by_name = {f.name: f for f in fields(AgentConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in by_name:
            raise _unknown_key(str(key), key, list(by_name), where)
        if key == "connection":
            kwargs[key] = _build_connection(value, where)
        elif key == "inventory":
            kwargs[key] = _build_inventory(value, where)
        elif key in _SECTIONS:
            kwargs[key] = _build_section(key, _SECTIONS[key], value, where)
        elif key == "system_update":
            from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

            kwargs[key] = _build_section(key, SystemUpdateSettings, value, where)
        else:
            kwargs[key] = _convert(key, by_name[key], value, where)
    config = AgentConfig(**kwargs)
    _check_whole(config, where, require_thing_name=require_thing_name)
    return config


def _check_whole(
    config: AgentConfig, where: dict[str, _Where], *, require_thing_name: bool
) -> None:
    """Rules that involve more than one section (each transport checks its own options)."""
    if require_thing_name and not config.thing_name:
        raise ConfigError("thing_name: required (the AWS IoT thing this agent serves)")
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
    cache: ParseCache | None = None,
) -> AgentConfig:
    """Load, override from the environment and validate. Raises `ConfigError`.

    With `missing_ok`, a file that does not exist counts as an empty one (the defaults, then
    the environment); relative paths are then relative to the working directory. With `cache`
    (the daemon's), an unchanged file's parse is read from the state directory
    (`config_cache`): everything after the parse runs on it as on a fresh one.
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
    plain = plain_json(text)  # read as YAML would read it, without PyYAML or a kept parse
    if plain is not None:
        try:
            return _from_file_data(path, plain, {}, environ, require_thing_name)
        except ConfigError:
            pass  # said again below, from the YAML reader's parse, with the setting's line
    if cache is not None:
        hit = cache.lookup(text, path, environ)
        if hit is not None:
            data, where, directory = hit
            try:
                config = _from_file_data(path, data, where, environ, require_thing_name)
            except ConfigError:
                cache.used()  # the very error a fresh parse gives (the lines are kept)
                raise
            if config.state_dir == directory:
                cache.used()
                return config
            # Found where the text's `state_dir:` line pointed, yet the file names another
            # directory: only a parse of the text itself says what it names.
    data, where = _parse_yaml(text, str(path))
    if cache is not None:
        cache.missed(text, path, environ, (data, where))
    config = _from_file_data(path, data, where, environ, require_thing_name)
    if cache is not None and _holds_secret(config.connection):
        cache.forget()  # the agent keeps no second copy of a secret (docs/security.md)
    return config


def _holds_secret(options: TransportOptions) -> bool:
    """True when the file sets an option marked secret (`connection.password`)."""
    return any(is_secret(item) and getattr(options, item.name) for item in fields(options))


def _from_file_data(
    path: Path,
    data: dict[str, Any],
    where: dict[str, _Where],
    environ: Mapping[str, str],
    require_thing_name: bool,
) -> AgentConfig:
    """The configuration the file's parse (fresh or cached) makes, with the environment on top."""
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

    def fix(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else base / value
        if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
            return tuple(fix(v) for v in value)
        return value

    def fixed(section: Any) -> Any:
        return replace(section, **{f.name: fix(getattr(section, f.name)) for f in fields(section)})

    system_update = config.system_update
    return replace(
        config,
        state_dir=fix(config.state_dir),
        connection=fixed(config.connection),
        jobs=fixed(config.jobs),
        log=fixed(config.log),
        system_update=None if system_update is None else fixed(system_update),
    )
