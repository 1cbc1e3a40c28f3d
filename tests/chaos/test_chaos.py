"""The full chaos run (200 jobs): `pytest -m chaos tests/chaos` (excluded from the default run).

Everything is real (see benchmarks/chaos.py); the seed comes from `CHAOS_SEED` when set, so a
failing run's seed (printed in the assertion message) can be re-run with the same job mix and
fault schedule.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.chaos import ChaosOptions, run_chaos
from tests.fixtures.broker import find_mosquitto


@pytest.mark.chaos
@pytest.mark.timeout(1800)
async def test_chaos_200_jobs(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    seed = int(os.environ.get("CHAOS_SEED", "200"))
    report = await run_chaos(
        ChaosOptions(jobs=200, seed=seed, workdir=tmp_path / "chaos", results=None)
    )
    detail = f"{report.summary()}\nproblems: {report.problems[:20]}\nnotes: {report.notes}"
    assert report.drained, detail
    assert (report.lost, report.duplicated, report.wrong_status) == (0, 0, 0), detail
    assert report.cancel_violations == 0, detail
    assert (report.outbox_left, report.active_left, report.agent_crashes) == (0, 0, 0), detail
    assert report.kills > 0 and report.broker_restarts > 0 and report.drops > 0, detail
