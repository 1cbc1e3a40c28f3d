"""The shipped systemd unit: the options operations rely on, `systemd-analyze verify`, and the
hardening: each directive with its reason, nothing that breaks common jobs, and the exposure
score `systemd-analyze security --offline=true` gives, as stated in the docs."""

from __future__ import annotations

import configparser
import re
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


DOCS = REPO / "docs" / "security.md"


def _hardening_lines() -> list[str]:
    text = UNIT.read_text()
    section = text[text.index("# -- Hardening") : text.index("[Install]")]
    return [line for line in section.splitlines() if line.strip()]


def test_every_hardening_directive_says_why() -> None:
    lines = _hardening_lines()
    directives = 0
    since_comment = 0
    for line in lines:
        if line.startswith("#"):
            since_comment = 0
            continue
        directives += 1
        since_comment += 1
        assert since_comment <= 3, f"{line}: no reason given just above it"
    assert directives >= 15


def test_the_hardening_keeps_common_jobs_working() -> None:
    service = _service_section()
    # Package installs of kernels and DKMS modules, downloads to /tmp readable by the app user.
    assert service["ProtectKernelModules"] == "no"
    assert service["PrivateTmp"] == "no"
    assert service["UMask"] == "0022"
    assert service["ProtectClock"] == "no"  # it implies a device allow-list
    # The per-step cgroups.
    assert service["Delegate"] == "yes"
    assert service["ProtectControlGroups"] == "no"
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_SYS_BOOT"} <= caps
    assert not caps & {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_TIME", "CAP_SYS_RAWIO"}


def _offline_security_supported() -> bool:
    if shutil.which("systemd-analyze") is None:
        return False
    probe = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, check=False
    )
    return "--offline" in probe.stdout


@pytest.mark.skipif(
    not _offline_security_supported(),
    reason="this machine's systemd-analyze has no `security --offline` (systemd 250 or later)",
)
def test_the_exposure_score_is_the_one_the_docs_state(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "jobs-agent"
    unit = tmp_path / "jobs-agent.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/jobs-agent/venv/bin/jobs-agent", str(executable))
    )
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for jobs-agent.service: (\d+\.\d) (\w+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    score = f"{match.group(1)} {match.group(2)}"
    assert f"rates this unit {score}" in UNIT.read_text()
    assert f"**{score}**" in DOCS.read_text()
    assert float(match.group(1)) < 7.8  # what the unit rated before (EXPOSED)
