"""The shipped systemd unit: the options operations rely on, and `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "jobs-agent.service"


def _service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return dict(parser["Service"])


def test_unit_has_the_options_the_agent_relies_on() -> None:
    service = _service_section()
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["KillMode"] == "mixed"
    assert service["StateDirectory"] == "jobs-agent"
    assert service["ConfigurationDirectory"] == "jobs-agent"
    # The agent's graceful stop (jobs.stop_timeout_seconds, default 60 s) must fit.
    from jobs_agent.config import JobsConfig

    assert int(service["TimeoutStopSec"]) > JobsConfig().stop_timeout_seconds
    assert "jobs-agent run" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verify the unit as shipped, with ExecStart pointed at this installation's executable."""
    executable = Path(sys.executable).parent / "jobs-agent"
    assert executable.exists()
    text = UNIT.read_text().replace("/opt/jobs-agent/venv/bin/jobs-agent", str(executable))
    unit = tmp_path / "jobs-agent.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "jobs-agent.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
