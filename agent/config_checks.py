"""What a valid configuration can still get wrong on this device, checked before it bites.

`config.py` checks the file's syntax and types; this checks the world the file points at:
the certificate, key and CA files exist and can be read, the handler directory exists and
passes the ownership checks jobs would fail on, every configured plugin imports, the trusted
keys load, (for the `config check` command) every inventory source can be read, and what a
system update would trip on (a health command that cannot run, SWUpdate without its
certificate). It also warns about setups that work but let others in: a broker reached without
TLS or without credentials while documents need no signature, so that any local MQTT client
could answer the agent's requests with a document of its own (run as root).
Used by `jobs-agent config check` and logged by the daemon when it starts.
"""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path

from jobs_agent.config import AgentConfig
from jobs_agent.datamodel import model
from jobs_agent.transport.options import MqttOptions, PahoOptions


@model(frozen=False)
class Findings:
    """What the environment checks found, split by whether it breaks the agent or only warns."""

    errors: list[str] = field(default_factory=list)
    """Problems that make jobs or the connection fail: name the key and the file."""
    warnings: list[str] = field(default_factory=list)
    """Setups that work but are unsafe or surprising."""


def check_environment(config: AgentConfig, *, import_plugins: bool = True) -> Findings:
    findings = Findings()
    _check_connection_files(config, findings)
    _check_handler_dir(config, findings)
    _check_plugins(config, findings, import_plugins=import_plugins)
    if import_plugins:
        _check_inventory(config, findings)
    _check_transport_security(config, findings)
    _check_deprecated(config, findings)
    _check_system_update(config, findings)
    return findings


def _readable_file(path: Path) -> str | None:
    """Why `path` cannot be used as an input file, or None."""
    try:
        if not path.exists():
            return "no such file"
        if not path.is_file():
            return "not a regular file"
        with open(path, "rb"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _check_connection_files(config: AgentConfig, findings: Findings) -> None:
    conn = config.connection
    if not isinstance(conn, MqttOptions):
        return
    for key, path in (("cert", conn.cert), ("key", conn.key), ("ca", conn.ca)):
        if path is None:
            continue
        problem = _readable_file(path)
        if problem is not None:
            findings.errors.append(f"connection.{key}: {path}: {problem}")
    for index, key_path in enumerate(config.jobs.trusted_keys):
        problem = _readable_file(key_path)
        if problem is not None:
            findings.errors.append(f"jobs.trusted_keys[{index}]: {key_path}: {problem}")


def _check_handler_dir(config: AgentConfig, findings: Findings) -> None:
    from jobs_agent.dispatch.paths import check_trusted
    from jobs_agent_handlers.outcome import JobRejected

    directory = config.jobs.handler_dir
    if not directory.exists():
        findings.errors.append(
            f"jobs.handler_dir: {directory}: no such directory (documents that name a handler"
            " there are REJECTED; create it: install -d -m 0755 " + str(directory) + ")"
        )
        return
    if not directory.is_dir():
        findings.errors.append(f"jobs.handler_dir: {directory}: not a directory")
        return
    try:
        check_trusted(directory, "handler directory")
    except JobRejected as exc:
        findings.errors.append(f"jobs.handler_dir: {exc.reason}")
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        findings.errors.append(f"jobs.handler_dir: {directory}: {exc.strerror}")
        return
    for entry in entries:
        if entry.is_file():
            try:
                check_trusted(entry, "handler")
            except JobRejected as exc:
                findings.errors.append(f"jobs.handler_dir: {exc.reason}")
            if not os.access(entry, os.X_OK):
                findings.warnings.append(
                    f"jobs.handler_dir: {entry} is not executable: jobs naming it are REJECTED"
                )
    reboot = directory / "reboot.sh"
    if reboot.is_file() and "reboot.sh" not in config.jobs.rerun_after_reboot:
        findings.warnings.append(
            f"jobs.handler_dir: {reboot} replaces the agent's built-in reboot.sh; if it is the"
            " Device Client's (which confirms the reboot when it is run again after the boot),"
            " keep reboot.sh in jobs.rerun_after_reboot"
        )


def _check_plugins(config: AgentConfig, findings: Findings, *, import_plugins: bool) -> None:
    if not config.jobs.plugin_path and not import_plugins:
        return  # nothing to check: the daemon's start then loads no plugin machinery (issue 18)
    from jobs_agent.dispatch.plugins import PluginError, PluginRegistry, add_plugin_path

    try:
        add_plugin_path(config.jobs.plugin_path)
    except PluginError as exc:
        findings.errors.append(str(exc))
        return
    if not import_plugins:
        return
    registry = PluginRegistry.discover(config.handlers, plugin_path=config.jobs.plugin_path)
    for name in registry.names():
        try:
            registry.get(name)
        except PluginError as exc:
            key = f"handlers.{name}" if name in config.handlers else f"plugin {name!r}"
            findings.errors.append(f"{key}: {exc}")


def _check_inventory(config: AgentConfig, findings: Findings) -> None:
    """Read each source as the agent will (a file through its trust checks, a command run, a
    plugin imported): a source that fails leaves its packages unknown to `$package` and to the
    "already installed" check."""
    import asyncio

    from jobs_agent.inventory.reading import InventoryError

    for index, source in enumerate(config.inventory.sources):
        try:
            asyncio.run(source.read())
        except InventoryError as exc:
            findings.errors.append(f"inventory.sources[{index}]: {exc}")


def _check_transport_security(config: AgentConfig, findings: Findings) -> None:
    conn = config.connection
    if not isinstance(conn, PahoOptions) or config.jobs.require_signature:
        return
    has_credentials = bool(conn.username) or conn.cert is not None
    if conn.tls and has_credentials:
        return
    missing = " and ".join(
        part
        for part, absent in (("TLS", not conn.tls), ("credentials", not has_credentials))
        if absent
    )
    findings.warnings.append(
        f"connection: the broker {conn.endpoint}:{conn.port} is reached without {missing}"
        " and jobs.require_signature is false: any client that can connect to it can answer"
        " the agent's requests with a job document of its own, which runs as root. Give the"
        " broker per-client credentials and ACLs (only the bridge may publish on this thing's"
        " $aws/things/.../jobs topics), or set jobs.require_signature with trusted_keys"
    )


def _check_deprecated(config: AgentConfig, findings: Findings) -> None:
    """Settings of earlier versions are accepted (a configuration error would stop an upgraded
    fleet, and with it the only remote way to fix the file: a job), but said to be on the way
    out."""
    if config.jobs.allow_root is not None:
        meaning = (
            "refuses root even where jobs.allowed_users allows it"
            if config.jobs.allow_root is False
            else "changes nothing"
        )
        findings.warnings.append(
            f"jobs.allow_root is deprecated ({meaning}): list the users jobs may run as in"
            " jobs.allowed_users (root included or not) and remove it"
        )


def _check_system_update(config: AgentConfig, findings: Findings) -> None:
    """What the `system-update` handler would only find out in the middle of an update."""
    section = config.system_update
    if section is None:
        return  # the defaults name no certificate and no health command
    if section.swupdate_slots and section.swupdate_ca_certificate is None:
        findings.errors.append(
            "system_update.swupdate_ca_certificate: required with system_update.swupdate_slots"
            " (SWUpdate checks every bundle's signature against it)"
        )
    if section.swupdate_ca_certificate is not None:
        problem = _readable_file(section.swupdate_ca_certificate)
        if problem is not None:
            findings.errors.append(
                f"system_update.swupdate_ca_certificate: {section.swupdate_ca_certificate}:"
                f" {problem}"
            )
    for index, argv in enumerate(section.health_commands):
        import shutil  # here: shutil loads lzma and bz2 (0.4 MB), of no use to most agents

        if shutil.which(argv[0]) is None:
            findings.errors.append(
                f"system_update.health_commands[{index}]: {argv[0]}: not found or not"
                " executable (a new system would fail this check and be rolled back)"
            )
