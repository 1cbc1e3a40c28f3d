"""MQTT-based file delivery: streams (CreateStream, DescribeStream, ListStreams, UpdateStream,
DeleteStream) and what a device asks of them over MQTT (DescribeStream and GetStream).

Pages: developer guide "MQTT-based file delivery", "What is a stream?", "Using AWS IoT
MQTT-based file delivery in devices" (requests, responses, the bitmap, the error codes); API
reference CreateStream, DescribeStream, ListStreams, UpdateStream, DeleteStream.

A stream lists 1..50 files, each a file id 0..255 and an S3 object (s3.py stands in for S3); its
version starts at 1 and every UpdateStream increments it. The objects must exist when the stream
is created or updated (ResourceNotFoundException, an error CreateStream lists), and the stream
remembers each one's ETag: a device asking for a file whose object changed since gets
`ETagMismatch` ("The S3 ETag in the stream doesn't match with the ETag of the latest S3 object
version").

GetStream, as the device page documents it:

* `f` (required) a file of the stream, `l` (required) the block size 256..131072 bytes
  (`BlockSizeOutOfBounds`), `o` the first block 0..98304 (`OffsetOutOfBounds`), `n` the number
  of blocks 0..98304 (`BlockCountLimitExceeded`; 0 or absent: 131072 / `l`), `b` a bitmap of
  blocks counted from `o`, bit k of byte k // 8 being block `o + 8 * (k // 8) + k % 8`, "less
  than 12,288 bytes" (`BlockBitmapLimitExceeded`), with `n` then a limit on the blocks returned;
  `s`, when given, must be the stream's version (`VersionMismatch`); `c` at most 64 bytes
  (`InvalidRequest`, and the token is not echoed).
* One answer per block, in block order, never more than 128 KB of blocks per request ("The
  service will send additional blocks as your device makes additional requests"); blocks past
  the end of the file are not sent (the last one is short), and a request none of whose blocks
  is in the file is `ResourceNotFound`.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs_agent.emulator.clock import Clock
from jobs_agent.emulator.errors import ControlError
from jobs_agent.emulator.s3 import ObjectStore
from jobs_agent.vocabulary import MAX_CLIENT_TOKEN, is_stream_id

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

MAX_FILES = 50
MAX_FILE_ID = 255
MAX_DESCRIPTION = 2028
MAX_STREAM_VERSION = 65535
MIN_BLOCK_SIZE = 256
MAX_BLOCK_SIZE = 131072
"""Also the most data one GetStream request is answered with."""
MAX_OFFSET = 98304
MAX_BLOCKS = 98304
MAX_BITMAP_BYTES = 12288


class StreamError(Exception):
    """A refused device request: `code` is one of the page's error codes (`o` in the answer)."""

    def __init__(self, code: str, message: str, echo_token: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.echo_token = echo_token


@dataclass(frozen=True, slots=True)
class StreamFile:
    file_id: int
    bucket: str
    key: str
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        location: dict[str, Any] = {"bucket": self.bucket, "key": self.key}
        if self.version is not None:
            location["version"] = self.version
        return {"fileId": self.file_id, "s3Location": location}


@dataclass(slots=True)
class Stream:
    stream_id: str
    description: str | None
    files: list[StreamFile]
    role_arn: str
    created_at: float
    updated_at: float
    version: int = 1
    etags: dict[int, str] = field(default_factory=dict)

    def file(self, file_id: int) -> StreamFile | None:
        return next((f for f in self.files if f.file_id == file_id), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "description": self.description,
            "files": [f.to_json() for f in self.files],
            "role_arn": self.role_arn,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
            "etags": {str(k): v for k, v in self.etags.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stream:
        return cls(
            data["stream_id"],
            data["description"],
            parse_files(data["files"]),
            data["role_arn"],
            data["created_at"],
            data["updated_at"],
            data["version"],
            {int(k): v for k, v in data["etags"].items()},
        )


@dataclass(frozen=True, slots=True)
class Block:
    file_id: int
    block_id: int
    data: bytes


def invalid(message: str) -> ControlError:
    return ControlError("InvalidRequestException", message)


def parse_files(files: Any) -> list[StreamFile]:
    """CreateStream's / UpdateStream's `files`: 1..50, file ids 0..255 and unique."""
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise invalid(f"files must list 1..{MAX_FILES} stream files")
    out: list[StreamFile] = []
    for item in files:
        file_id = item.get("fileId") if isinstance(item, Mapping) else None
        location = item.get("s3Location") if isinstance(item, Mapping) else None
        if isinstance(file_id, bool) or not isinstance(file_id, int):
            raise invalid("every stream file needs an integer fileId")
        if not 0 <= file_id <= MAX_FILE_ID:
            raise invalid(f"fileId {file_id} is not in 0..{MAX_FILE_ID}")
        if any(f.file_id == file_id for f in out):
            raise invalid(f"fileId {file_id} is listed twice")
        if not isinstance(location, Mapping):
            raise invalid(f"file {file_id} needs an s3Location")
        bucket, key, version = location.get("bucket"), location.get("key"), location.get("version")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise invalid(f"file {file_id}: s3Location needs a bucket and a key")
        if version is not None and not isinstance(version, str):
            raise invalid(f"file {file_id}: s3Location.version must be a string")
        out.append(StreamFile(file_id, bucket, key, version))
    return out


def _check_description(description: str | None) -> None:
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise invalid(f"description is longer than {MAX_DESCRIPTION} characters")


def _check_role(role_arn: Any) -> str:
    if not isinstance(role_arn, str) or not 20 <= len(role_arn) <= 2048:
        raise invalid("roleArn (20..2048 characters) is required")
    return role_arn


class StreamService:
    """The account's streams (thread-safe; one lock, copies out)."""

    def __init__(
        self,
        clock: Clock,
        objects: ObjectStore,
        *,
        region: str,
        account_id: str,
        store: StateStore | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self.clock = clock
        self.objects = objects
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.region = region
        self.account_id = account_id
        self._store = store
        self._lock = threading.RLock()
        self._streams: dict[str, Stream] = {}

    def arn(self, stream_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:stream/{stream_id}"

    def load(self, records: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for record in records:
                stream = Stream.from_json(record)
                self._streams[stream.stream_id] = stream

    def _save(self, stream_id: str, stream: Stream | None) -> None:
        if self._store is not None:
            value = None if stream is None else stream.to_json()
            self._store.save(records={("stream", stream_id): value})

    def _etags(self, files: Sequence[StreamFile]) -> dict[int, str]:
        etags: dict[int, str] = {}
        for item in files:
            info = self.objects.stat(item.bucket, item.key)
            if info is None:
                raise ControlError(
                    "ResourceNotFoundException",
                    f"file {item.file_id}: no S3 object s3://{item.bucket}/{item.key}",
                )
            etags[item.file_id] = info.etag
        return etags

    def _stream(self, stream_id: str) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ControlError("ResourceNotFoundException", f"Stream {stream_id} not found")
        return stream

    # -- control plane ----------------------------------------------------------------------------
    def create(
        self,
        stream_id: str,
        files: Sequence[StreamFile],
        role_arn: str,
        description: str | None = None,
    ) -> Stream:
        if not is_stream_id(stream_id):
            raise invalid(f"streamId {stream_id!r} must match [a-zA-Z0-9_-]+ (1..128)")
        _check_description(description)
        _check_role(role_arn)
        etags = self._etags(files)
        with self._lock:
            if stream_id in self._streams:
                raise ControlError(
                    "ResourceAlreadyExistsException", f"Stream {stream_id} already exists"
                )
            now = self.clock.now()
            stream = Stream(stream_id, description, list(files), role_arn, now, now, 1, etags)
            self._streams[stream_id] = stream
            self._save(stream_id, stream)
            return copy.deepcopy(stream)

    def describe(self, stream_id: str) -> Stream:
        with self._lock:
            return copy.deepcopy(self._stream(stream_id))

    def list_streams(self, ascending: bool = False) -> list[Stream]:
        with self._lock:
            streams = sorted(self._streams.values(), key=lambda s: (s.created_at, s.stream_id))
            if not ascending:
                streams.reverse()
            return [copy.deepcopy(s) for s in streams]

    def update(
        self,
        stream_id: str,
        *,
        files: Sequence[StreamFile] | None = None,
        role_arn: str | None = None,
        description: str | None = None,
    ) -> Stream:
        """UpdateStream: a new version; the files' objects are looked at again."""
        _check_description(description)
        if role_arn is not None:
            _check_role(role_arn)
        with self._lock:
            stream = self._stream(stream_id)
            new_files = list(files) if files is not None else stream.files
            etags = self._etags(new_files)
            if stream.version >= MAX_STREAM_VERSION:
                raise ControlError("LimitExceededException", "the stream version is at 65535")
            stream.files = new_files
            stream.etags = etags
            if role_arn is not None:
                stream.role_arn = role_arn
            if description is not None:
                stream.description = description
            stream.version += 1
            stream.updated_at = self.clock.now()
            self._save(stream_id, stream)
            return copy.deepcopy(stream)

    def delete(self, stream_id: str) -> None:
        with self._lock:
            self._stream(stream_id)
            del self._streams[stream_id]
            self._save(stream_id, None)

    # -- data plane (MQTT) ------------------------------------------------------------------------
    def _device_stream(self, stream_id: str) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamError("ResourceNotFound", f"stream {stream_id} not found")
        return stream

    def _file_size(self, stream: Stream, item: StreamFile) -> int:
        info = self.objects.stat(item.bucket, item.key)
        if info is None:
            raise StreamError(
                "ResourceNotFound", f"file {item.file_id} of stream {stream.stream_id} not found"
            )
        if info.etag != stream.etags.get(item.file_id):
            raise StreamError(
                "ETagMismatch",
                f"file {item.file_id}: the S3 object changed since the stream was last updated",
            )
        return info.size

    def device_description(self, stream_id: str) -> dict[str, Any]:
        """DescribeStream over MQTT: `s` version, `d` description, `r` files (`f` id, `z`
        size)."""
        with self._lock:
            stream = copy.deepcopy(self._device_stream(stream_id))
        files = [{"f": f.file_id, "z": self._file_size(stream, f)} for f in stream.files]
        body: dict[str, Any] = {"s": stream.version}
        if stream.description:
            body["d"] = stream.description
        body["r"] = files
        return body

    def blocks(self, stream_id: str, request: Mapping[str, Any]) -> list[Block]:
        """GetStream over MQTT (see the module docstring); `request` has the abbreviated keys,
        `b` already decoded to bytes."""
        file_id = _required(request, "f", 0, MAX_FILE_ID, "InvalidRequest")
        size = _required(request, "l", MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, "BlockSizeOutOfBounds")
        offset = _integer(request, "o", 0, MAX_OFFSET, "OffsetOutOfBounds") or 0
        count = _integer(request, "n", 0, MAX_BLOCKS, "BlockCountLimitExceeded") or 0
        version = request.get("s")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise StreamError("InvalidRequest", "s (the stream version) must be an integer")
        bitmap = _bitmap(request.get("b"))
        with self._lock:
            stream = copy.deepcopy(self._device_stream(stream_id))
        if version is not None and version != stream.version:
            raise StreamError(
                "VersionMismatch",
                f"stream {stream_id} is at version {stream.version}, not {version}",
            )
        item = stream.file(file_id)
        if item is None:
            raise StreamError("ResourceNotFound", f"stream {stream_id} has no file {file_id}")
        total = self._file_size(stream, item)
        in_file = -(-total // size)
        per_request = MAX_BLOCK_SIZE // size
        limit = min(count or per_request, per_request)
        if bitmap is None:
            wanted: Iterable[int] = range(offset, min(offset + (count or per_request), in_file))
        else:
            wanted = _marked(bitmap, offset)
        ids = _first_blocks(wanted, in_file, limit)
        if not ids:
            raise StreamError(
                "ResourceNotFound",
                f"no block of file {file_id} ({total} bytes, {in_file} blocks of {size}) "
                "was requested",
            )
        out = []
        for block in ids:
            data = self.objects.read(item.bucket, item.key, block * size, size)
            if data is None:
                raise StreamError("ResourceNotFound", f"file {file_id} is gone")
            out.append(Block(file_id, block, data))
        return out


def _bitmap(value: Any) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        raise StreamError("InvalidRequest", "b (the block bitmap) is not a bitmap")
    if value is not None and len(value) >= MAX_BITMAP_BYTES:
        raise StreamError(
            "BlockBitmapLimitExceeded",
            f"the bitmap has {len(value)} bytes; it must be less than {MAX_BITMAP_BYTES}",
        )
    return value


def _marked(bitmap: bytes, offset: int) -> Iterable[int]:
    """The blocks a bitmap asks for, from `offset` on (bit 0 of byte 0 first)."""
    return (
        offset + index * 8 + bit
        for index, byte in enumerate(bitmap)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    )


def _first_blocks(wanted: Iterable[int], in_file: int, limit: int) -> list[int]:
    """The first `limit` wanted blocks that the file has."""
    ids: list[int] = []
    for block in wanted:
        if block >= in_file:
            break
        ids.append(block)
        if len(ids) == limit:
            break
    return ids


def _required(request: Mapping[str, Any], name: str, low: int, high: int, code: str) -> int:
    value = _integer(request, name, low, high, code)
    if value is None:
        raise StreamError("InvalidRequest", f"{name} is required")
    return value


def _integer(request: Mapping[str, Any], name: str, low: int, high: int, code: str) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StreamError("InvalidRequest", f"{name} must be an integer")
    if not low <= value <= high:
        raise StreamError(code, f"{name} = {value} is not in {low}..{high}")
    return value


def client_token(request: Mapping[str, Any]) -> str | None:
    """`c`, checked: at most 64 bytes (InvalidRequest, not echoed)."""
    token = request.get("c")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode("utf-8")) > MAX_CLIENT_TOKEN:
        raise StreamError("InvalidRequest", "c (the client token) is invalid", echo_token=False)
    return token
