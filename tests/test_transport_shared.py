"""`SharedLink`: several protocol clients on one MQTT connection, each with its own view.

On the in-process bus, whose routing follows MQTT's (tests/test_transport.py pins it, and
runs the views over every backend), and through a real mosquitto; the Jobs and shadow clients
sharing a real mosquitto connection are in tests/test_shadow_client.py, the Jobs and streams
clients in tests/test_streams_client.py.
"""

from __future__ import annotations

import asyncio

import pytest

from jobs_agent.transport.base import TransportError
from jobs_agent.transport.local import LocalBus, LocalTransport
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.transport.shared import LinkView, SharedLink
from jobs_agent.transport.topics import levels_match
from tests.fixtures.broker import Mosquitto
from tests.harness import paho_connection


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


async def test_a_filter_given_back_and_taken_again_at_once_stays_subscribed(
    mosquitto: Mosquitto,
) -> None:
    """Through a real broker: one view gives a filter back while another takes it at the same
    moment. The UNSUBSCRIBE and the SUBSCRIBE reach the broker in that order (one lock per
    filter), so the filter is subscribed at the end and the second view gets its messages."""
    device = PahoTransport(paho_connection(mosquitto.port), "shared-device")
    service = PahoTransport(paho_connection(mosquitto.port), "shared-service")
    await device.connect(timeout=10)
    await service.connect(timeout=10)
    link = SharedLink(device)
    first, second = link.view(), link.view()
    got: asyncio.Queue[str] = asyncio.Queue()
    second.set_message_callback(lambda m: got.put_nowait(m.payload.decode()))
    try:
        await first.subscribe("shared/f")
        await asyncio.gather(first.unsubscribe("shared/f"), second.subscribe("shared/f"))
        assert link.held == {"shared/f"}
        await service.publish("shared/f", b"after")
        assert await asyncio.wait_for(got.get(), 10) == "after"
    finally:
        link.close()
        await device.disconnect()
        await service.disconnect()


class GatedUnsubscribe(LocalTransport):
    """The in-process bus, with UNSUBACKs held back until `gate` opens (so a test can cancel
    an unsubscription while it waits, as a slow broker would make it wait)."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        super().__init__(bus, client_id)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def unsubscribe(self, topic_filter: str) -> None:
        self.waiting.set()
        await self.gate.wait()
        await super().unsubscribe(topic_filter)


async def test_a_cancelled_disconnect_holds_nothing_back() -> None:
    """A view's disconnect cancelled while the broker has not answered its first UNSUBSCRIBE
    (a stream download stopped within its second): every filter it held is given back at
    once, so the last other holder of one still unsubscribes it, and a filter whose
    UNSUBSCRIBE was cut short is subscribed again when someone takes it."""
    bus = LocalBus()
    device = GatedUnsubscribe(bus, "device")
    cloud = LocalTransport(bus, "cloud")
    await device.connect(1)
    await cloud.connect(1)
    link = SharedLink(device)
    leaving, staying = link.view(), link.view()
    await leaving.subscribe("a")
    await leaving.subscribe("b")
    await staying.subscribe("b")
    disconnecting = asyncio.create_task(leaving.disconnect())
    async with asyncio.timeout(5):
        await device.waiting.wait()  # blocked on the UNSUBACK of "a"
    disconnecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await disconnecting
    assert link.held == {"b"}  # "a" given back although its UNSUBSCRIBE never finished

    device.gate.set()
    await staying.unsubscribe("b")  # the last holder: "b" goes at the broker too
    assert link.held == set()
    assert "b" not in device._subscriptions
    inbox = Inbox(staying)
    await staying.subscribe("a")  # its UNSUBSCRIBE was cut short: subscribed again
    await cloud.publish("a", b"{}")
    await _settled(cloud)
    assert inbox.messages == ["a"]
    link.close()
    await device.disconnect()
    await cloud.disconnect()


async def test_a_topic_a_view_names_exactly_is_matched_without_its_wildcard_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Most of a job's messages arrive on a filter without a wildcard (`notify-next`,
    `start-next/accepted`): one set lookup finds them, where every filter was matched level by
    level (issue 18). Wildcard filters still match as MQTT says, `$` rule included. The level
    matcher's calls are counted through the module's reference to it."""
    from jobs_agent.transport import shared

    calls: list[str] = []

    def counting(filter_levels: tuple[str, ...], topic_levels: list[str]) -> bool:
        calls.append("/".join(filter_levels))
        return levels_match(filter_levels, topic_levels)

    monkeypatch.setattr(shared, "levels_match", counting)
    bus = LocalBus()
    device = LocalTransport(bus, "device")
    await device.connect(1)
    cloud = LocalTransport(bus, "cloud")
    await cloud.connect(1)
    link = SharedLink(device)
    view = link.view()
    inbox = Inbox(view)
    for topic_filter in (
        "$aws/things/t/jobs/+/update/+",
        "+/topic",
        "$aws/things/t/jobs/notify-next",
    ):
        await view.subscribe(topic_filter)
    await cloud.publish("$aws/things/t/jobs/notify-next", b"{}")
    await _settled(cloud)
    assert inbox.messages == ["$aws/things/t/jobs/notify-next"]
    assert calls == []
    await cloud.publish("$aws/things/t/jobs/job-1/update/accepted", b"{}")
    await cloud.publish("$aws/things/t/jobs/job-1/get/accepted", b"{}")
    await cloud.publish("$sys/topic", b"{}")  # `+` never takes a `$` level
    await cloud.publish("plain/topic", b"{}")
    await _settled(cloud)
    assert inbox.messages[1:] == ["$aws/things/t/jobs/job-1/update/accepted", "plain/topic"]
    await view.unsubscribe("$aws/things/t/jobs/notify-next")
    await cloud.publish("$aws/things/t/jobs/notify-next", b"{}")
    await _settled(cloud)
    assert inbox.messages[-1] == "plain/topic"
    link.close()
    await device.disconnect()
    await cloud.disconnect()


async def test_a_message_reaches_its_view_s_listener_in_few_calls() -> None:
    """A message on a view's exact filter goes from the link's listener to the view's
    listener with no call to ask the other views' filters and none through the seam's
    `_deliver` (issue 18: five such messages per plugin job; 5 Python calls of `shared.py`
    and `base.py` per message before, 1 now). Counted with the profiler hook around the
    link's listener, with the Jobs client's view and two others sharing it."""
    from jobs_agent.transport import base, shared
    from jobs_agent.transport.base import Message
    from tests.helpers.calls import Calls

    bus = LocalBus()
    device = LocalTransport(bus, "device")
    await device.connect(1)
    link = SharedLink(device)
    jobs, shadow, streams = link.view(), link.view(), link.view()
    inbox = Inbox(jobs)
    Inbox(shadow)
    Inbox(streams)
    await jobs.subscribe("$aws/things/t/jobs/notify-next")
    await shadow.subscribe("$aws/things/t/shadow/name/$package/get/accepted")
    await streams.subscribe("$aws/things/t/streams/s/data/json")
    calls = Calls((shared.__file__, base.__file__))
    message = Message("$aws/things/t/jobs/notify-next", b"{}")
    with calls.counting():
        for _ in range(20):
            link._on_message(message)
    assert inbox.messages == ["$aws/things/t/jobs/notify-next"] * 20
    python = sum(n for (file, _), n in calls.by_name.items() if file != "builtin")
    assert python == 20, calls.by_name.most_common()
    link.close()
    await device.disconnect()
