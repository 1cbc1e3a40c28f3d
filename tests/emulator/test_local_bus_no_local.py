"""No Local on the in-process bus: the embedded emulator never hears its own publishes.

Over a broker the emulator subscribes with MQTT 5's No Local (broker.py; held by
test_broker_transport.py). On the `LocalBus` each of its replies and events came back to it, to
be parsed far enough to be dropped: six deliveries per drained job on top of the two requests,
counted as the emulator's CPU by the local drain benchmark (issue 18). Real parts: a real
`LocalBus`, the real embedded emulator, a device transport; the deliveries to the emulator are
counted at its transport.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.embedded import BusTransport, Emulator
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport

THING = "no-local-thing"
PREFIX = f"$aws/things/{THING}/jobs"


class CountingBusTransport(BusTransport):
    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__(bus, client_id)
        self.heard: list[str] = []

    def _deliver(self, message: Message) -> None:
        self.heard.append(message.topic)
        super()._deliver(message)


async def test_the_embedded_emulator_hears_only_the_requests_of_a_drained_job() -> None:
    bus = LocalBus()
    transport = CountingBusTransport(bus, "aws-iot-jobs-emulator")
    emulator = Emulator(
        transport, service=JobsService(ManualClock(1_700_000_000.0)), tick_seconds=None
    )
    device = LocalTransport(bus, THING)
    received: asyncio.Queue[Message] = asyncio.Queue()
    device.set_message_callback(received.put_nowait)
    await emulator.start()
    try:
        await device.connect()
        await device.subscribe(f"{PREFIX}/#")
        emulator.service.create_job("j1", [THING], {"operation": "noop"})
        transport.heard.clear()
        replies: list[str] = []

        async def ask(topic: str, body: dict[str, Any]) -> None:
            await device.publish(topic, json.dumps(body).encode())
            while True:
                message = await asyncio.wait_for(received.get(), 10)
                replies.append(message.topic)
                if message.topic == f"{topic}/accepted":
                    return

        await ask(f"{PREFIX}/start-next", {"clientToken": "a"})
        await ask(f"{PREFIX}/j1/update", {"status": "SUCCEEDED", "clientToken": "b"})
        assert f"{PREFIX}/notify-next" in replies or f"{PREFIX}/notify" in replies
        # Before: the two requests, then each reply and event the emulator published.
        assert transport.heard == [f"{PREFIX}/start-next", f"{PREFIX}/j1/update"]
    finally:
        await device.disconnect()
        await emulator.stop()


async def test_a_client_without_no_local_still_hears_itself() -> None:
    """MQTT 3.1.1's rule, which every other client of the bus keeps (the agent's own tests
    subscribe to what they publish)."""
    bus = LocalBus()
    client = LocalTransport(bus, "plain")
    heard: asyncio.Queue[Message] = asyncio.Queue()
    client.set_message_callback(heard.put_nowait)
    await client.connect()
    try:
        await client.subscribe("a/#")
        await client.publish("a/b", b"x")
        assert (await asyncio.wait_for(heard.get(), 10)).topic == "a/b"
    finally:
        await client.disconnect()
