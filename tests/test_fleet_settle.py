"""`Fleet.settle`: a rollout's requests are counted once every device is idle.

Real parts: the session mosquitto broker, the emulator in the test (so the service's own count
of what it served is read), a `Fleet` of real engines with their SQLite stores, in this process.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.sim.fleet import NOOP_OPERATION, Fleet, FleetOptions
from tests.fixtures.broker import Mosquitto
from tests.harness import wait_until

THINGS = 4


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None}


def _served(emulator: Emulator) -> int:
    return sum(n for kind, n in emulator.service.counters.items() if kind != "throttled")


async def test_a_settled_fleet_was_served_every_request_it_counted_and_no_other(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path
) -> None:
    """A device that has reported its job still asks for the next one (the start-next after a
    job, and one for each notification that came meanwhile). Counted when the last outcome
    came in, a rollout missed those made later, which the service served: CI saw 69 counted
    against 70 served for 20 things. Once settled, the two counts are the same, for a second
    rollout too, and every device is idle."""
    connection = ConnectionConfig(
        transport="paho", endpoint=mosquitto.host, port=mosquitto.port, tls=False
    )
    options = FleetOptions(
        things=THINGS,
        connection=connection,
        state_dir=tmp_path / "state",
        prefix=f"fs{uuid.uuid4().hex[:6]}-",
    )
    fleet = Fleet(options)
    await fleet.start(timeout=30)
    try:
        await fleet.first_look(timeout=30)
        assert await fleet.settle(timeout=30)
        assert fleet.requests() == _served(emulator)  # the start-up requests
        for job_id in ("settle-1", "settle-2"):
            emulator.service.create_job(job_id, fleet.thing_names, {"operation": NOOP_OPERATION})

            def reported(job: str = job_id) -> bool:
                return fleet.outcomes(job) == Counter(SUCCEEDED=THINGS)

            await wait_until(reported, 30, f"every device to report {job_id}")
            assert await fleet.settle(timeout=30)
            assert all(member.device.engine.idle for member in fleet.devices)
            assert fleet.requests() == _served(emulator)
            assert emulator.service.counters["UpdateJobExecution"] >= THINGS
    finally:
        await fleet.stop()
