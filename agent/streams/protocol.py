"""The wire format of MQTT-based file delivery, device side.

Pages: developer guide "MQTT-based file delivery" and "Using AWS IoT MQTT-based file delivery in
devices". A device publishes DescribeStream on `$aws/things/T/streams/S/describe/{fmt}` and
GetStream on `.../get/{fmt}`; the answers come on `.../description/{fmt}`, `.../data/{fmt}` (one
message per block) and `.../rejected/{fmt}`. Keys are abbreviated: `c` client token, `s` stream
version, `f` file id, `l` block size (in a request) or payload size (in a block), `o` first
block, `n` number of blocks, `b` block bitmap, `i` block id, `p` payload; `d` description, `r`
files with `f` and `z` (size); `o` error code and `m` message in a rejection.

Two encodings: JSON, and CBOR (smaller: byte strings instead of text for `p` and `b`). CBOR needs
the `cbor2` library, an optional dependency the agent never requires (`cbor_available()`).

How JSON carries a block's bytes is a point where the page and AWS's own device library
disagree: the page says hexadecimal, the AWS IoT MQTT file streams library decodes base64. Both
are read here; they are told apart by length (hexadecimal is exactly twice the block's size,
base64 never is). The bitmap is only sent in CBOR, where it is a byte string; a JSON request asks
for one run of consecutive blocks with `o` and `n`, so the bitmap's JSON spelling never matters.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.streams.errors import StreamProtocolError, StreamsError
from jobs_agent.vocabulary import is_stream_id

MAX_FILE_ID = 255
MIN_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 131072
MAX_BYTES_PER_REQUEST = 131072
"""The most data one GetStream is answered with; more takes more requests."""
MAX_OFFSET = 98304
MAX_BITMAP_BYTES = 12287
""""Less than 12,288 bytes" (BlockBitmapLimitExceeded)."""


class Format(StrEnum):
    JSON = "json"
    CBOR = "cbor"


class Verb(StrEnum):
    """The last-but-one level of a streams topic."""

    DESCRIBE = "describe"
    GET = "get"
    DESCRIPTION = "description"
    DATA = "data"
    REJECTED = "rejected"


def is_valid_stream_id(stream_id: str) -> bool:
    return is_stream_id(stream_id)


def prefix(thing_name: str, stream_id: str) -> str:
    """Every topic of one stream of one thing starts with this."""
    return f"$aws/things/{thing_name}/streams/{stream_id}/"


def topic(thing_name: str, stream_id: str, verb: Verb, fmt: Format) -> str:
    return f"{prefix(thing_name, stream_id)}{verb.value}/{fmt.value}"


def parse_verb(topic_name: str, stream_prefix: str, fmt: Format) -> Verb | None:
    """The answer verb of a topic below `stream_prefix` in `fmt`; None for anything else."""
    rest = topic_name[len(stream_prefix) :].split("/")
    if len(rest) != 2 or rest[1] != fmt.value:
        return None
    try:
        verb = Verb(rest[0])
    except ValueError:
        return None
    return verb if verb in (Verb.DESCRIPTION, Verb.DATA, Verb.REJECTED) else None


def blocks_per_request(block_size: int) -> int:
    return max(1, MAX_BYTES_PER_REQUEST // block_size)


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_length(block_id: int, size: int, block_size: int) -> int:
    """The bytes block `block_id` holds: `block_size`, or what is left for the last one."""
    return min(block_size, size - block_id * block_size)


# -- encodings ---------------------------------------------------------------------------------
_CBOR: Any = None


def cbor_available() -> bool:
    try:
        cbor_module()
    except ImportError:
        return False
    return True


def cbor_module() -> Any:
    """cbor2, imported on first use: an optional library the agent never requires (the
    emulator's streams use the same one)."""
    global _CBOR
    if _CBOR is None:
        import cbor2

        _CBOR = cbor2
    return _CBOR


class Codec:
    """Encodes requests and decodes answers in one format."""

    def __init__(self, fmt: Format) -> None:
        if fmt is Format.CBOR and not cbor_available():
            raise StreamsError("CBOR needs the cbor2 library (pip install cbor2); JSON does not")
        self.fmt = fmt

    def encode(self, body: Mapping[str, Any]) -> bytes:
        if self.fmt is Format.CBOR:
            return bytes(cbor_module().dumps(dict(body)))
        return json.dumps(body, separators=(",", ":")).encode()

    def decode(self, payload: bytes) -> dict[str, Any]:
        try:
            if self.fmt is Format.CBOR:
                body = cbor_module().loads(payload)
            else:
                body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise StreamProtocolError(f"an answer is not {self.fmt.value.upper()}: {exc}") from None
        except Exception as exc:  # cbor2's decoder errors have no common base below Exception
            raise StreamProtocolError(f"an answer is not CBOR: {exc}") from None
        if not isinstance(body, dict):
            raise StreamProtocolError("an answer is not a map")
        return body


# -- requests ----------------------------------------------------------------------------------
def describe_request(token: str) -> dict[str, Any]:
    return {"c": token}


def get_request(
    token: str,
    file_id: int,
    block_size: int,
    blocks: Sequence[int],
    *,
    version: int | None,
    fmt: Format,
) -> dict[str, Any]:
    """GetStream for `blocks` (ascending): `o` and `n` for a run of consecutive blocks, else (in
    CBOR only) `o`, a bitmap `b` counted from `o` and `n` as the number of blocks wanted."""
    if not blocks:
        raise ValueError("a GetStream request needs at least one block")
    first = blocks[0]
    body: dict[str, Any] = {"c": token}
    if version is not None:
        body["s"] = version
    body.update(f=file_id, l=block_size, o=first, n=len(blocks))
    if blocks[-1] - first + 1 != len(blocks):
        if fmt is not Format.CBOR:
            raise ValueError("JSON requests ask for consecutive blocks only")
        bitmap = bytearray((blocks[-1] - first) // 8 + 1)
        if len(bitmap) > MAX_BITMAP_BYTES:
            raise ValueError(f"a bitmap of {len(bitmap)} bytes is over the limit")
        for block in blocks:
            bit = block - first
            bitmap[bit // 8] |= 1 << (bit % 8)
        body["b"] = bytes(bitmap)
    return body


# -- answers -----------------------------------------------------------------------------------
@model(slots=True)
class StreamFile:
    file_id: int
    size: int


@model(slots=True)
class StreamDescription:
    """DescribeStream's answer: the stream's version, description and files."""

    version: int
    description: str | None
    files: tuple[StreamFile, ...]

    def file(self, file_id: int) -> StreamFile | None:
        return next((f for f in self.files if f.file_id == file_id), None)


@model(slots=True)
class DataBlock:
    token: str | None
    file_id: int
    block_id: int
    payload: bytes | str
    """Bytes in CBOR; in JSON the text, decoded by `payload_bytes` once its size is known."""

    def payload_bytes(self, expected: int) -> bytes:
        """The block's bytes, `expected` long: JSON's hexadecimal or base64 (see the module
        docstring), CBOR's byte string. Raises `StreamProtocolError`."""
        if isinstance(self.payload, bytes):
            data = self.payload
        elif len(self.payload) == 2 * expected:
            try:
                data = bytes.fromhex(self.payload)
            except ValueError:
                raise StreamProtocolError(f"block {self.block_id}: bad hexadecimal") from None
        else:
            try:
                data = base64.b64decode(self.payload, validate=True)
            except (binascii.Error, ValueError):
                raise StreamProtocolError(
                    f"block {self.block_id}: neither hexadecimal nor base64"
                ) from None
        if len(data) != expected:
            raise StreamProtocolError(
                f"block {self.block_id} has {len(data)} bytes; {expected} were expected"
            )
        return data


@model(slots=True)
class Rejection:
    token: str | None
    code: str
    message: str


def _token(body: Mapping[str, Any]) -> str | None:
    token = body.get("c")
    return token if isinstance(token, str) else None


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StreamProtocolError(f"'{key}' must be a non-negative integer, got {value!r}")
    return value


def parse_description(body: Mapping[str, Any]) -> StreamDescription:
    files = body.get("r")
    if not isinstance(files, list):
        raise StreamProtocolError("a stream description needs its files ('r')")
    parsed = []
    for item in files:
        if not isinstance(item, Mapping):
            raise StreamProtocolError("a stream file ('r' item) must be a map")
        parsed.append(StreamFile(_int(item, "f"), _int(item, "z")))
    description = body.get("d")
    return StreamDescription(
        _int(body, "s"), description if isinstance(description, str) else None, tuple(parsed)
    )


def parse_block(body: Mapping[str, Any]) -> DataBlock:
    payload = body.get("p")
    if not isinstance(payload, bytes | str):
        raise StreamProtocolError("a data block needs its payload ('p')")
    return DataBlock(_token(body), _int(body, "f"), _int(body, "i"), payload)


def parse_rejection(body: Mapping[str, Any]) -> Rejection:
    code = body.get("o")
    message = body.get("m")
    return Rejection(
        _token(body),
        code if isinstance(code, str) and code else "Unknown",
        message if isinstance(message, str) else "",
    )
