"""`python -m benchmarks` says how many runs each benchmark made: the long ones' `MAX_RUNS`
caps the default of 3, and the section's header said "3 run(s)" over a drain that ran twice.

Real parts: the entry point's `main` with its real `Session` (mosquitto, certificates, the
checkout's tree) and the real benchmark modules with their own `MAX_RUNS`; only their `run`
(processes and minutes each, proven by tests/test_benchmarks_smoke.py) is a recorder.
"""

from __future__ import annotations

import json

import pytest

import jobs_agent.log
from benchmarks import __main__ as entry
from benchmarks import drain, latency
from benchmarks.harness import Measure, Session
from tests.fixtures.broker import find_mosquitto

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    made: dict[str, int] = {"drain": 0, "latency": 0}

    def recorder(name: str) -> object:
        async def run(session: Session, quick: bool) -> list[Measure]:
            made[name] += 1
            return [Measure(f"{name}-figure", "a figure", "ms", 1.0)]

        return run

    monkeypatch.setattr(drain, "run", recorder("drain"))
    monkeypatch.setattr(latency, "run", recorder("latency"))
    # main sets the process's logging up for the emulator it hosts; not this test's business.
    monkeypatch.setattr(jobs_agent.log, "configure_logging", lambda *args: None)
    return made


def test_the_header_gives_the_runs_made_where_max_runs_capped_them(
    calls: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert drain.MAX_RUNS == 2
    assert entry.main(["drain", "--no-results"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert calls["drain"] == 2
    assert ": drain, 2 run(s), " in header


def test_benchmarks_with_different_counts_each_say_theirs(
    calls: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert entry.main(["drain", "latency", "--no-results"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert calls == {"drain": 2, "latency": 3}
    assert ": drain latency, drain 2, latency 3 run(s), " in header
    assert entry.main(["drain", "latency", "--runs", "1", "--json", "--no-results"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == {"drain": 1, "latency": 1}
