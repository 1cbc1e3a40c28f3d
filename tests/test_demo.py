"""The README's first command: `jobs-agent demo` runs end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_demo_runs_every_example_job_to_its_expected_outcome(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "demo", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "every job ended as expected" in out
    for status in ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED"):
        assert f"{status}  [ok]" in out or f"{status} " in out
    assert "UNEXPECTED" not in out
    assert "exited with code 100" in out
    # The agent's own database agrees: `status` reads it back.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"thing_name: demo-gateway\nconnection: {{transport: local}}\nstate_dir: {tmp_path}/state\n"
    )
    status = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "outbox: 0 update(s)" in status.stdout
    assert "SUCCEEDED" in status.stdout and "REJECTED" in status.stdout
