"""`python -m benchmarks` works end to end: one cheap benchmark, JSON out, no RESULTS.md write.

Real parts: the benchmark entry point as a subprocess, which starts its own mosquitto and real
`jobs-agent run` processes. It asserts that the figures come out with their floor, not their
values (benchmarks print figures; tests assert behaviour).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.broker import find_mosquitto

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_startup_benchmark_runs_and_reports_against_its_floor() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "startup", "--quick", "--json", "--no-results"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["machine"]["cores"] >= 1
    figures = {f["key"]: f for f in report["figures"]}
    assert set(figures) == {"ready-awscrt", "ready-paho"}
    for figure in figures.values():
        assert figure["median"] > 0
        assert figure["reference_median"] > 0  # the raw paho process, measured in the same run
        assert figure["ratio"] == pytest.approx(figure["median"] / figure["reference_median"])
