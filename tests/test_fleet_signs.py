"""A `sim fleet --processes` worker takes its watchdog's signs of life in one visit of each
device: the requests, surplus replies, busy devices and unanswered requests were four sums, each
a visit of every device (20,000 visits a second by a worker of 5,000 devices, every second of a
rollout whose time grows with the fleet: issue 18).

No broker: the fleet's members are stand-ins that count what is read off them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jobs_agent.jobs.events import ClientStats
from jobs_agent.sim import fleet_workers
from jobs_agent.sim.fleet import Fleet, FleetOptions, Member
from jobs_agent.transport.options import PahoOptions


class _Device:
    """A device whose client and engine count their readers."""

    def __init__(self, reads: Counter[str], stats: ClientStats, state: str) -> None:
        self._reads = reads
        self._client = SimpleNamespace(stats=stats)
        self._engine = SimpleNamespace(status=SimpleNamespace(state=state))

    @property
    def client(self) -> Any:
        self._reads["client"] += 1
        return self._client

    @property
    def engine(self) -> Any:
        self._reads["engine"] += 1
        return self._engine


def _fleet(tmp_path: Path, reads: Counter[str]) -> Fleet:
    fleet = Fleet(FleetOptions(things=3, connection=PahoOptions(), state_dir=tmp_path))
    devices: list[tuple[ClientStats, str]] = [
        (ClientStats(requests=4, replies_ignored=1, timeouts=1), "running"),
        (ClientStats(requests=2, replies_ignored=3, republishes=1), "idle"),
        (ClientStats(requests=5, timeouts=2), "awaiting reboot"),
    ]
    fleet.devices = [
        Member(f"t{n}", _Device(reads, stats, state))  # type: ignore[arg-type]
        for n, (stats, state) in enumerate(devices)
    ]
    return fleet


def test_a_worker_s_signs_visit_each_device_once(tmp_path: Path) -> None:
    reads = Counter[str]()
    fleet = _fleet(tmp_path, reads)
    signs = fleet_workers._signs(fleet, requests_at_start=1)
    assert signs == {"requests": 10, "surplus_replies": 2, "busy": 2, "unanswered": 3}
    assert reads == Counter(client=3, engine=3)  # 9 and 3 before: four sums of every device


def test_the_signs_are_the_sums_they_replace(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, Counter())
    signs = fleet.signs()
    assert signs.requests == fleet.requests()
    assert signs.surplus_replies == fleet.surplus_replies()
    assert signs.busy == fleet.busy()
    assert signs.unanswered == fleet.unanswered()
