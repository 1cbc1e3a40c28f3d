"""The `system-update` handler's edges that need no updater: its document (REJECTED with the
reason before anything runs), its `system_update:` configuration (errors name the key and the
line), and the health checks (real commands; systemd units through a stand-in `systemctl`,
as this machine runs no systemd: the stand-in answers `is-active` from a file)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jobs_agent.config import ConfigError, load_config
from jobs_agent.dispatch.router import Dispatcher
from jobs_agent.dispatch.settings import DispatchSettings
from jobs_agent_handlers.api import JobRejected
from jobs_agent_handlers.system_update.handler import SystemUpdateHandler
from jobs_agent_handlers.system_update.health import HealthChecks
from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

SHA = "0" * 64


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"updater": "mender", "url": "https://x/b", "sha256": SHA}, "updater: expected"),
        ({"updater": "rauc", "sha256": SHA}, "a url or a stream"),
        (
            {"updater": "rauc", "url": "https://x/b", "stream": {"streamId": "s"}, "sha256": SHA},
            "a url or a stream",
        ),
        ({"updater": "rauc", "url": "https://x/b"}, "sha256: required"),
        (
            {"updater": "swupdate", "url": "https://x/b", "sha256": SHA},
            "system_update.swupdate_slots",
        ),
    ],
)
async def test_a_wrong_document_is_rejected_before_anything_runs(
    tmp_path: Path, document: dict[str, Any], reason: str
) -> None:
    handler = SystemUpdateHandler(state_dir=tmp_path)
    ctx = SimpleNamespace(document={"operation": "system-update", **document})
    with pytest.raises(JobRejected, match=reason):
        await handler.run(ctx)  # type: ignore[arg-type]


def test_the_dispatcher_resolves_the_built_in_handler_with_the_devices_settings(
    tmp_path: Path,
) -> None:
    settings = SystemUpdateSettings(health_units=("app.service",))
    dispatcher = Dispatcher(
        DispatchSettings(
            state_dir=tmp_path, boot_id_path=tmp_path / "boot_id", system_update=settings
        )
    )
    handler = dispatcher.resolve({"operation": "system-update"})
    assert handler.name == "system-update" and handler.resumable
    target = handler.target  # type: ignore[attr-defined]
    assert isinstance(target, SystemUpdateHandler)
    assert target.settings is settings
    assert target.boot_id_path == tmp_path / "boot_id"


def _config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"thing_name: gw\nsystem_update:\n{section}")
    return path


def test_the_configuration_section_is_read_and_checked(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            "  health_commands: [[/usr/bin/app-check, --quick]]\n"
            "  health_units: [app.service]\n"
            "  health_deadline_seconds: 120\n"
            "  swupdate_slots: {A: /dev/mmcblk0p2, B: /dev/mmcblk0p3}\n",
        ),
        environ={},
    )
    section = config.system_update
    assert section.health_commands == (("/usr/bin/app-check", "--quick"),)
    assert section.swupdate_slots == {"A": "/dev/mmcblk0p2", "B": "/dev/mmcblk0p3"}
    assert config.dispatch_settings().system_update == section


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  health_units: ['no spaces allowed']\n", "system_update.health_units: expected"),
        ("  health_deadline_seconds: 0\n", "system_update.health_deadline_seconds"),
        ("  swupdate_slots: {A: /dev/a}\n", "system_update.swupdate_slots: expected"),
        ("  health_command: [[x]]\n", "did you mean"),
    ],
)
def test_a_bad_key_is_named_with_its_line(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, section), environ={})
    assert message in str(info.value)
    assert "line 3" in str(info.value)


def _systemctl(tmp_path: Path) -> tuple[str, ...]:
    """A stand-in for `systemctl is-active --quiet UNIT`: active when tmp_path/UNIT exists."""
    script = tmp_path / "systemctl"
    script.write_text(f'#!/bin/sh\n[ "$1" = is-active ] && test -e "{tmp_path}/$3"\n')
    script.chmod(0o755)
    return (str(script),)


async def test_health_checks_pass_once_every_command_and_unit_does(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    checks = HealthChecks(
        commands=(("test", "-e", str(marker)),),
        units=("app.service",),
        systemctl=_systemctl(tmp_path),
        interval=0.05,
    )
    assert await checks.failure() == f"health check test -e {marker}: exited with code 1"
    marker.write_text("")
    assert await checks.failure() == "health check unit app.service: exited with code 1"
    (tmp_path / "app.service").write_text("")
    assert await checks.failure() is None
    assert await checks.wait_healthy(5, time.monotonic) is None


async def test_health_checks_give_the_last_reason_at_the_deadline(tmp_path: Path) -> None:
    checks = HealthChecks(
        commands=(("sh", "-c", "echo not yet >&2; exit 3"),),
        interval=0.05,
    )
    started = time.monotonic()
    reason = await checks.wait_healthy(0.3, time.monotonic)
    assert reason == "health check sh -c echo not yet >&2; exit 3: exited with code 3: not yet"
    assert time.monotonic() - started >= 0.3


async def test_a_health_check_that_hangs_is_cut_at_its_own_limit(tmp_path: Path) -> None:
    checks = HealthChecks(commands=(("sleep", "30"),), check_timeout=0.2)
    reason = await asyncio.wait_for(checks.failure(), 10)
    assert reason is not None and "timed out after 0.2 s" in reason
