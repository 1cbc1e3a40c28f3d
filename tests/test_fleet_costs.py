"""What a `sim fleet` rollout costs a thing does not grow with the fleet: its outcomes are told
as the devices note them, one timer checks every device's keep-alive, and a `--processes`
worker takes the signs of life that visit every device once a second, not at every look.

Real parts: the session mosquitto broker, the emulator in the test, a `Fleet` of real engines
with their SQLite stores and paho connections, in this process.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.engine import Engine
from jobs_agent.sim import fleet_workers
from jobs_agent.sim.fleet import NOOP_OPERATION, Fleet
from jobs_agent.sim.fleet_watch import JobOutcomes
from jobs_agent.vocabulary import ExecutionRef
from tests.fixtures.broker import Mosquitto
from tests.fixtures.fleet import small_fleet
from tests.harness import wait_until

THINGS = 20
KEEPALIVE_SECONDS = 30
"""The shortest keep-alive the options allow: the devices' checks come every 1.5 s."""


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None}


def _fleet(mosquitto: Mosquitto, tmp_path: Path) -> Fleet:
    return small_fleet(mosquitto, tmp_path, THINGS, "fc", keepalive_seconds=KEEPALIVE_SECONDS)


async def test_a_rollout_s_outcomes_are_counted_without_looking_at_the_engines_again(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first count of a job reads every device's outcomes once; later counts read none:
    each device tells its outcomes as it notes them. Looking at the devices still working at
    every count cost a thing 10 engine visits in a rollout of 1,000 things and 24 in one of
    5,000 (issue 18). Outcomes noted before a job's first count are counted too."""
    visits = Counter[str]()
    outcomes = Engine.outcomes.fget
    assert outcomes is not None

    def counted(engine: Engine) -> object:
        visits["engine"] += 1
        return outcomes(engine)

    fleet = _fleet(mosquitto, tmp_path)
    await fleet.start(timeout=30)
    try:
        await fleet.first_look(timeout=30)
        monkeypatch.setattr(Engine, "outcomes", property(counted))
        emulator.service.create_job("costs-1", fleet.thing_names, {"operation": NOOP_OPERATION})
        counts = [fleet.outcomes("costs-1")]  # before any device could have heard of the job
        assert counts == [Counter()]
        assert visits["engine"] == THINGS

        def reported() -> bool:
            counts.append(fleet.outcomes("costs-1"))
            return bool(counts[-1] == Counter(SUCCEEDED=THINGS))

        await wait_until(reported, 30, "every device to report costs-1")
        assert len(counts) > 2  # counted while devices were working, and once all were done
        assert visits["engine"] == THINGS
        monkeypatch.undo()

        # A job whose outcomes all came before its first count.
        emulator.service.create_job("costs-2", fleet.thing_names, {"operation": NOOP_OPERATION})
        await wait_until(
            lambda: all(
                any(ref.job_id == "costs-2" for ref in member.device.engine.outcomes)
                for member in fleet.devices
            ),
            30,
            "every device to note costs-2",
        )
        assert fleet.outcomes("costs-2") == Counter(SUCCEEDED=THINGS)
    finally:
        await fleet.stop()


def test_a_device_s_outcome_counts_once_it_is_final_and_not_again() -> None:
    """A note that may still change ("... carried on") counts as "other" until the device's
    final one; a terminal status is final, and a later note of the device changes nothing."""
    watch = JobOutcomes()
    first, second = ExecutionRef(None, "j", 1), ExecutionRef(None, "j", 2)
    watch.note("a", first, "ended by the service (CANCELED); carried on")
    watch.note("a", first, "ended by the service (CANCELED); carried on")
    watch.note("b", first, "SUCCEEDED")
    assert watch.counts() == Counter(other=1, SUCCEEDED=1)
    watch.note("a", second, "FAILED")
    assert watch.counts() == Counter(SUCCEEDED=1, FAILED=1)
    watch.note("a", second, "ended by the service (CANCELED); carried on")
    watch.note("b", second, "not reported: refused")
    assert watch.counts() == Counter(SUCCEEDED=1, FAILED=1)


def _keep_alive_tasks() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "PahoTransport._misc"
    ]


async def test_one_timer_checks_every_device_s_keep_alive(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """No device has a keep-alive task of its own (a task per device held a timer each in the
    loop's heap and woke on its own); the fleet's one timer checks them all, and a device whose
    link has been quiet for the keep-alive sends its PINGREQ from it and stays connected."""
    fleet = _fleet(mosquitto, tmp_path)
    await fleet.start(timeout=30)
    try:
        assert _keep_alive_tasks() == []
        assert len(fleet.keep_alives) == THINGS
        clients = [member.device.transport._client for member in fleet.devices]
        quiet_since = mqtt.time_func() - KEEPALIVE_SECONDS - 1
        for client in clients:
            client._last_msg_out = quiet_since
        ticks = fleet.keep_alives.ticks

        def pinged() -> bool:
            return fleet.keep_alives.ticks > ticks and all(
                c._last_msg_out > quiet_since and c._ping_t == 0 for c in clients
            )

        await wait_until(pinged, 30, "every device to ping and get its PINGRESP")
        assert all(member.device.transport.is_connected for member in fleet.devices)
    finally:
        await fleet.stop()
    assert len(fleet.keep_alives) == 0


async def test_a_worker_visits_every_device_once_a_second_not_at_every_look(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `sim fleet --processes` worker looks at its outcomes 20 times a second; the signs its
    parent's watchdog reads (requests, surplus replies, busy devices, unanswered requests) are
    sums over every device, taken at every look until round 17: four visits of each device a
    look, so a thing's share grew with the rollout's length, i.e. with the fleet. They are taken
    every `SIGNS_EVERY` looks, and afresh at the look that finds every device done, all four in
    one visit of every device (`Fleet.signs`, round 20: four sums before)."""
    counts = Counter[str]()
    for name in ("requests", "surplus_replies", "busy", "unanswered", "signs"):
        method = getattr(Fleet, name)

        def scanning(fleet: Fleet, method: Any = method) -> Any:
            counts["scans"] += 1
            return method(fleet)

        monkeypatch.setattr(Fleet, name, scanning)
    outcomes = Fleet.outcomes

    def looked_at(fleet: Fleet, job_id: str) -> Counter[str]:
        counts["looks"] += 1
        return outcomes(fleet, job_id)

    monkeypatch.setattr(Fleet, "outcomes", looked_at)
    lines: list[dict[str, Any]] = []
    looked = asyncio.Event()

    def write(line: dict[str, Any]) -> None:
        lines.append(line)
        if line["event"] == "looked":
            looked.set()

    monkeypatch.setattr(fleet_workers, "_write", write)
    monkeypatch.setattr(fleet_workers, "_stdin_closed", asyncio.Event().wait)  # no parent here
    monkeypatch.setattr(fleet_workers, "REPORT_SECONDS", 0.001)  # many looks in one rollout
    monkeypatch.setattr(fleet_workers, "SIGNS_EVERY", 4)  # and several of them take the signs
    fleet = _fleet(mosquitto, tmp_path)
    worker = asyncio.create_task(fleet_workers.run_worker(fleet, "signs-1", 60, asyncio.Event()))
    try:
        await asyncio.wait_for(looked.wait(), 30)
        emulator.service.create_job("signs-1", fleet.thing_names, {"operation": NOOP_OPERATION})
        assert await asyncio.wait_for(worker, 60) == 0
    finally:
        await fleet.stop()
    looks = counts["looks"]
    assert looks > 2 * fleet_workers.SIGNS_EVERY, f"only {looks} looks: the rollout was too quick"
    # One sum of requests before the first look; one visit of every device for the four signs
    # every SIGNS_EVERY looks, at the look that found every device done and in the "done" line:
    # not at every look, and not four sums each time.
    most = 1 + (looks // fleet_workers.SIGNS_EVERY + 1) + 1 + 1
    assert counts["scans"] <= most, f"{counts['scans']} sums over every device in {looks} looks"
    progress = [line for line in lines if line["event"] == "progress"]
    # The last progress line (every device done) carries signs taken then: each device's
    # start-next and final update.
    assert progress[-1]["outcomes"] == {"SUCCEEDED": THINGS}
    assert progress[-1]["requests"] >= 2 * THINGS
    assert lines[-1]["event"] == "done" and lines[-1]["requests"] >= 2 * THINGS
