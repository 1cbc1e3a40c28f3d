"""`JobsClient.listen`: notifications handed over as they arrive, without `events()`'s wake-up
of its consumer (issue 18: two per plugin job), and the order of all events kept when a resync
(always queued) or an earlier notification is unread. On the in-process bus, a real
`LocalTransport` each side."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from jobs_agent.jobs import topics
from jobs_agent.jobs.client import (
    JobExecutionsChanged,
    JobsClient,
    JobsEvent,
    NextJobExecutionChanged,
    Resync,
)
from jobs_agent.transport.local import LocalBus, LocalTransport

THING = "thing-1"
WAIT = 2.0


class Heard:
    """A listener that records what it was given and says when it has `wanted` of them."""

    def __init__(self) -> None:
        self.events: list[JobsEvent] = []
        self.more = asyncio.Event()

    def __call__(self, event: JobsEvent) -> None:
        self.events.append(event)
        self.more.set()

    async def count(self, wanted: int) -> None:
        while len(self.events) < wanted:
            self.more.clear()
            await asyncio.wait_for(self.more.wait(), WAIT)


@pytest.fixture
def bus() -> LocalBus:
    return LocalBus()


@pytest.fixture
async def service(bus: LocalBus) -> AsyncIterator[LocalTransport]:
    transport = LocalTransport(bus, "service")
    await transport.connect(timeout=WAIT)
    yield transport
    await transport.disconnect()


@pytest.fixture
async def client(bus: LocalBus) -> AsyncIterator[JobsClient]:
    device = LocalTransport(bus, "device")
    await device.connect(timeout=WAIT)
    jobs = JobsClient(device, THING, request_timeout=WAIT)
    await jobs.start()
    yield jobs
    await jobs.close()
    await device.disconnect()


async def _notify_next(service: LocalTransport, timestamp: int) -> None:
    await service.publish(
        topics.notify_next_topic(THING), json.dumps({"timestamp": timestamp}).encode()
    )


async def _notify(service: LocalTransport, job_id: str) -> None:
    body = {"timestamp": 1, "jobs": {"QUEUED": [{"jobId": job_id, "queuedAt": 1}]}}
    await service.publish(topics.notify_topic(THING), json.dumps(body).encode())


async def test_notifications_go_to_the_listener_as_they_arrive(
    client: JobsClient, service: LocalTransport
) -> None:
    heard = Heard()
    client.listen(heard)
    await _notify_next(service, 1)
    await _notify(service, "job-a")
    await _notify_next(service, 2)
    await heard.count(3)
    kinds = [type(event) for event in heard.events]
    assert kinds == [NextJobExecutionChanged, JobExecutionsChanged, NextJobExecutionChanged]
    assert client.events_unread == 0
    assert client.stats.events == 3
    assert client.stats.events_coalesced == 0


async def test_a_resync_is_queued_and_what_follows_it_unread_waits_behind_it(
    client: JobsClient, service: LocalTransport, bus: LocalBus
) -> None:
    """The resync comes from the transport's connection callback: the engine reacts to it in
    its events' task. A notification that comes while it is unread is queued behind it, so the
    two reach the engine in the order they arrived; once the queue is read, the next one goes
    straight to the listener again."""
    heard = Heard()
    client.listen(heard)
    events = client.events()
    bus.set_online(False, client_id="device")
    bus.set_online(True, client_id="device")
    await _notify_next(service, 1)
    first = await asyncio.wait_for(anext(events), WAIT)
    second = await asyncio.wait_for(anext(events), WAIT)
    assert first == Resync(session_present=True)
    assert isinstance(second, NextJobExecutionChanged)
    assert heard.events == []
    await _notify(service, "job-b")
    await heard.count(1)
    assert isinstance(heard.events[0], JobExecutionsChanged)
    assert client.events_unread == 0


async def test_without_a_listener_notifications_are_queued_again(
    client: JobsClient, service: LocalTransport
) -> None:
    heard = Heard()
    client.listen(heard)
    await _notify_next(service, 1)
    await heard.count(1)
    client.listen(None)
    await _notify_next(service, 2)
    event = await asyncio.wait_for(anext(client.events()), WAIT)
    assert isinstance(event, NextJobExecutionChanged)
    assert len(heard.events) == 1
