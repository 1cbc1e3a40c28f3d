"""`jobs-agent sim fleet`: what a one-job rollout costs each device in Jobs requests.

Real parts: the session mosquitto broker, the `jobs-agent` command as a subprocess, the
emulator in the test (reached over its HTTP endpoint), the built-in no-op plugin.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.jobs import topics
from tests.fixtures.broker import Mosquitto
from tests.test_fleet import _fleet

THINGS = 20


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None, "http_port": 0}


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_rollout_costs_each_device_its_start_next_and_its_final_update(
    mosquitto: Mosquitto, emulator: Emulator, tmp_path: Path, processes: int
) -> None:
    """The job's creation (`notify` and `notify-next`), its start (`notify`) and its end
    (`notify` and `notify-next`) each woke a start-next: 3.6-3.9 requests a device in round
    12's benchmark runs. Only events naming an execution a device did not take wake one now
    (engine/wakes.py): one start-next takes the job, one update reports it."""
    before = Counter(emulator.service.counters)
    code, stdout, stderr = await _fleet(
        *("--things", str(THINGS), "--prefix", f"q{uuid.uuid4().hex[:6]}-"),
        *("--broker-port", str(mosquitto.port), "--endpoint", str(emulator.http_endpoint)),
        *("--state-dir", str(tmp_path / "state"), "--handler-dir", str(tmp_path), "--json"),
        *("--processes", str(processes)),
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["outcomes"] == {"SUCCEEDED": THINGS}
    assert summary["requests"] == 2 * THINGS
    served = Counter(emulator.service.counters)
    served.subtract(before)
    assert served[topics.Operation.UPDATE.value] == THINGS
    start_up = THINGS  # each device's first start-next, before the job
    assert served[topics.Operation.START_NEXT.value] == THINGS + start_up
