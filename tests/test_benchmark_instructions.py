"""The drain benchmark's instructions per job (callgrind) on the local bus: a figure per job of
the agent and of the emulator in their columns, for this checkout, the `--baseline` agent and
the perfect agent, with start-up left out; and a plain note where valgrind is missing.

Real parts: a benchmark `Session` with a baseline extracted from git, `drain.run` itself, and
benchmarks/local_drain.py under a real valgrind, at a tiny size (each callgrind drain is ~20 s of
CPU, nearly all of it the process's start-up). Only the CPU drains (processes proven by
tests/test_benchmarks_smoke.py) are replaced by a recorder, and one transport and job kind are
kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import drain, instructions
from benchmarks.harness import Measure, Session, Tree
from tests.fixtures.bench import NoBench
from tests.fixtures.broker import find_mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

START_UP = 300_000
"""Thousands of instructions a local drain's process spends before its first job (~960,000 k):
a per-job figure over a 2-job window would be far above this if start-up leaked into it."""


async def record(
    session: Session,
    bench: Any,
    transport: str,
    kind: str,
    who: str,
    tree: Tree | None,
    jobs: int,
    warmup: int,
) -> drain.Result:
    return recorded()


def recorded() -> drain.Result:
    """A CPU drain's figures (their values are not what these tests check)."""
    return drain.Result(1.0, 1.0, None, 1.0, 100.0, 30.0, [])


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    monkeypatch.setattr(drain, "Bench", NoBench)
    monkeypatch.setattr(drain, "one", record)
    monkeypatch.setattr(drain, "TRANSPORTS", ("local",))
    monkeypatch.setattr(drain, "KINDS", ("plugin",))
    session = Session(baseline="HEAD")
    try:
        yield session
    finally:
        session.close()


def test_each_agent_s_instructions_per_job_land_in_their_columns_without_start_up(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    if instructions.skipped(smoke=False):
        pytest.skip("valgrind not installed (tests/run.sh installs it)")
    monkeypatch.setattr(instructions, "JOBS", {"plugin": 2})
    monkeypatch.setattr(instructions, "WARMUP", 1)
    # Beside the drain (whose three callgrind drains count 2-job windows), the same agent
    # over a 4-job window.
    arguments, directory = drain.local_arguments(session, "plugin", "agent", 4, 1, "-longer")

    async def both() -> tuple[list[Measure], instructions.Counted | None]:
        longer = instructions.count(session.current, arguments, directory, 4)
        return await asyncio.gather(drain.run(session, quick=True), longer)

    found, longer = asyncio.run(both())
    measures = {m.key: m for m in found}

    for part in ("agent", "emulator"):
        row = measures[f"local-plugin-{part}-instructions"]
        assert row.unit == "k instructions"
        assert row.label == f"{part} instructions per job (callgrind), plugin, local"
        # This checkout's, the baseline's (the same code) and the perfect agent's, each a
        # per-job count of the size of a job, not of a start-up.
        assert row.base_label == "agent of HEAD"
        assert row.ref_label == "perfect agent (on the bus)"
        figures = [row.value, row.base_value, row.ref_value]
        assert all(v is not None and 0 < v < START_UP for v in figures), figures
        assert "instructions: 2 plugin jobs after 1 warm-up jobs on the local bus" in row.note
    agent = measures["local-plugin-agent-instructions"]
    assert agent.base_value is not None and agent.ref_value is not None
    # The perfect agent does a fraction of the agent's work.
    assert agent.ref_value < agent.value and agent.ref_value < agent.base_value

    # Twice the window, about the same per job: the count is the window's only.
    assert longer is not None
    assert 0.5 < longer.agent / agent.value < 2.0


def test_without_valgrind_the_local_rows_say_so_and_the_drain_goes_on(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instructions, "VALGRIND", "no-such-valgrind-here")
    measures = asyncio.run(drain.run(session, quick=True))
    assert measures
    assert not any(m.key.endswith("-instructions") for m in measures)
    assert all("not counted: valgrind is not installed" in m.note for m in measures)


def test_a_window_callgrind_never_cuts_leaves_the_rows_out_and_says_why(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an interpreter without symbols does: callgrind runs, but the function that marks the
    window's ends is never seen called. Made real here with a mark no interpreter has."""
    if instructions.skipped(smoke=False):
        pytest.skip("valgrind not installed (tests/run.sh installs it)")
    monkeypatch.setattr(instructions, "JOBS", {"plugin": 2})
    monkeypatch.setattr(instructions, "WARMUP", 1)
    monkeypatch.setattr(instructions, "WINDOW_MARK", "no_such_function_anywhere")
    measures = asyncio.run(drain.run(session, quick=True))
    assert measures
    assert not any(m.key.endswith("-instructions") for m in measures)
    said = (
        "instructions per job (callgrind) not counted for this checkout, the agent of HEAD,"
        " the perfect agent: callgrind never saw no_such_function_anywhere called"
    )
    assert all(said in m.note for m in measures)
