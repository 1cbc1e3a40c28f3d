"""The device's MQTT-based file delivery client (`jobs_agent.streams`) against the emulator's
streams service, over a transport it shares with a Jobs client.

The device side is the real `StreamsClient` on a real `LocalTransport`; the service side is the
real emulator on the same in-process bus (its conformance to the developer guide's pages is
pinned in tests/emulator/conformance/test_streams.py). The gate (tests/helpers/streams.py) only
decides whether the emulator's answer goes out, to lose requests on purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.jobs import topics
from jobs_agent.jobs.client import JobsClient
from jobs_agent.streams import protocol
from jobs_agent.streams.client import StreamsClient
from jobs_agent.streams.errors import ResourceNotFound, StreamTimeout, VersionMismatch
from jobs_agent.streams.protocol import Format
from jobs_agent.transport.local import LocalBus, LocalTransport
from jobs_agent.transport.shared import SharedLink
from tests.helpers.streams import Gate, create_stream, replace_file

THING = "stream-gw"
BLOCK = 1024
CONTENT = os.urandom(300 * BLOCK + 77)  # 301 blocks, the last one short: 3 requests' worth
COUNT = protocol.block_count(len(CONTENT), BLOCK)


@dataclass
class Device:
    bus: LocalBus
    emulator: EmbeddedEmulator
    transport: LocalTransport

    def client(self, fmt: Format = Format.JSON, **options: float) -> StreamsClient:
        return StreamsClient(self.transport, THING, "fw", fmt=fmt, **options)  # type: ignore[arg-type]


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    bus = LocalBus()
    async with EmbeddedEmulator(bus, tick_seconds=None) as emulator:
        create_stream(emulator.service, "fw", {0: CONTENT, 3: b"x" * 300})
        transport = LocalTransport(bus, THING)
        await transport.connect(5)
        try:
            yield Device(bus, emulator, transport)
        finally:
            await transport.disconnect()


class Sink:
    """Where the blocks go: a bytearray at the file's size, and the order they came in."""

    def __init__(self, size: int = len(CONTENT)) -> None:
        self.data = bytearray(size)
        self.order: list[int] = []

    def __call__(self, block: int, payload: bytes) -> None:
        self.data[block * BLOCK : block * BLOCK + len(payload)] = payload
        self.order.append(block)


async def fetch(
    client: StreamsClient, sink: Sink, missing: list[int] | None = None, version: int = 1
) -> None:
    await client.fetch(
        0,
        size=len(CONTENT),
        block_size=BLOCK,
        version=version,
        missing=range(COUNT) if missing is None else missing,
        on_block=sink,
    )


async def test_describe_and_fetch_a_whole_file(device: Device) -> None:
    """DescribeStream gives the version and the files' sizes; GetStream in a window of
    requests brings every block exactly once, the last one short."""
    async with device.client() as client:
        description = await client.describe()
        assert description.version == 1
        assert [(f.file_id, f.size) for f in description.files] == [(0, len(CONTENT)), (3, 300)]
        sink = Sink()
        await fetch(client, sink)
    assert bytes(sink.data) == CONTENT
    assert sorted(sink.order) == list(range(COUNT))
    assert client.stats.blocks == COUNT and client.stats.duplicates == 0
    per_request = protocol.blocks_per_request(BLOCK)
    assert device.emulator.service.counters["GetStream"] == -(-COUNT // per_request)


@pytest.mark.parametrize(
    ("fmt", "requests"),
    [
        (Format.JSON, 4),  # one run of consecutive blocks per request
        (Format.CBOR, 1),  # one bitmap for all four
    ],
)
async def test_blocks_with_holes_in_json_runs_and_a_cbor_bitmap(
    device: Device, fmt: Format, requests: int
) -> None:
    """Missing blocks that are not consecutive: JSON asks with `o`/`n` per run, CBOR with one
    bitmap `b` (mqtt-based-file-delivery-in-devices.html, "Build a bitmap")."""
    wanted = [0, 2, 5, 9]
    sink = Sink()
    async with device.client(fmt) as client:
        await fetch(client, sink, wanted)
    assert sorted(sink.order) == wanted
    for block in wanted:
        assert (
            sink.data[block * BLOCK : (block + 1) * BLOCK]
            == CONTENT[block * BLOCK : (block + 1) * BLOCK]
        )
    assert device.emulator.service.counters["GetStream"] == requests


@pytest.mark.parametrize("payload_base64", [False, True])
async def test_json_blocks_in_hexadecimal_and_in_base64(
    device: Device, payload_base64: bool
) -> None:
    """The guide says JSON carries a block in hexadecimal, AWS's device library reads base64:
    the client reads both (the emulator's `stream-json-payload` reading)."""
    device.emulator.streams_mqtt.json_payload_base64 = payload_base64
    sink = Sink()
    async with device.client() as client:
        await fetch(client, sink)
    assert bytes(sink.data) == CONTENT


async def test_lost_requests_are_asked_again(device: Device) -> None:
    """Requests the service never answers are repeated after the request timeout, for the
    blocks still missing only."""
    gate = Gate(device.emulator.service.streams, limit=20)
    sink = Sink()
    async with device.client(request_timeout=0.2, retry_min=0.01, retry_max=0.05) as client:
        task = asyncio.create_task(fetch(client, sink))
        await gate.wait(lambda g: g.dropped >= 2)
        gate.open()
        await asyncio.wait_for(task, 10)
    assert bytes(sink.data) == CONTENT
    assert client.stats.timeouts >= 1
    assert sorted(gate.served) == list(range(COUNT))  # nothing served twice


async def test_a_dropped_link_voids_outstanding_requests_and_they_are_asked_again(
    device: Device,
) -> None:
    """The link drops while requests are outstanding (their answers are gone with it); once
    it is back without its session, the subscriptions are there again and the missing blocks
    are asked for at once, not after a timeout."""
    gate = Gate(device.emulator.service.streams, limit=30)
    sink = Sink()
    async with device.client(request_timeout=30) as client:
        task = asyncio.create_task(fetch(client, sink))
        await gate.wait(lambda g: len(g.served) == 30 and g.requests >= 3)
        device.bus.set_online(False, client_id=THING)
        await asyncio.sleep(0)
        gate.open()
        device.bus.set_online(True, client_id=THING, keep_sessions=False)
        await asyncio.wait_for(task, 5)  # far sooner than the 30 s request timeout
    assert bytes(sink.data) == CONTENT
    assert client.stats.voided >= 1 and client.stats.timeouts == 0


async def test_answers_to_someone_else_are_ignored(device: Device) -> None:
    """Blocks and rejections on the stream's topics that do not carry this client's tokens
    (another client, an earlier attempt) are never written nor raised."""
    gate = Gate(device.emulator.service.streams, limit=10)
    sink = Sink()
    peer = LocalTransport(device.bus, "someone-else")
    await peer.connect(5)
    base = f"$aws/things/{THING}/streams/fw/"
    async with device.client(request_timeout=0.2, retry_min=0.01, retry_max=0.05) as client:
        task = asyncio.create_task(fetch(client, sink))
        await gate.wait(lambda g: g.dropped >= 1)
        forged = {"c": "other-1", "f": 0, "l": BLOCK, "i": 50, "p": "00" * BLOCK}
        await peer.publish(base + "data/json", json.dumps(forged).encode())
        await peer.publish(base + "data/json", json.dumps({**forged, "c": None}).encode())
        rejected = {"c": "other-2", "o": "ResourceNotFound", "m": "not yours"}
        await peer.publish(base + "rejected/json", json.dumps(rejected).encode())
        gate.open()
        await asyncio.wait_for(task, 10)
    await peer.disconnect()
    assert bytes(sink.data) == CONTENT
    assert client.stats.ignored >= 3


async def test_rejections_raise_typed_errors(device: Device) -> None:
    """ResourceNotFound for a stream that does not exist; VersionMismatch for a request that
    names the version the stream had before UpdateStream (mqtt-based-file-delivery-in-devices
    .html, Handling errors)."""
    missing = StreamsClient(device.transport, THING, "nope")
    async with missing:
        with pytest.raises(ResourceNotFound) as info:
            await missing.describe()
    assert "stream nope: ResourceNotFound" in str(info.value)
    replace_file(device.emulator.service, "fw", 0, CONTENT[::-1])
    async with device.client() as client:
        with pytest.raises(VersionMismatch):
            await fetch(client, Sink(), version=1)
        assert (await client.describe()).version == 2


async def test_a_service_that_never_answers_is_a_stall_not_a_hang(device: Device) -> None:
    """Nothing new for `stall_timeout` while the link is up: StreamTimeout, not a wait
    forever."""
    Gate(device.emulator.service.streams, limit=0)
    async with device.client(request_timeout=0.1, stall_timeout=0.6, retry_min=0.01) as client:
        with pytest.raises(StreamTimeout, match="301 blocks missing"):
            await asyncio.wait_for(fetch(client, Sink()), 10)


async def test_the_jobs_client_on_the_same_link_sees_none_of_it(device: Device) -> None:
    """The device's one connection shared as `build_device` shares it: the Jobs client on one
    view, the stream download on another. The stream's answers go to the streams client only;
    the Jobs client still works beside it; the download's view, detached, gives its
    subscriptions back while the Jobs client's stay."""
    link = SharedLink(device.transport)
    jobs = JobsClient(link.view(), THING, request_timeout=5)
    await jobs.start()
    view = link.view()
    try:
        async with StreamsClient(view, THING, "fw") as client:
            sink = Sink()
            await fetch(client, sink)
            assert await jobs.get_pending() is not None  # the Jobs client still works
        assert jobs.stats.replies_ignored == 0
        assert client.stats.ignored == 0
        assert hashlib.sha256(sink.data).digest() == hashlib.sha256(CONTENT).digest()
        await view.disconnect()
        await view.disconnect()  # idempotent
        assert link.held == set(topics.device_subscriptions(THING))
        assert await jobs.get_pending() is not None
    finally:
        await jobs.close()
        link.close()
