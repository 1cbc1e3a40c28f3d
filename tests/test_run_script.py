"""tests/run.sh as a contributor runs it on a gateway (issue 13.14): it never touches a system
service, a failing linter does not stop the tests from running, and it fails at the end naming
every gate that failed. The real script runs, with stand-ins for the tools it calls (a
`systemctl` that records any call, and a virtual environment whose python, ruff and mypy record
what they were asked and fail on demand): running the real suite from inside the suite would
recurse."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stand_in(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run_script(tmp_path: Path, failing: str) -> subprocess.CompletedProcess[str]:
    calls = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    for tool in ("systemctl", "service", "mosquitto", "sudo", "apt-get"):
        stand_in(bin_dir / tool, f'echo "{tool} $*" >> {calls}\n')
    venv = tmp_path / "venv" / "bin"
    for tool in ("python", "ruff", "mypy"):
        stand_in(
            venv / tool,
            f'echo "{tool} $*" >> {calls}\n'
            f'case "{tool} $*" in *"{failing}"*) exit 1;; esac\nexit 0\n',
        )
    return subprocess.run(
        ["bash", str(REPO / "tests" / "run.sh"), "-k", "nothing"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "JOBS_AGENT_VENV": str(tmp_path / "venv"),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_formatting_nit_neither_stops_the_tests_nor_passes(tmp_path: Path) -> None:
    result = run_script(tmp_path, failing="ruff format")
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "python -m pytest -k nothing" in calls
    assert calls.index("python -m pytest -k nothing") < calls.index("ruff format --check .")
    assert any(call.startswith("mypy --strict") for call in calls)  # the gates after it ran
    assert result.returncode != 0
    assert "== FAILED: ruff format --check" in result.stdout
    assert result.stdout.rstrip().endswith("gates: 3 passed, 1 failed")


def test_no_system_service_is_touched(tmp_path: Path) -> None:
    result = run_script(tmp_path, failing="never")
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in calls if c.split()[0] in ("systemctl", "service", "sudo", "apt-get")]
    assert result.stdout.rstrip().endswith("gates: 4 passed, 0 failed")
    assert os.access(REPO / "tests" / "run.sh", os.X_OK)
    assert "tests/run.sh" in (REPO / ".ci" / "run").read_text()
