"""The local bus keeps each topic's route until its subscriptions change (issue 18).

Routing a message matched its topic against every wildcard filter on the bus, level by level,
for every message, though most of a job's messages go to the same few topics every job. These
tests count the level matcher's calls through the bus module's reference to it, and check that a
kept route never outlives a subscription change, that MQTT's rules (`+`, `#`, no leading wildcard
for a `$` topic) still decide, and that the kept routes stay bounded.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from jobs_agent.transport import local
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import ROUTE_CACHE_LIMIT, LocalBus, LocalTransport
from jobs_agent.transport.topics import levels_match, topic_matches

FENCE = "fence"


class Reader:
    """A client on the bus and what it received, in order."""

    def __init__(self, bus: LocalBus, client_id: str) -> None:
        self.transport = LocalTransport(bus, client_id)
        self.topics: list[str] = []
        self.fenced = asyncio.Event()
        self.transport.set_message_callback(self._received)

    def _received(self, message: Message) -> None:
        if message.topic == FENCE:
            self.fenced.set()
        else:
            self.topics.append(message.topic)

    async def start(self, *topic_filters: str) -> Reader:
        await self.transport.connect(5)
        for topic_filter in (FENCE, *topic_filters):
            await self.transport.subscribe(topic_filter)
        return self


async def _settled(publisher: LocalTransport, *readers: Reader) -> None:
    """Every message published before the fence is delivered (the bus keeps order)."""
    for reader in readers:
        reader.fenced.clear()
    await publisher.publish(FENCE, b"")
    async with asyncio.timeout(10):
        for reader in readers:
            await reader.fenced.wait()


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def counting(filter_levels: list[str], topic_levels: list[str]) -> bool:
        calls.append("/".join(topic_levels))
        return levels_match(filter_levels, topic_levels)

    monkeypatch.setattr(local, "levels_match", counting)
    return calls


async def test_a_topic_routed_again_is_not_matched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counted(monkeypatch)
    bus = LocalBus()
    jobs = await Reader(bus, "jobs").start("$aws/things/+/jobs/#", "$aws/things/t/jobs/+/get/+")
    agent = await Reader(bus, "agent").start("$aws/things/t/jobs/notify-next", "a/+/c")
    sender = LocalTransport(bus, "sender")
    await sender.connect(5)
    topics = ["$aws/things/t/jobs/notify-next", "$aws/things/t/jobs/j1/get/accepted", "a/b/c"]
    for topic in topics:
        await sender.publish(topic, b"{}")
    first = len(calls)
    assert first > 0
    for _ in range(3):
        for topic in topics:
            await sender.publish(topic, b"{}")
    await _settled(sender, jobs, agent)
    assert len(calls) == first
    assert jobs.topics == topics[:2] * 4
    assert agent.topics == [topics[0], topics[2]] * 4


async def test_a_kept_route_follows_every_subscription_change() -> None:
    bus = LocalBus()
    first = await Reader(bus, "first").start("a/+")
    sender = LocalTransport(bus, "sender")
    await sender.connect(5)
    await sender.publish("a/b", b"")
    await sender.publish("$sys/b", b"")
    second = await Reader(bus, "second").start("#", "+/b")
    await sender.publish("a/b", b"")
    await sender.publish("$sys/b", b"")  # a leading wildcard never takes a `$` level
    await first.transport.unsubscribe("a/+")
    await sender.publish("a/b", b"")
    await second.transport.subscribe("$sys/+")
    await sender.publish("$sys/b", b"")
    await _settled(sender, second)
    await second.transport.disconnect()
    await sender.publish("a/b", b"")
    await _settled(sender, first)
    assert first.topics == ["a/b", "a/b"]
    assert second.topics == ["a/b", "a/b", "$sys/b"]


async def test_the_kept_routes_are_bounded() -> None:
    """A job's own topics are new for every job: the routes kept never pass the limit, and a
    topic shared by every job is still delivered once its route was dropped."""
    bus = LocalBus()
    reader = await Reader(bus, "reader").start("$aws/things/t/jobs/+/update/+", "notify")
    sender = LocalTransport(bus, "sender")
    await sender.connect(5)
    for number in range(3 * ROUTE_CACHE_LIMIT):
        await sender.publish(f"$aws/things/t/jobs/job-{number}/update/accepted", b"")
        await sender.publish("notify", b"")
        assert len(bus._routes) <= ROUTE_CACHE_LIMIT
    await _settled(sender, reader)
    assert len(reader.topics) == 6 * ROUTE_CACHE_LIMIT
    assert reader.topics[-2:] == [
        f"$aws/things/t/jobs/job-{3 * ROUTE_CACHE_LIMIT - 1}/update/accepted",
        "notify",
    ]


async def test_a_wildcard_filter_is_matched_only_against_topics_of_a_length_it_can_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job's own topics are routed once each (their routes are new): a filter of a length no
    such topic has (the device's seven-level `+/update/+` for the six-level update request) is
    passed over without a call of the level matcher."""
    calls = _counted(monkeypatch)
    bus = LocalBus()
    reader = await Reader(bus, "reader").start("x/+/z", "x/#", "+/y")
    sender = LocalTransport(bus, "sender")
    await sender.connect(5)
    for topic in ["x/y", "x", "q/r/s/t"]:
        await sender.publish(topic, b"")
    await _settled(sender, reader)
    assert reader.topics == ["x/y", "x"]
    # x/y: "x/#" matches first (one call); x: "x/#" (one call); q/r/s/t: "x/#" (one call)
    assert calls == ["x/y", "x", "q/r/s/t"]


async def test_the_bus_delivers_what_the_topic_rules_say_for_every_small_filter_and_topic() -> None:
    """Every valid filter of up to three levels over `a`, `$s`, the empty level, `+` and `#`,
    each on a client of its own, and every topic of up to four such levels: each client hears
    exactly the topics `topic_matches` gives it, in publish order."""
    names = ["a", "$s", ""]
    filters = [
        "/".join(levels)
        for size in (1, 2, 3)
        for levels in itertools.product([*names, "+", "#"], repeat=size)
        if "#" not in levels[:-1] and "/".join(levels)
    ]
    topics = [
        "/".join(levels)
        for size in (1, 2, 3, 4)
        for levels in itertools.product(names, repeat=size)
        if "/".join(levels)
    ]
    bus = LocalBus()
    heard: dict[str, list[str]] = {f: [] for f in filters}
    total = [0]
    for index, topic_filter in enumerate(filters):
        transport = LocalTransport(bus, f"client-{index}")

        def received(message: Message, own: list[str] = heard[topic_filter]) -> None:
            own.append(message.topic)
            total[0] += 1

        transport.set_message_callback(received)
        await transport.connect(5)
        await transport.subscribe(topic_filter)
    sender = LocalTransport(bus, "sender")
    await sender.connect(5)
    for topic in topics:
        await sender.publish(topic, b"")
    expected = {f: [t for t in topics if topic_matches(f, t)] for f in filters}
    async with asyncio.timeout(30):
        while total[0] < sum(map(len, expected.values())):
            await asyncio.sleep(0)  # lets the loop run the deliveries; the count decides
    assert heard == expected
