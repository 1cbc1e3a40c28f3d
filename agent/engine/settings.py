"""What the engine reads: its own settings, not the agent's configuration.

The configuration loader fills these from the `jobs:` section and the top-level keys of the same
names (`AgentConfig.engine_settings()`); a SIGHUP reload hands the engine a new set through
`Engine.reconfigure`, which takes effect from the next job (a running one keeps its own).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from jobs_agent.datamodel import model
from jobs_agent.schedule.windows import Windows
from jobs_agent.vocabulary import STEP_TIMEOUT_MAX


@model
class EngineSettings:
    """What the engine reads of the configuration, and nothing else of it."""

    thing_name: str = ""
    state_dir: Path = Path("/var/lib/jobs-agent")
    """The state database, job directories, output logs and crash markers live below it."""
    namespaces: tuple[str, ...] = ()
    step_timeout_minutes: int | None = 10
    progress_interval_seconds: float = 5.0
    kill_grace_seconds: float = 10.0
    stop_timeout_seconds: float = 60.0
    idle_poll_seconds: float = 900.0
    """Idle, ask for work this often even without a notification (0: never)."""
    max_agent_restarts_per_job: int = 3
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    containment: str = "auto"
    output_logs_max_count: int = 200
    output_logs_max_total_bytes: int = 100 * 1024 * 1024
    maintenance_windows: Windows = field(default_factory=Windows)
    """The device's windows: a job starts only while they are open (none: always)."""
    max_deferral_minutes: int = STEP_TIMEOUT_MAX
    """Deferred longer than this in all, an execution is reported FAILED."""
    defer_default_seconds: float = 900.0
    """A handler's "not now" without a time waits this long."""
    max_document_refreshes: int = 10
    """How often one run of a handler may fetch its job document again for fresh URLs."""
    run_others_while_deferred: bool = False
    """While an execution is deferred, take and run other QUEUED executions (one at a time,
    by name: `engine/turns.py`); false: nothing else runs while a job waits."""
