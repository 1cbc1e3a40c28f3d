"""The drain/depth benchmarks' window: which `notify-next` messages open and close it.

Real parts: a real mosquitto, the benchmark's own watcher (a paho client subscribed to the
thing's `notify-next`), and a paho client publishing `notify-next` payloads as the Jobs service
does. The CPU samples are of this test's process (the window's bounds are what is checked).
"""

from __future__ import annotations

import json
import os
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.depth import turns
from benchmarks.drain import DrainWatcher
from tests.fixtures.broker import Mosquitto

pytestmark = pytest.mark.timeout(60)


def publish_heads(broker: Mosquitto, thing: str, heads: list[str | None]) -> None:
    """`notify-next` for each head in order (None: the queue is empty), QoS 1, acknowledged."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, f"heads-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for head in heads:
            execution = None if head is None else {"jobId": head, "executionNumber": 1}
            body = {"timestamp": 1, **({"execution": execution} if execution else {})}
            info = client.publish(f"$aws/things/{thing}/jobs/notify-next", json.dumps(body), 1)
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def watcher(broker: Mosquitto, thing: str, *, refilled: bool, ended: list[int]) -> DrainWatcher:
    watch = DrainWatcher(
        broker,  # type: ignore[arg-type]  # the harness's Broker adds only a pid and a packet log
        thing,
        warmup=2,
        window=3,
        on_ended=ended.append,
        refilled=refilled,
    )
    watch.pids = lambda: {"self": os.getpid()}
    return watch


def test_with_a_refill_an_empty_queue_does_not_close_the_window(mosquitto: Mosquitto) -> None:
    """At 10 queued the refill can fall behind and the queue run dry for a moment: the window
    must still hold `window` jobs, or the CPU of fewer jobs is divided by `window`."""
    thing = f"window-{uuid.uuid4().hex[:8]}"
    ended: list[int] = []
    watch = watcher(mosquitto, thing, refilled=True, ended=ended)
    try:
        publish_heads(mosquitto, thing, ["j1", None, "j2", None, "j3", "j4", "j5", "j6"])
        assert watch.done.wait(10), f"window not closed after {watch.ended} jobs"
    finally:
        watch.close()
    assert watch.ended == 5 == watch.warmup + 3
    assert watch.dry == 1, "an empty queue before the window opens is not counted"
    assert ended == [1, 2, 3, 4, 5]
    assert watch.start is not None and watch.end is not None


def test_a_plain_drain_ends_when_the_queue_is_empty(mosquitto: Mosquitto) -> None:
    """The drain benchmark's window still closes with the last job."""
    thing = f"window-{uuid.uuid4().hex[:8]}"
    ended: list[int] = []
    watch = watcher(mosquitto, thing, refilled=False, ended=ended)
    watch.window = None
    try:
        publish_heads(mosquitto, thing, ["j1", "j2", "j3", None])
        assert watch.done.wait(10), f"window not closed after {watch.ended} jobs"
    finally:
        watch.close()
    assert watch.ended == 3
    assert watch.dry == 0


def test_depth_takes_its_slices_in_turn_every_other_turn_backwards() -> None:
    """One window per depth, each after the last, let the other helpers' load fall on one depth
    and not another (the same agent code measured 1.11x and 1.40x highest/lowest in one run):
    the slices go round the depths, and back, so a load that changes through the run weighs on
    every depth alike."""
    held = ["10", "100", "1000", "10000"]
    assert list(turns(held, 3)) == [*held, *reversed(held), *held]
