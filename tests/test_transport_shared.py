"""`SharedLink`: several protocol clients on one MQTT connection, each with its own view.

On the in-process bus, whose routing follows MQTT's (tests/test_transport.py pins it); the
Jobs and shadow clients sharing a real mosquitto connection are in tests/test_shadow_client.py.
"""

from __future__ import annotations

import asyncio

import pytest

from jobs_agent.transport.base import TransportError
from jobs_agent.transport.local import LocalBus, LocalTransport
from jobs_agent.transport.shared import LinkView, SharedLink


class Inbox:
    def __init__(self, view: LinkView) -> None:
        self.messages: list[str] = []
        self.events: list[str] = []
        view.set_message_callback(lambda m: self.messages.append(m.topic))
        view.set_connection_callbacks(
            lambda reason: self.events.append("lost"),
            lambda present: self.events.append(f"resumed {present}"),
        )


async def _settled(bus_publisher: LocalTransport) -> None:
    """Every message published before this one is delivered (the bus keeps order)."""
    done = asyncio.Event()
    fence = LocalTransport(bus_publisher.bus, "fence-reader")
    fence.set_message_callback(lambda m: done.set())
    await fence.connect(1)
    await fence.subscribe("fence")
    await bus_publisher.publish("fence", b"")
    async with asyncio.timeout(5):
        await done.wait()
    await fence.disconnect()


async def test_views_get_their_own_topics_and_share_filters_by_count() -> None:
    bus = LocalBus()
    device = LocalTransport(bus, "device")
    await device.connect(1)
    cloud = LocalTransport(bus, "cloud")
    await cloud.connect(1)
    link = SharedLink(device)
    jobs, shadow = link.view(), link.view()
    jobs_inbox, shadow_inbox = Inbox(jobs), Inbox(shadow)
    await jobs.subscribe("$aws/things/t/jobs/notify")
    await jobs.subscribe("shared/topic")
    await shadow.subscribe("$aws/things/t/shadow/name/+/get/accepted")
    await shadow.subscribe("shared/topic")
    for topic in (
        "$aws/things/t/jobs/notify",
        "$aws/things/t/shadow/name/$package/get/accepted",
        "shared/topic",
    ):
        await cloud.publish(topic, b"{}")
    await _settled(cloud)
    assert jobs_inbox.messages == ["$aws/things/t/jobs/notify", "shared/topic"]
    assert shadow_inbox.messages == [
        "$aws/things/t/shadow/name/$package/get/accepted",
        "shared/topic",
    ]
    await jobs.unsubscribe("shared/topic")  # the shadow view still has it
    await cloud.publish("shared/topic", b"{}")
    await _settled(cloud)
    assert shadow_inbox.messages[-1] == "shared/topic" and len(shadow_inbox.messages) == 3
    assert len(jobs_inbox.messages) == 2  # not for the jobs view any more

    await shadow.disconnect()  # detached: its filters go, the link stays
    assert device.is_connected and jobs.is_connected and not shadow.is_connected
    await cloud.publish("shared/topic", b"{}")
    await cloud.publish("$aws/things/t/jobs/notify", b"{}")
    await _settled(cloud)
    assert len(shadow_inbox.messages) == 3
    assert jobs_inbox.messages[2:] == ["$aws/things/t/jobs/notify"]
    with pytest.raises(TransportError, match="disconnected"):
        await shadow.publish("x", b"")
    link.close()
    await device.disconnect()
    await cloud.disconnect()


async def test_every_view_hears_of_a_lost_and_resumed_link() -> None:
    bus = LocalBus()
    device = LocalTransport(bus, "device")
    await device.connect(1)
    link = SharedLink(device)
    first, second = link.view(), link.view()
    inboxes = [Inbox(first), Inbox(second)]
    bus.set_online(False)
    async with asyncio.timeout(5):
        while not all(inbox.events for inbox in inboxes):
            await asyncio.sleep(0.01)
    assert not first.is_connected
    waiting = asyncio.create_task(first.wait_connected(5))
    bus.set_online(True)
    assert await waiting
    async with asyncio.timeout(5):
        while not all(len(inbox.events) == 2 for inbox in inboxes):
            await asyncio.sleep(0.01)
    assert all(inbox.events == ["lost", "resumed True"] for inbox in inboxes)
    await first.connect(1)  # waits for the owner's link, opens none
    link.close()
    await device.disconnect()
