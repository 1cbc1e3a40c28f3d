"""What the dispatcher and its sandbox read: their own settings, not the agent's configuration.

The configuration loader fills these from the `jobs:` section and the top-level keys of the same
names (`AgentConfig.dispatch_settings()`); a SIGHUP reload builds a new set and a new Dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from jobs_agent.datamodel import model
from jobs_agent.schedule.windows import Windows

if TYPE_CHECKING:
    from jobs_agent_handlers.system_update.settings import SystemUpdateSettings


def _system_update_defaults() -> SystemUpdateSettings:
    from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

    return SystemUpdateSettings()


ANY_USER = "*"
"""In `jobs.allowed_users`: any user of the device (what the Device Client allows)."""


@model
class DispatchSettings:
    """What the dispatcher reads of the configuration, and nothing else of it."""

    thing_name: str = ""
    """What a signature's `thingName` claim is held against."""
    state_dir: Path = Path("/var/lib/jobs-agent")
    """Where per-job output logs and containment groups live."""
    handlers: Mapping[str, str] = field(default_factory=dict)
    """Python plugins by name: `{name: "package.module:Class"}`."""
    handler_dir: Path = Path("/etc/jobs-agent/handlers")
    handler_timeout_seconds: float = 3600.0
    kill_grace_seconds: float = 10.0
    output_log_max_bytes: int = 10 * 1024 * 1024
    allowed_users: tuple[str, ...] = (ANY_USER,)
    allow_root: bool | None = None
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    handler_environment: tuple[str, ...] = ()
    plugin_path: tuple[Path, ...] = ()
    rerun_after_reboot: tuple[str, ...] = ("reboot.sh",)
    containment: str = "auto"
    allow_http_downloads: bool = False
    maintenance_windows: Windows = field(default_factory=Windows)
    """The device's windows: a Device Client step with a `timeout` that would outlast them is
    deferred to the next opening long enough for it (`StepsHandler`)."""
    request_timeout_seconds: float = 30.0
    """How long a request over the agent's MQTT link may go unanswered (a stream download's
    GetStream, as the Jobs client's requests)."""
    system_update: SystemUpdateSettings = field(default_factory=_system_update_defaults)
    """The `system-update` handler's updaters and health checks (`system_update:`)."""
