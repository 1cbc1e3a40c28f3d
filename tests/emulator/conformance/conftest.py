"""Fixtures of the conformance suite: the emulator's service on a `ManualClock`, its HTTP
planes driven by boto3 (so request and response shapes are botocore's), and a raw MQTT peer on
the in-process bus (so the wire format itself is what is checked).

Each test holds one documented behaviour against the emulator and names its AWS page in its
docstring; docs/emulator.md's table lists the same behaviours.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.http_api import HttpApi
from jobs_agent.emulator.readings import DOCUMENTED, Readings
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport

REGION = "eu-west-1"
ARN = "arn:aws:iot:eu-west-1:123456789012:thing/{}"
GROUP_ARN = "arn:aws:iot:eu-west-1:123456789012:thinggroup/{}"
DOC = {"operation": "noop"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def readings() -> Readings:
    return DOCUMENTED


@pytest.fixture
def service(clock: ManualClock, readings: Readings) -> JobsService:
    return JobsService(clock, region=REGION, readings=readings)


@pytest.fixture
def endpoint(service: JobsService) -> Iterator[str]:
    api = HttpApi(service, "127.0.0.1", 0)
    api.start()
    assert api.endpoint is not None
    try:
        yield api.endpoint
    finally:
        api.stop()


def client(name: str, endpoint: str) -> Any:
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="whatever",
    )


@pytest.fixture
def iot(endpoint: str) -> Any:
    return client("iot", endpoint)


@pytest.fixture
def data(endpoint: str) -> Any:
    return client("iot-jobs-data", endpoint)


class Device:
    """A raw MQTT peer on the bus: publishes what a device publishes, records what it gets."""

    def __init__(self, bus: LocalBus, thing: str) -> None:
        self.transport = LocalTransport(bus, f"device-{thing}")
        self.thing = thing
        self.base = f"$aws/things/{thing}/jobs/"
        self.messages: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.transport.set_message_callback(self._on)
        self._counter = 0
        self.seen: list[tuple[str, dict[str, Any]]] = []
        """Messages passed over by `request` and `next`, in arrival order."""

    def _on(self, message: Message) -> None:
        self.messages.put_nowait((message.topic, json.loads(message.payload)))

    async def start(self, *filters: str) -> None:
        await self.transport.connect(5)
        for level in ("+", "+/+", "+/+/+"):
            await self.transport.subscribe(f"{self.base}{level}")
        for extra in filters:
            await self.transport.subscribe(extra)

    async def next(self, topic: str, timeout: float = 2.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                got, payload = await self.messages.get()
                if got == topic:
                    return payload
                self.seen.append((got, payload))

    async def published(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything published to this device so far: a get request is answered after every
        earlier publish (the front end publishes in order), so its reply is the fence."""
        self.seen = []
        await self.request("get")
        found, self.seen = self.seen, []
        return found

    def topics(
        self, messages: list[tuple[str, dict[str, Any]]], suffix: str
    ) -> list[dict[str, Any]]:
        return [p for t, p in messages if t == self.base + suffix]

    async def request(
        self, suffix: str, payload: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Publish to the thing's `suffix` topic; (accepted|rejected, reply payload)."""
        self._counter += 1
        token = f"tok-{self._counter}"
        topic = self.base + suffix
        await self.transport.publish(
            topic, json.dumps({**(payload or {}), "clientToken": token}).encode()
        )
        async with asyncio.timeout(2.0):
            while True:
                got, reply = await self.messages.get()
                if (
                    got in (topic + "/accepted", topic + "/rejected")
                    and reply.get("clientToken") == token
                ):
                    return got.rsplit("/", 1)[-1], reply
                self.seen.append((got, reply))


@pytest.fixture
async def emulator(clock: ManualClock, readings: Readings) -> AsyncIterator[EmbeddedEmulator]:
    bus = LocalBus()
    async with EmbeddedEmulator(bus, clock=clock, tick_seconds=None, readings=readings) as emu:
        yield emu


@pytest.fixture
async def device(emulator: EmbeddedEmulator) -> AsyncIterator[Device]:
    peer = Device(emulator.bus, "dev1")
    await peer.start()
    yield peer
    await peer.transport.disconnect()
