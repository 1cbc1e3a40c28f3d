"""A fleet's heap: what its devices keep from looking for work is walked by no collection, and
a rollout's objects are collected young (agent/sim/fleet_heap.py).

Real parts: the session mosquitto broker, the emulator in the test, a `Fleet` of real engines
with their SQLite stores, in this process.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.sim.fleet import NOOP_OPERATION, Fleet
from jobs_agent.sim.fleet_heap import MIDDLE_THRESHOLD, YOUNG_THRESHOLD
from tests.fixtures.broker import Mosquitto
from tests.fixtures.fleet import small_fleet
from tests.harness import wait_until

THINGS = 20


@contextmanager
def collections_started() -> Iterator[Counter[int]]:
    """The collections Python starts inside the block, by generation."""
    collections: Counter[int] = Counter()

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections[info["generation"]] += 1

    gc.callbacks.append(count)
    try:
        yield collections
    finally:
        gc.callbacks.remove(count)


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None}


def _fleet(mosquitto: Mosquitto, tmp_path: Path) -> Fleet:
    return small_fleet(mosquitto, tmp_path, THINGS, "fh")


def walked() -> list[object]:
    """The objects a full collection walks now (the permanent generation aside)."""
    return [o for generation in range(3) for o in gc.get_objects(generation)]


async def test_what_the_first_look_left_is_walked_by_no_collection(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """Each device keeps ~60 objects from its first look (its records, its client's state):
    every full collection of a rollout walked them (300,000 at 5,000 things). Frozen once every
    device has looked, what is left is the few the loop made since, not some per device."""
    fleet = _fleet(mosquitto, tmp_path)
    await fleet.start(timeout=30)
    try:
        await fleet.first_look(timeout=30)
        left = walked()
        assert len(left) < THINGS, Counter(type(o).__qualname__ for o in left).most_common(10)
    finally:
        await fleet.stop()


async def test_a_rollout_is_collected_young_and_python_s_thresholds_come_back(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """While the fleet is up, a young collection waits for YOUNG_THRESHOLD allocations (at
    Python's 700 the jobs' objects outlived two of them and were promoted, and 5,000 things made
    10 full collections in a rollout); the collector stays on, and `stop` puts Python's
    thresholds back."""
    before = gc.get_threshold()
    fleet = _fleet(mosquitto, tmp_path)

    await fleet.start(timeout=30)
    try:
        assert gc.isenabled()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, before[2])
        await fleet.first_look(timeout=30)
        with collections_started() as collections:
            emulator.service.create_job("heap-1", fleet.thing_names, {"operation": NOOP_OPERATION})
            await wait_until(
                lambda: fleet.outcomes("heap-1") == Counter(SUCCEEDED=THINGS),
                30,
                "every device to report heap-1",
            )
        # ~6,300 allocations: at Python's threshold 9 young collections and a middle one;
        # now at most the one the allocations before the job had nearly made due.
        assert sum(collections.values()) <= 1, collections
    finally:
        await fleet.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_objects_that_outlive_young_collections_wait_for_no_middle_one(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """A job's objects live as long as the emulator's queue in front of it: at 5,000 things
    nearly all outlived their young collection, and a middle collection every ten young ones
    walked them again (0.49 ms of CPU a thing against 0.26 at 1,000). While the fleet is up,
    25 young collections' worth of objects kept alive make no middle collection; after
    the fleet is stopped, Python's thresholds are back (the test above)."""
    fleet = _fleet(mosquitto, tmp_path)

    await fleet.start(timeout=30)
    try:
        await fleet.first_look(timeout=30)
        with collections_started() as collections:
            kept = [[] for _ in range(25 * YOUNG_THRESHOLD)]  # tracked, alive: promoted
        assert len(kept) == 25 * YOUNG_THRESHOLD
        assert collections[0] >= 20, collections
        assert collections[1] == 0 and collections[2] == 0, collections
    finally:
        await fleet.stop()
