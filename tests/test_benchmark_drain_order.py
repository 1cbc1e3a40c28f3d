"""The drain benchmark's order: this checkout and the `--baseline` agent take turns at draining
first on the round's shared emulator and broker, and the notes say who went first in each round.

With a fixed order and the same code on both sides, "now" read worse than "before" three runs
out of three (the first drain pays for the shared emulator's and broker's state). Real parts: a
benchmark `Session` with a baseline extracted from git, and `drain.run` itself; only the drains
(processes, seconds each, proven by tests/test_benchmarks_smoke.py) are replaced by a recorder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import drain, turns
from benchmarks.harness import Session, Tree
from tests.fixtures.bench import NoBench, head_session

pytestmark = pytest.mark.timeout(120)


def test_this_checkout_and_the_baseline_swap_places_each_round() -> None:
    assert turns.order(1, baseline=True) == ["agent", "baseline", "perfect"]
    assert turns.order(2, baseline=True) == ["baseline", "agent", "perfect"]
    assert turns.order(3, baseline=True) == ["agent", "baseline", "perfect"]
    assert turns.order(4, baseline=True) == ["baseline", "agent", "perfect"]
    assert turns.order(1, baseline=False) == turns.order(2, baseline=False)
    assert turns.order(2, baseline=False) == ["agent", "perfect"]


@pytest.fixture
def session() -> Iterator[Session]:
    with head_session() as session:
        yield session


def test_each_run_of_the_drain_alternates_who_drains_first_and_says_so(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    drained: list[tuple[str, str, str, Tree | None]] = []

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
        drained.append((transport, kind, who, tree))
        ms = {"agent": 1.0, "baseline": 2.0, "perfect": 3.0}[who]
        return drain.Result(ms, ms, ms, ms, 100.0, 30.0, [])

    monkeypatch.setattr(drain, "Bench", NoBench)
    monkeypatch.setattr(drain, "one", record)
    current, base = session.trees()
    tree_of = {"agent": current, "baseline": base, "perfect": None}
    rounds = [asyncio.run(drain.run(session, quick=True)) for _ in range(3)]

    per_drain = len(drain.TRANSPORTS) * len(drain.KINDS)
    assert len(drained) == 3 * per_drain * 3
    firsts = [["agent", "baseline", "perfect"], ["baseline", "agent", "perfect"]]
    for index in range(3):
        expected = firsts[index % 2]
        calls = drained[index * per_drain * 3 : (index + 1) * per_drain * 3]
        for at in range(per_drain):
            group = calls[at * 3 : at * 3 + 3]
            assert [who for _, _, who, _ in group] == expected
            assert all(tree is tree_of[who] for _, _, who, tree in group)
            assert len({(transport, kind) for transport, kind, _, _ in group}) == 1
    said = {
        1: "round 1 drained this checkout, then the agent of HEAD, then the perfect agent",
        2: "round 2 drained the agent of HEAD, then this checkout, then the perfect agent",
        3: "round 3 drained this checkout, then the agent of HEAD, then the perfect agent",
    }
    for number, measures in enumerate(rounds, start=1):
        assert measures
        assert all(m.note.endswith(f"; {said[number]}") for m in measures)
        # Whoever went first, each figure still sits in its place: this checkout's is the value,
        # the baseline's the "before", the perfect agent's the floor.
        cpu = [m for m in measures if m.key.endswith("-agent-cpu")]
        assert len(cpu) == per_drain
        assert all((m.value, m.base_value, m.ref_value) == (1.0, 2.0, 3.0) for m in cpu)
        assert all(m.base_label == "agent of HEAD" for m in measures)
