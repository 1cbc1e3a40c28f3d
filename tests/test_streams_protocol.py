"""The device side's wire format and block bookkeeping of MQTT-based file delivery, without a
broker: requests as the developer guide spells them, both JSON payload readings, and which
blocks the next request asks for."""

from __future__ import annotations

import base64
import collections

import pytest

from jobs_agent.streams import protocol
from jobs_agent.streams.errors import (
    ErrorCode,
    ResourceNotFound,
    StreamProtocolError,
    StreamRejected,
    VersionMismatch,
    rejection,
)
from jobs_agent.streams.protocol import DataBlock, Format
from jobs_agent.streams.window import Fetch, Get


def test_the_bitmap_example_of_the_page() -> None:
    """Blocks 20, 21, 24 and 43: `o` 20 and the bitmap 0x130080 (mqtt-based-file-delivery-in-
    devices.html, "Build a bitmap for a GetStream request"); `n` the number of blocks."""
    body = protocol.get_request("t", 1, 256, [20, 21, 24, 43], version=3, fmt=Format.CBOR)
    assert body == {"c": "t", "s": 3, "f": 1, "l": 256, "o": 20, "n": 4, "b": b"\x13\x00\x80"}


def test_consecutive_blocks_need_no_bitmap_and_json_asks_only_for_those() -> None:
    body = protocol.get_request("t", 0, 4096, [7, 8, 9], version=None, fmt=Format.JSON)
    assert body == {"c": "t", "f": 0, "l": 4096, "o": 7, "n": 3}
    with pytest.raises(ValueError, match="consecutive"):
        protocol.get_request("t", 0, 4096, [7, 9], version=None, fmt=Format.JSON)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("00ff10", b"\x00\xff\x10"),  # hexadecimal: the guide
        (base64.b64encode(b"\x00\xff\x10").decode(), b"\x00\xff\x10"),  # base64: AWS's library
        (b"\x00\xff\x10", b"\x00\xff\x10"),  # CBOR's byte string
    ],
)
def test_a_json_block_is_read_in_hexadecimal_and_in_base64(
    payload: str | bytes, expected: bytes
) -> None:
    assert DataBlock("t", 0, 5, payload).payload_bytes(3) == expected


@pytest.mark.parametrize("payload", ["00f", "zz ff 10", "AAAAAAAA", b"\x00"])
def test_a_block_of_the_wrong_size_or_spelling_is_refused(payload: str | bytes) -> None:
    with pytest.raises(StreamProtocolError):
        DataBlock("t", 0, 5, payload).payload_bytes(3)


def test_answers_are_parsed_or_refused() -> None:
    description = protocol.parse_description({"c": "x", "s": 2, "r": [{"f": 0, "z": 10}]})
    assert description.version == 2 and description.file(0) is not None
    assert description.file(1) is None
    with pytest.raises(StreamProtocolError):
        protocol.parse_description({"s": 2, "r": [{"f": -1, "z": 10}]})
    with pytest.raises(StreamProtocolError):
        protocol.parse_block({"f": 0, "i": True, "p": "00"})
    refused = protocol.parse_rejection({"o": "VersionMismatch", "m": "changed", "c": "t"})
    assert (refused.token, refused.code, refused.message) == ("t", "VersionMismatch", "changed")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("VersionMismatch", VersionMismatch),
        ("ResourceNotFound", ResourceNotFound),
        ("BlockSizeOutOfBounds", StreamRejected),
        ("SomethingNew", StreamRejected),
    ],
)
def test_each_rejection_has_its_type(code: str, kind: type[StreamRejected]) -> None:
    error = rejection(code, "why", "fw")
    assert type(error) is kind
    assert str(error) == f"stream fw: {code}: why"
    assert isinstance(error.code, ErrorCode) is (code in {c.value for c in ErrorCode})


def _fetch(fmt: Format, missing: list[int], block_size: int = 16384) -> Fetch:
    return Fetch(0, 10**9, block_size, fmt, set(missing), collections.deque(sorted(missing)))


def test_json_asks_for_runs_and_cbor_for_spans_of_at_most_128_kb() -> None:
    json_fetch = _fetch(Format.JSON, [0, 1, 2, 5, 6, 20, *range(100, 120)])
    assert json_fetch.next_blocks() == [0, 1, 2]
    assert json_fetch.next_blocks() == [5, 6]
    assert json_fetch.next_blocks() == [20]
    assert json_fetch.next_blocks() == list(range(100, 108))  # 8 blocks of 16 KiB = 128 KB
    cbor_fetch = _fetch(Format.CBOR, [0, 1, 2, 5, 6, 20, 9000, 9001])
    assert cbor_fetch.next_blocks() == [0, 1, 2, 5, 6, 20]  # 9000 is past the bitmap's span
    assert cbor_fetch.next_blocks() == [9000, 9001]


def test_unanswered_blocks_go_back_first_and_arrived_ones_are_skipped() -> None:
    fetch = _fetch(Format.JSON, list(range(24)))
    first, second = fetch.next_blocks(), fetch.next_blocks()
    fetch.outstanding = {"a": Get(set(first), 1.0), "b": Get(set(second), 5.0)}
    fetch.received(0)
    fetch.received(1)
    assert fetch.expire(now=2.0) == 1  # "a" is given up: blocks 2..7 are asked for again
    assert fetch.next_blocks() == [2, 3, 4, 5, 6, 7]
    fetch.received(17)  # "b" answered one of its blocks; one from an earlier request came too
    fetch.received(18)
    assert fetch.void() == 1  # the link dropped: "b"'s missing blocks go back
    assert fetch.next_blocks() == [8, 9, 10, 11, 12, 13, 14, 15]
    assert fetch.next_blocks() == [16]  # 17 and 18 are here already
    assert fetch.next_blocks() == [19, 20, 21, 22, 23]
