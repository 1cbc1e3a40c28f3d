"""MQTT-based file delivery: streams through the `iot` API, and their device topics.

Pages (developer guide): mqtt-based-file-delivery.html, mqtt-based-file-delivery-what-is.html,
mqtt-based-file-delivery-in-devices.html ("Using AWS IoT MQTT-based file delivery in devices":
DescribeStream and GetStream requests and responses, the bitmap, the error codes); API
reference API_CreateStream.html, API_DescribeStream.html, API_ListStreams.html,
API_UpdateStream.html, API_DeleteStream.html. boto3's `iot` drives the control plane; a raw MQTT
peer on the in-process bus publishes JSON and CBOR requests (CBOR through cbor2).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest

from jobs_agent.emulator import JobsService, ManualClock
from jobs_agent.emulator.embedded import EmbeddedEmulator
from jobs_agent.emulator.readings import DOCUMENTED
from jobs_agent.transport.base import Message
from jobs_agent.transport.local import LocalBus, LocalTransport

ROLE = "arn:aws:iam::123456789012:role/StreamRole"
DATA = bytes(range(256)) * 50 + b"tail"  # 12804 bytes: 51 blocks of 256, the last 4 bytes


def files(*pairs: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"fileId": f, "s3Location": {"bucket": "bkt", "key": k}} for f, k in pairs]


def test_streams_are_created_described_listed_updated_and_deleted(
    iot: Any, service: JobsService, clock: ManualClock
) -> None:
    """CreateStream returns id, ARN, description and version 1; UpdateStream increments the
    version; DescribeStream's streamInfo lists the files; ListStreams pages, newest first unless
    isAscendingOrder; a file's S3 object must exist (API_CreateStream.html lists
    ResourceNotFoundException); DeleteStream of an unknown stream is ResourceNotFoundException
    (API_*Stream.html)."""
    service.put_s3_object("bkt", "a.bin", b"a")
    service.put_s3_object("bkt", "b.bin", b"bb")
    created = iot.create_stream(
        streamId="s1", files=files((0, "a.bin")), roleArn=ROLE, description="one file"
    )
    assert created == {
        "streamId": "s1",
        "streamArn": "arn:aws:iot:eu-west-1:123456789012:stream/s1",
        "description": "one file",
        "streamVersion": 1,
        "ResponseMetadata": created["ResponseMetadata"],
    }
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_stream(streamId="s1", files=files((0, "a.bin")), roleArn=ROLE)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_stream(streamId="s2", files=files((0, "missing.bin")), roleArn=ROLE)
    clock.advance(5)
    iot.create_stream(streamId="s3", files=files((0, "a.bin")), roleArn=ROLE)
    updated = iot.update_stream(streamId="s1", files=files((0, "a.bin"), (7, "b.bin")))
    assert updated["streamVersion"] == 2
    info = iot.describe_stream(streamId="s1")["streamInfo"]
    assert [f["fileId"] for f in info["files"]] == [0, 7]
    assert info["files"][1]["s3Location"] == {"bucket": "bkt", "key": "b.bin"}
    assert info["roleArn"] == ROLE
    newest_first = iot.list_streams()["streams"]
    assert [s["streamId"] for s in newest_first] == ["s3", "s1"]
    oldest_first = iot.list_streams(ascendingOrder=True, maxResults=1)
    assert [s["streamId"] for s in oldest_first["streams"]] == ["s1"]
    assert "nextToken" in oldest_first
    iot.delete_stream(streamId="s3")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.delete_stream(streamId="s3")


@pytest.mark.parametrize(
    "bad",
    [
        [],
        files(*[(i, "a.bin") for i in range(51)]),
        files((0, "a.bin"), (0, "a.bin")),
        files((256, "a.bin")),
    ],
)
def test_stream_files_are_checked(endpoint: str, service: JobsService, bad: list[Any]) -> None:
    """files: "Minimum number of 1 item. Maximum number of 50 items"; fileId 0..255
    (API_CreateStream.html; "The stream file ID is required", an integer 0 to 255,
    mqtt-based-file-delivery-in-devices.html). Sent raw: botocore checks some of these itself."""
    import urllib.error
    import urllib.request

    service.put_s3_object("bkt", "a.bin", b"a")
    request = urllib.request.Request(
        endpoint + "/streams/bad",
        data=json.dumps({"files": bad, "roleArn": ROLE}).encode(),
        method="POST",
        headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=x/20240101/eu-west-1/iot/aws4_request"
        },
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read())["__type"] == "InvalidRequestException"


class StreamPeer:
    """A raw MQTT client on the bus subscribed to one thing's streams topics."""

    def __init__(self, bus: LocalBus, thing: str = "dev1") -> None:
        self.thing = thing
        self.transport = LocalTransport(bus, f"streams-{thing}")
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.transport.set_message_callback(self.messages.put_nowait)

    async def start(self) -> None:
        await self.transport.connect(5)
        await self.transport.subscribe(f"$aws/things/{self.thing}/streams/#")

    async def ask(
        self, stream: str, verb: str, fmt: str, request: Any, until: int = 1
    ) -> list[tuple[str, Any]]:
        """Publish one request; the `until` answers that follow (suffix, decoded body)."""
        if isinstance(request, bytes):
            payload = request
        elif fmt == "cbor":
            payload = cbor2.dumps(request)
        else:
            payload = json.dumps(request).encode()
        base = f"$aws/things/{self.thing}/streams/{stream}/"
        await self.transport.publish(f"{base}{verb}/{fmt}", payload)
        answers: list[tuple[str, Any]] = []
        async with asyncio.timeout(2):
            while len(answers) < until:
                message = await self.messages.get()
                suffix = message.topic[len(base) :]
                if suffix == f"{verb}/{fmt}" or suffix.startswith(("get/", "describe/")):
                    continue  # requests (ours)
                if not suffix.endswith(fmt):
                    continue
                body = (
                    cbor2.loads(message.payload) if fmt == "cbor" else json.loads(message.payload)
                )
                answers.append((suffix.rsplit("/", 1)[0], body))
                if suffix.startswith("rejected"):
                    break
        return answers


@pytest.fixture
async def streams(emulator: EmbeddedEmulator) -> AsyncIterator[tuple[JobsService, StreamPeer]]:
    service = emulator.service
    service.put_s3_object("bkt", "fw.bin", DATA)
    service.put_s3_object("bkt", "cfg.json", b"{}")
    service.streams.create(
        "fw",
        [*_files(service, (0, "fw.bin"), (1, "cfg.json"))],
        ROLE,
        "firmware 2.0",
    )
    peer = StreamPeer(emulator.bus)
    await peer.start()
    yield service, peer
    await peer.transport.disconnect()


def _files(service: JobsService, *pairs: tuple[int, str]) -> list[Any]:
    from jobs_agent.emulator.streams import parse_files

    return parse_files(files(*pairs))


@pytest.mark.parametrize("fmt", ["json", "cbor"])
async def test_describe_stream_over_mqtt(streams: tuple[JobsService, StreamPeer], fmt: str) -> None:
    """DescribeStream: `c` echoed, `s` the stream version, `d` the description, `r` the files
    with `f` id and `z` size in bytes (mqtt-based-file-delivery-in-devices.html, DescribeStream
    response), the same in CBOR ("If you replace json with cbor ... messages in the CBOR
    format")."""
    _, peer = streams
    ((suffix, body),) = await peer.ask("fw", "describe", fmt, {"c": "tok"})
    assert suffix == "description"
    assert body == {
        "c": "tok",
        "s": 1,
        "d": "firmware 2.0",
        "r": [{"f": 0, "z": len(DATA)}, {"f": 1, "z": 2}],
    }


async def test_get_stream_in_cbor_returns_each_block(
    streams: tuple[JobsService, StreamPeer],
) -> None:
    """GetStream: one response per block with `c`, `f`, `l` (the payload's size), `i` (the
    block id, from 0) and `p` (mqtt-based-file-delivery-in-devices.html, GetStream response);
    in CBOR the payload is a byte string. Blocks past the end of the file are not sent and the
    last block is short."""
    _, peer = streams
    answers = await peer.ask(
        "fw", "get", "cbor", {"c": "t", "s": 1, "f": 0, "l": 256, "o": 49, "n": 5}, until=2
    )
    assert [(s, b["i"], b["l"], b["f"], b["c"]) for s, b in answers] == [
        ("data", 49, 256, 0, "t"),
        ("data", 50, 4, 0, "t"),
    ]
    assert answers[0][1]["p"] == DATA[49 * 256 : 50 * 256]
    assert answers[1][1]["p"] == b"tail"


@pytest.mark.parametrize("payload_base64", [False, True])
async def test_get_stream_in_json_under_each_reading(
    emulator: EmbeddedEmulator, payload_base64: bool
) -> None:
    """JSON carries a block's bytes as a string: "a string which represents the value of the
    data block in hexadecimal notation" (mqtt-based-file-delivery-in-devices.html, GetStream
    response), or base64 as AWS's device library for MQTT file streams decodes it (the
    `stream-json-payload=hex|base64` reading)."""
    readings = dataclasses.replace(DOCUMENTED, stream_json_payload_base64=payload_base64)
    async with EmbeddedEmulator(LocalBus(), tick_seconds=None, readings=readings) as emu:
        emu.service.put_s3_object("bkt", "fw.bin", DATA)
        emu.service.streams.create("fw", _files(emu.service, (0, "fw.bin")), ROLE)
        peer = StreamPeer(emu.bus)
        await peer.start()
        ((suffix, body),) = await peer.ask("fw", "get", "json", {"f": 0, "l": 256, "n": 1})
    expected = DATA[:256]
    assert suffix == "data"
    assert body["p"] == (base64.b64encode(expected).decode() if payload_base64 else expected.hex())


async def test_the_bitmap_example_of_the_page(streams: tuple[JobsService, StreamPeer]) -> None:
    """ "you want to request blocks 20, 21, 24 and 43 ... specify the offset (field o) as 20 ...
    In hexadecimal notation, this converts to "0x130080"" with `n` 32
    (mqtt-based-file-delivery-in-devices.html, Build a bitmap for a GetStream request)."""
    _, peer = streams
    request = {"c": "1", "s": 1, "l": 256, "f": 0, "o": 20, "n": 32, "b": "0x130080"}
    answers = await peer.ask("fw", "get", "json", request, until=4)
    assert [b["i"] for _, b in answers] == [20, 21, 24, 43]
    cbor_request = {**request, "b": bytes.fromhex("130080")}
    answers = await peer.ask("fw", "get", "cbor", cbor_request, until=4)
    assert [b["i"] for _, b in answers] == [20, 21, 24, 43]
    limited = await peer.ask("fw", "get", "json", {**request, "n": 2}, until=2)
    assert [b["i"] for _, b in limited] == [20, 21]


async def test_one_request_is_answered_with_at_most_128_kb(
    emulator: EmbeddedEmulator,
) -> None:
    """ "You can make a request for multiple blocks whose total size is greater than 128 KB ...
    the request doesn't fail, but your device must make multiple requests"; `n` defaults to
    131072/DataBlockSize (mqtt-based-file-delivery-in-devices.html, GetStream request)."""
    service = emulator.service
    service.put_s3_object("bkt", "big.bin", bytes(300_000))
    service.streams.create("big", _files(service, (0, "big.bin")), ROLE)
    peer = StreamPeer(emulator.bus)
    await peer.start()
    asked = await peer.ask("big", "get", "cbor", {"f": 0, "l": 1024, "n": 200}, until=128)
    assert [b["i"] for _, b in asked] == list(range(128))
    default = await peer.ask("big", "get", "cbor", {"f": 0, "l": 65536, "o": 2}, until=2)
    assert [b["i"] for _, b in default] == [2, 3]
    await peer.transport.publish("$aws/things/dev1/streams/big/describe/cbor", cbor2.dumps({}))
    async with asyncio.timeout(2):  # nothing more than 128 KB came for the first request
        message = await peer.messages.get()
        while message.topic.endswith(("/get/cbor", "/describe/cbor")):
            message = await peer.messages.get()  # our own requests
    assert message.topic.endswith("/description/cbor")


@pytest.mark.parametrize(
    ("request_body", "code", "echoed"),
    [
        ({"c": "t", "f": 0, "l": 255}, "BlockSizeOutOfBounds", True),
        ({"c": "t", "f": 0, "l": 131073}, "BlockSizeOutOfBounds", True),
        ({"c": "t", "f": 0, "l": 256, "o": 98305}, "OffsetOutOfBounds", True),
        ({"c": "t", "f": 0, "l": 256, "n": 98305}, "BlockCountLimitExceeded", True),
        ({"c": "t", "f": 0, "l": 256, "b": "ff" * 12288}, "BlockBitmapLimitExceeded", True),
        ({"c": "t", "f": 0, "l": 256, "s": 9}, "VersionMismatch", True),
        ({"c": "t", "f": 9, "l": 256}, "ResourceNotFound", True),
        ({"c": "t", "f": 0, "l": 256, "o": 51}, "ResourceNotFound", True),
        ({"c": "t", "l": 256}, "InvalidRequest", True),
        ({"c": "x" * 65, "f": 0, "l": 256}, "InvalidRequest", False),
        (b"{not json", "InvalidJson", False),
    ],
)
async def test_refused_requests_carry_the_documented_code(
    streams: tuple[JobsService, StreamPeer], request_body: Any, code: str, echoed: bool
) -> None:
    """The error codes of "Handling errors from AWS IoT MQTT-based file delivery" with `o`, `m`
    and `c` ("When the client token given in the request isn't valid or is malformed, it's not
    returned in the error response"); ranges from the GetStream request fields
    (mqtt-based-file-delivery-in-devices.html)."""
    _, peer = streams
    ((suffix, body),) = await peer.ask("fw", "get", "json", request_body)
    assert suffix == "rejected"
    assert body["o"] == code
    assert body["m"]
    assert ("c" in body) is echoed


async def test_topic_and_cbor_errors(streams: tuple[JobsService, StreamPeer]) -> None:
    """`InvalidTopic` ("The MQTT topic of the stream message is invalid") and `InvalidCbor`;
    an unknown stream is `ResourceNotFound` (mqtt-based-file-delivery-in-devices.html,
    Handling errors)."""
    _, peer = streams
    ((suffix, body),) = await peer.ask("fw", "fetch", "json", {"c": "a"})
    assert (suffix, body["o"]) == ("rejected", "InvalidTopic")
    ((suffix, body),) = await peer.ask("fw", "get", "cbor", b"\xff\xff")
    assert (suffix, body["o"]) == ("rejected", "InvalidCbor")
    ((suffix, body),) = await peer.ask("nope", "describe", "cbor", {"c": "a"})
    assert (suffix, body["o"], body["c"]) == ("rejected", "ResourceNotFound", "a")


async def test_a_changed_object_is_an_etag_mismatch(
    streams: tuple[JobsService, StreamPeer],
) -> None:
    """ "ETagMismatch: The S3 ETag in the stream doesn't match with the ETag of the latest S3
    object version"; UpdateStream takes the new object (a new stream version)
    (mqtt-based-file-delivery-in-devices.html, Handling errors)."""
    service, peer = streams
    service.put_s3_object("bkt", "fw.bin", DATA + b"more")
    ((_, body),) = await peer.ask("fw", "get", "json", {"f": 0, "l": 256})
    assert body["o"] == "ETagMismatch"
    service.streams.update("fw")
    ((_, body),) = await peer.ask("fw", "describe", "json", {})
    assert body["s"] == 2
    assert body["r"][0]["z"] == len(DATA) + 4


def test_stream_files_come_from_the_s3_directory(tmp_path: Any) -> None:
    """`sim serve --s3-dir DIR`: a stream file `s3://BUCKET/KEY` is `DIR/BUCKET/KEY`, read a
    block at a time (docs/emulator.md); streams are kept by `--state`."""
    from jobs_agent.emulator.store import StateStore

    (tmp_path / "s3" / "bkt").mkdir(parents=True)
    (tmp_path / "s3" / "bkt" / "fw.bin").write_bytes(DATA)
    store = StateStore(tmp_path / "state.db")
    service = JobsService(ManualClock(), store=store)
    service.s3_root = tmp_path / "s3"
    service.streams.create("fw", _files(service, (0, "fw.bin")), ROLE)
    blocks = service.streams.blocks("fw", {"f": 0, "l": 4096, "o": 2})
    assert [(b.block_id, len(b.data)) for b in blocks] == [(2, 4096), (3, len(DATA) - 12288)]
    store.close()
    store = StateStore(tmp_path / "state.db")
    try:
        again = JobsService(ManualClock(), store=store)
        again.s3_root = tmp_path / "s3"
        assert again.streams.device_description("fw") == {"s": 1, "r": [{"f": 0, "z": len(DATA)}]}
    finally:
        store.close()


def test_stream_files_never_leave_the_s3_directory(tmp_path: Any) -> None:
    """A key that climbs out of `--s3-dir` (`..`, or a symlink to a file outside) names no
    object: the emulator serves files only from below the directory (docs/emulator.md)."""
    from jobs_agent.emulator.service import ControlError

    (tmp_path / "s3" / "bkt").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"do not serve")
    (tmp_path / "s3" / "bkt" / "link").symlink_to(tmp_path / "secret")
    service = JobsService(ManualClock())
    service.s3_root = tmp_path / "s3"
    for key in ("../../secret", "link"):
        with pytest.raises(ControlError) as info:
            service.streams.create("s", _files(service, (0, key)), ROLE)
        assert info.value.exception == "ResourceNotFoundException"
