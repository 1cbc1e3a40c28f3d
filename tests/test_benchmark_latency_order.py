"""The latency benchmark's order and warm-up: this checkout and the `--baseline` agent take turns
at running first on each transport's fresh broker, the notes say who went first in each run, and
each agent runs untimed jobs before its timed ones.

With a fixed order, the agent run first took the slow tail whichever code it was (round 15:
p99 10.2 and 12.9 ms first against 7.04 and 7.65 second; swapped, the other code read 22.7 ms
first). Real parts: a benchmark `Session` with a baseline extracted from git, real mosquitto
brokers and `latency.run` itself, whose agent runs (processes, proven end to end by
tests/test_benchmarks_smoke.py) are replaced by a recorder; and the warm-up on a real broker with
a real `jobs-agent run` process and the perfect agent.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from benchmarks import latency
from benchmarks.harness import Broker, Session, Tree
from tests.fixtures.bench import head_session

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def session() -> Iterator[Session]:
    with head_session() as session:
        yield session


def test_each_run_alternates_who_goes_first_and_says_so(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, str, Tree | None, Broker]] = []

    async def record(
        session: Session,
        broker: Broker,
        transport: str,
        who: str,
        tree: Tree | None,
        count: int,
        warmup: int = 0,
    ) -> latency.Latencies:
        ran.append((transport, who, tree, broker))
        ms = {"agent": 1.0, "baseline": 2.0, "perfect": 3.0}[who]
        return latency.Latencies({f"lat-{i}": ms for i in range(count)}, 10 * ms)

    async def no_floor(session: Session, tls: bool, count: int) -> list[float]:
        return [0.5] * count

    monkeypatch.setattr(latency, "latencies", record)
    monkeypatch.setattr(latency, "physical_floor", no_floor)
    current, base = session.trees()
    tree_of = {"agent": current, "baseline": base, "perfect": None}
    runs = [asyncio.run(latency.run(session, quick=True)) for _ in range(3)]

    assert len(ran) == 3 * 2 * 3
    firsts = [["agent", "baseline", "perfect"], ["baseline", "agent", "perfect"]]
    for index in range(3):
        for at, transport in enumerate(("paho", "awscrt")):
            group = ran[(index * 2 + at) * 3 : (index * 2 + at) * 3 + 3]
            assert [who for _, who, _, _ in group] == firsts[index % 2]
            assert all(t == transport and tree is tree_of[who] for t, who, tree, _ in group)
            # The three agents of a transport share one broker, fresh for each transport.
            assert len({id(broker) for *_, broker in group}) == 1
    assert len({id(broker) for *_, broker in ran}) == 3 * 2
    said = {
        1: "round 1 ran this checkout, then the agent of HEAD, then the perfect agent",
        2: "round 2 ran the agent of HEAD, then this checkout, then the perfect agent",
        3: "round 3 ran this checkout, then the agent of HEAD, then the perfect agent",
    }
    for number, measures in enumerate(runs, start=1):
        assert len(measures) == 8
        assert all(said[number] in m.note for m in measures)
        # Whoever went first, each figure still sits in its place: this checkout's is the value,
        # the baseline's the "before", the perfect agent's the floor.
        p99 = [m for m in measures if m.key.startswith("p99-")]
        assert [(m.value, m.base_value, m.ref_value) for m in p99] == [(1.0, 2.0, 3.0)] * 2
        first = [m for m in measures if m.key.startswith("first-")]
        assert [(m.value, m.base_value, m.ref_value) for m in first] == [(10.0, 20.0, 30.0)] * 2
        assert all(m.base_label == "agent of HEAD" for m in measures)


def test_warm_up_jobs_run_on_the_same_broker_before_the_timed_ones_and_are_not_timed(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(latency, "WARMUP", 2, raising=False)
    broker = session.broker()
    expected_timed = ["lat-0", "lat-1", "lat-2"]
    for who, tree in (("agent", session.current), ("perfect", None)):
        found = asyncio.run(
            latency.latencies(session, broker, "paho", who, tree, 3, latency.WARMUP)
        )
        assert list(found.timed) == expected_timed
        assert all(ms > 0 for ms in found.timed.values())
        # The first warm-up job, the agent's first after start-up, has a figure of its own.
        assert found.first is not None and found.first > 0
        # Every job the device's handler started, in order: the two warm-up jobs first.
        (stamps,) = session.root.glob(f"*-latency-{who}-paho/stamps.txt")
        started = [line.split()[0] for line in stamps.read_text().splitlines()]
        assert started == ["warm-0", "warm-1", *expected_timed]


def test_no_collection_of_the_harness_lands_in_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness hosts the emulator: a full collection of its heap (19 ms) landed in
    whichever job was timed. Each stand-in job here makes enough cyclic garbage that an enabled
    collector would start collections inside it; none starts, and the collector is as before
    after the jobs, with nothing left frozen."""
    started_in_jobs: list[int] = []
    in_job = False

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and in_job:
            started_in_jobs.append(info["generation"])

    async def job(emu: object, process: object, job_id: str) -> float:
        nonlocal in_job
        in_job = True
        for _ in range(3 * gc.get_threshold()[0]):
            cycle: list[object] = []
            cycle.append(cycle)
        in_job = False
        return 0.0

    monkeypatch.setattr(latency, "one_job", job)
    gc.callbacks.append(count)
    try:
        created = asyncio.run(latency.timed_jobs(None, None, 2, 5))  # type: ignore[arg-type]
    finally:
        gc.callbacks.remove(count)
    assert list(created) == ["warm-0", "warm-1", "lat-0", "lat-1", "lat-2", "lat-3", "lat-4"]
    assert started_in_jobs == []
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
