"""Which `notify`/`notify-next` events make the engine look for work (engine/wakes.py).

A real agent (paho, the session mosquitto) against the emulator; its jobs run `sim fleet`'s
no-op plugin (a script's job may also send IN_PROGRESS updates, as its step takes time). The
counts are the service's own: each test waits until the engine has heard every event the
service published for the job and its loop sits idle with nothing to act on, so a look the
events would cause is counted, whatever the machine's load; no count depends on the order the
events arrive in.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from jobs_agent.config import AgentConfig
from jobs_agent.daemon import Agent
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.engine import Engine
from jobs_agent.jobs import topics
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    agent_config,
    paho_connection,
    running_agent,
    wait_terminal,
    wait_until,
)

THING = "gw-wakes"
JOB_EVENTS = 5
"""What the service publishes for one job of an otherwise idle thing: its creation's `notify`
and `notify-next`, its start's `notify` (IN_PROGRESS), its end's `notify` and `notify-next`."""
JOBS_OPERATIONS = {op.value for op in topics.Operation}


class Watch:
    """Counts the events the engine heard, and says when its loop waits with nothing to do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.heard = 0
        self.parked = False
        heard, wait = engine._heard, engine._wait_for_wake

        def counted(event: Any) -> None:
            self.heard += 1
            heard(event)

        async def waiting() -> None:
            self.parked = True
            try:
                await wait()
            finally:
                self.parked = False

        engine._heard = counted  # type: ignore[method-assign]
        engine._wait_for_wake = waiting  # type: ignore[method-assign]

    async def settled(self, heard: int) -> None:
        """Every one of `heard` events acted on: the loop waits again, no round is due."""
        wake = self.engine._shared.wake_event
        await wait_until(
            lambda: self.heard >= heard and self.parked and not wake.is_set(),
            30,
            f"the engine idle after {heard} events (heard {self.heard})",
        )


def _config(tmp_path: Path, mosquitto: Mosquitto) -> AgentConfig:
    (tmp_path / "handlers").mkdir(mode=0o755, exist_ok=True)
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    return dataclasses.replace(config, handlers={"work": "jobs_agent.sim.fleet:NoopHandler"})


def _jobs_requests(emulator: Emulator, before: Counter[str]) -> Counter[str]:
    served = Counter(emulator.service.counters)
    served.subtract(before)
    return Counter({k: v for k, v in served.items() if k in JOBS_OPERATIONS and v})


async def _idle_agent(agent: Agent, emulator: Emulator) -> Watch:
    engine = agent.engine
    assert engine is not None
    watch = Watch(engine)
    start_next = topics.Operation.START_NEXT.value
    await wait_until(
        lambda: emulator.service.counters[start_next] >= 1 and engine.status.state == "idle",
        30,
        "the agent's first look",
    )
    return watch


async def test_a_job_costs_its_start_next_and_its_final_update_only(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Its creation's two events, its start's and its end's each used to wake a start-next
    (3.6-3.9 requests a device in round 12's fleet runs; 3 or 4 here); one look takes it."""
    async with running_agent(_config(tmp_path, mosquitto)) as agent:
        watch = await _idle_agent(agent, emulator)
        for n in range(3):
            before = Counter(emulator.service.counters)
            emulator.service.create_job(f"one-{n}", [THING], {"operation": "work"})
            assert str((await wait_terminal(emulator, f"one-{n}", THING)).status) == "SUCCEEDED"
            await watch.settled((n + 1) * JOB_EVENTS)
            assert _jobs_requests(emulator, before) == {
                topics.Operation.START_NEXT.value: 1,
                topics.Operation.UPDATE.value: 1,
            }


async def test_late_events_of_a_job_taken_ask_nothing_and_a_new_execution_is_looked_for(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """Delivery order is not guaranteed: a job's creation events arriving after it ended
    (published again here, after its end's) name only what the device took; a `notify` that
    names an execution it never took is looked for, even if the service has none pending."""
    spammer = PahoTransport(paho_connection(mosquitto.port), "wakes-spammer")
    await spammer.connect(timeout=10)
    try:
        async with running_agent(_config(tmp_path, mosquitto)) as agent:
            watch = await _idle_agent(agent, emulator)
            emulator.service.create_job("late", [THING], {"operation": "work"})
            await wait_terminal(emulator, "late", THING)
            await watch.settled(JOB_EVENTS)
            before = Counter(emulator.service.counters)
            summary = {"jobId": "late", "executionNumber": 1, "versionNumber": 1}
            execution = {**summary, "status": "QUEUED", "jobDocument": {"operation": "work"}}
            await spammer.publish(
                topics.notify_next_topic(THING),
                json.dumps({"timestamp": 1, "execution": execution}).encode(),
            )
            await spammer.publish(
                topics.notify_topic(THING),
                json.dumps({"timestamp": 1, "jobs": {"QUEUED": [summary]}}).encode(),
            )
            await watch.settled(JOB_EVENTS + 2)
            assert _jobs_requests(emulator, before) == {}
            other = {"jobId": "never-taken", "executionNumber": 1, "versionNumber": 1}
            await spammer.publish(
                topics.notify_topic(THING),
                json.dumps({"timestamp": 2, "jobs": {"QUEUED": [other]}}).encode(),
            )
            await watch.settled(JOB_EVENTS + 3)
            assert _jobs_requests(emulator, before) == {topics.Operation.START_NEXT.value: 1}
    finally:
        await spammer.disconnect()
