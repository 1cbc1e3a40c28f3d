"""`download-file` from an AWS IoT stream (MQTT-based file delivery) instead of a URL.

For devices that reach AWS IoT over MQTT but cannot reach S3 over HTTPS: the file comes in
blocks over the agent's own MQTT connection (`jobs_agent.streams`), through the same partial
file and sidecar rules as an HTTP download (`partfile`):

* the blocks are written by descriptor, at their offsets, into `PATH.part` (created at the
  file's full size); the sidecar `PATH.part.json` names the stream id, file id, stream version,
  file size, block size and expected sha256, and carries a bitmap of the blocks on disk. It is
  rewritten about once a second, after an fsync of the `.part`, so it never lists a block that
  is not durably there;
* after a restart (the handler is resumable) only the blocks missing from that bitmap are asked
  for, and only when every field matches: a stream updated since (a new version) or another
  document starts over from nothing;
* a stream updated during the download answers `VersionMismatch`: what was fetched is thrown
  away and the download starts over at the new version (at most `MAX_RESTARTS` times);
* the file appears at PATH only complete and, when a sha256 is given, verified.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from jobs_agent.aio import wait_event
from jobs_agent.datamodel import model
from jobs_agent.streams import protocol
from jobs_agent.streams.client import StreamsClient
from jobs_agent.streams.errors import StreamsError, VersionMismatch
from jobs_agent.streams.protocol import Format, StreamDescription
from jobs_agent_handlers import partfile
from jobs_agent_handlers.api import (
    JobContext,
    JobFailed,
    JobRejected,
    Logger,
    MqttLink,
    SharesMqttLink,
)

DEFAULT_BLOCK_SIZE = 16 * 1024
"""Small enough for JSON's doubled size (hexadecimal) to stay far below AWS IoT's 128 KB
message limit; a larger file gets larger blocks (GetStream's offsets reach block 98304)."""
CHECKPOINT_SECONDS = 1.0
REQUEST_TIMEOUT = 30.0
"""How long one request may go unanswered before it is asked again (the plugin passes the
agent's `jobs.request_timeout_seconds`)."""
STALL_SECONDS = 120.0
"""How long the download may go without a new block while the link is up (at least four
request timeouts) before it fails."""
CANCEL_WITHIN = 1.0
"""A cancelled download has stopped touching the file and the network within this long."""
MAX_RESTARTS = 3
_SIDECAR_KIND = "stream"

Progress = Callable[[float | None, str], None]


@model
class StreamSource:
    """The document's `stream`: which file of which stream, in which format and block size."""

    stream_id: str
    file_id: int
    block_size: int | None = None
    fmt: Format = Format.JSON

    @classmethod
    def from_document(cls, value: Any) -> StreamSource:
        """Raises `JobRejected` naming the offending field."""
        if not isinstance(value, Mapping):
            raise JobRejected('stream: expected an object {"streamId": ..., "fileId": ...}')
        stream_id = value.get("streamId")
        if not isinstance(stream_id, str) or not protocol.is_valid_stream_id(stream_id):
            raise JobRejected(
                f"stream.streamId: expected 1 to 128 of [a-zA-Z0-9_-], got {stream_id!r:.80}"
            )
        file_id = value.get("fileId")
        if isinstance(file_id, bool) or not isinstance(file_id, int):
            raise JobRejected(f"stream.fileId: expected an integer, got {file_id!r:.40}")
        if not 0 <= file_id <= protocol.MAX_FILE_ID:
            raise JobRejected(f"stream.fileId: expected 0 to {protocol.MAX_FILE_ID}, got {file_id}")
        block_size = value.get("blockSize")
        low, high = protocol.MIN_BLOCK_SIZE, protocol.MAX_BLOCK_SIZE
        if block_size is not None and (
            isinstance(block_size, bool)
            or not isinstance(block_size, int)
            or not low <= block_size <= high
        ):
            raise JobRejected(f"stream.blockSize: expected {low} to {high}, got {block_size!r:.40}")
        fmt = value.get("format", "json")
        if fmt not in ("json", "cbor"):
            raise JobRejected(f'stream.format: expected "json" or "cbor", got {fmt!r:.40}')
        if fmt == "cbor" and not protocol.cbor_available():
            raise JobRejected(
                'stream.format "cbor" needs the cbor2 library on this device; "json" does not'
            )
        extra = sorted(set(value) - {"streamId", "fileId", "blockSize", "format"})
        if extra:
            raise JobRejected(f"stream: unknown field {extra[0]!r:.40}")
        return cls(stream_id, file_id, block_size, Format(fmt))


def choose_block_size(size: int, requested: int | None) -> int:
    """The block size to fetch `size` bytes with: the document's, or the default doubled until
    every block has an offset GetStream accepts. Raises `JobFailed`."""

    def reachable(block_size: int) -> bool:
        return protocol.block_count(size, block_size) - 1 <= protocol.MAX_OFFSET

    if requested is not None:
        if not reachable(requested):
            raise JobFailed(
                f"stream.blockSize {requested} is too small for {size} bytes: GetStream reaches"
                f" block {protocol.MAX_OFFSET} at most"
            )
        return requested
    block_size = DEFAULT_BLOCK_SIZE
    while not reachable(block_size) and block_size < protocol.MAX_BLOCK_SIZE:
        block_size *= 2
    if not reachable(block_size):
        raise JobFailed(f"a file of {size} bytes is too large for MQTT-based file delivery")
    return block_size


class _Blocks:
    """The blocks on disk: a bitmap, block k in bit k % 8 of byte k // 8."""

    def __init__(self, count: int, bitmap: bytes | None = None) -> None:
        self.count = count
        self.bitmap = bytearray(bitmap if bitmap is not None else (count + 7) // 8)
        self.done = sum(1 for k in range(count) if self.has(k))

    def has(self, block: int) -> bool:
        return bool(self.bitmap[block >> 3] >> (block & 7) & 1)

    def add(self, block: int) -> None:
        if not self.has(block):
            self.bitmap[block >> 3] |= 1 << (block & 7)
            self.done += 1

    def missing(self) -> list[int]:
        return [k for k in range(self.count) if not self.has(k)]


class StreamDownload:
    """One stream download (see the module docstring); `run()` returns the file's size."""

    def __init__(
        self,
        link: MqttLink,
        thing_name: str,
        source: StreamSource,
        target: partfile.Target,
        progress: Progress,
        log: Logger,
    ) -> None:
        self.link = link
        self.thing_name = thing_name
        self.source = source
        self.target = target
        self.progress = progress
        self.log = log
        self.client: StreamsClient | None = None
        self.request_timeout = REQUEST_TIMEOUT
        self._dir_fd = -1

    async def run(self) -> int:
        """Download, verify, put in place. Raises `JobFailed`."""
        target = self.target
        source = self.source
        self._dir_fd = partfile.open_target_directory(target.path.parent)
        view = self.link.view()  # this download's own share of the agent's MQTT connection
        try:
            client = StreamsClient(
                view,
                self.thing_name,
                source.stream_id,
                fmt=source.fmt,
                request_timeout=self.request_timeout,
                stall_timeout=max(STALL_SECONDS, 4 * self.request_timeout),
            )
            self.client = client
            async with client:
                for _restart in range(MAX_RESTARTS + 1):
                    try:
                        return await self._once(client)
                    except VersionMismatch as exc:
                        partfile.discard(self._dir_fd, target.part, target.sidecar)
                        self.log.info("stream updated during the download; starting over")
                        self.progress(None, f"the stream changed ({exc.message}); starting over")
            raise JobFailed(
                f"stream {source.stream_id} changed {MAX_RESTARTS + 1} times during the download"
            )
        except StreamsError as exc:
            raise JobFailed(str(exc)) from None
        except OSError as exc:
            raise JobFailed(f"download to {target.path}: {exc.strerror or exc}") from None
        finally:
            os.close(self._dir_fd)
            self._dir_fd = -1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WITHIN):
                    await view.disconnect()

    async def _once(self, client: StreamsClient) -> int:
        """One pass at the stream's current version."""
        target = self.target
        source = self.source
        description = await client.describe()
        size = self._file_size(description)
        block_size = choose_block_size(size, source.block_size)
        identity = {
            "streamId": source.stream_id,
            "fileId": source.file_id,
            "streamVersion": description.version,
            "size": size,
            "blockSize": block_size,
        }
        count = protocol.block_count(size, block_size)
        part_fd, blocks = self._open_part(identity, count, size)
        try:
            missing = blocks.missing()
            if blocks.done:
                self.log.info("stream download resumed", have=blocks.done, missing=len(missing))
            self._report(blocks)
            writer = _PartWriter(self, part_fd, identity, blocks, block_size)
            async with writer.checkpoints():
                await client.fetch(
                    source.file_id,
                    size=size,
                    block_size=block_size,
                    version=description.version,
                    missing=missing,
                    on_block=writer.write,
                )
            await _blocking(lambda _stop: os.fsync(part_fd))
        finally:
            os.close(part_fd)
        await _blocking(self._verify)
        partfile.complete(self._dir_fd, target.part, target.path.name, target.sidecar)
        return size

    def _file_size(self, description: StreamDescription) -> int:
        source = self.source
        item = description.file(source.file_id)
        if item is None:
            listed = ", ".join(str(f.file_id) for f in description.files) or "none"
            raise JobFailed(
                f"stream {source.stream_id} (version {description.version}) has no file"
                f" {source.file_id}; its files: {listed}"
            )
        if item.size > self.target.max_bytes:
            raise JobFailed(
                f"the file is {item.size} bytes, more than maxBytes {self.target.max_bytes}"
            )
        return item.size

    def _report(self, blocks: _Blocks) -> None:
        percent = 100.0 * blocks.done / blocks.count if blocks.count else 100.0
        self.progress(percent, f"{blocks.done} of {blocks.count} blocks")

    # -- the partial file and its sidecar -----------------------------------------------------
    def _open_part(self, identity: Mapping[str, Any], count: int, size: int) -> tuple[int, _Blocks]:
        """The `.part` to write into and the blocks already in it: this download's own, or a
        new one at the file's size."""
        target = self.target
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        blocks = self._resume_point(identity, count, size)
        if blocks is not None:
            with contextlib.suppress(OSError):
                fd = os.open(target.part, flags, dir_fd=self._dir_fd)
                if partfile.is_own_file(fd) and os.fstat(fd).st_size == size:
                    return fd, blocks
                os.close(fd)
        partfile.discard(self._dir_fd, target.part, target.sidecar)
        fd = os.open(target.part, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._dir_fd)
        try:
            os.ftruncate(fd, size)
            blocks = _Blocks(count)
            self.save(fd, identity, bytes(blocks.bitmap))
        except BaseException:
            os.close(fd)
            raise
        return fd, blocks

    def _resume_point(self, identity: Mapping[str, Any], count: int, size: int) -> _Blocks | None:
        target = self.target
        sidecar = partfile.read_sidecar(self._dir_fd, target.sidecar)
        if (
            sidecar is None
            or sidecar.get("version") != partfile.SIDECAR_VERSION
            or sidecar.get(_SIDECAR_KIND) != dict(identity)
            or sidecar.get("sha256") != target.sha256
            or partfile.own_size(self._dir_fd, target.part) != size
        ):
            return None  # another stream, file, version or document: start over
        encoded = sidecar.get("blocks")
        try:
            bitmap = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            return None
        return _Blocks(count, bitmap) if len(bitmap) == (count + 7) // 8 else None

    def save(self, part_fd: int, identity: Mapping[str, Any], bitmap: bytes) -> None:
        """Make the `.part` durable, then record which blocks it holds (blocking)."""
        os.fsync(part_fd)
        data = {
            "version": partfile.SIDECAR_VERSION,
            _SIDECAR_KIND: dict(identity),
            "sha256": self.target.sha256,
            "blocks": base64.b64encode(bitmap).decode("ascii"),
        }
        partfile.write_sidecar(self._dir_fd, self.target.sidecar, data)

    def _verify(self, stop: threading.Event) -> None:
        expected = self.target.sha256
        if expected is None:
            return

        def check() -> None:
            if stop.is_set():
                raise _Stopped

        actual = partfile.sha256_of(self._dir_fd, self.target.part, check)
        if actual != expected:
            partfile.discard(self._dir_fd, self.target.part, self.target.sidecar)
            raise JobFailed(
                f"sha256 mismatch for stream {self.source.stream_id} file"
                f" {self.source.file_id}: expected {expected}, got {actual}"
            )


class _PartWriter:
    """Writes blocks into the `.part` as they come, and checkpoints the sidecar in a thread
    about once a second (and once more at the end, whatever the end was)."""

    def __init__(
        self,
        download: StreamDownload,
        part_fd: int,
        identity: Mapping[str, Any],
        blocks: _Blocks,
        block_size: int,
    ) -> None:
        self.download = download
        self.part_fd = part_fd
        self.identity = identity
        self.blocks = blocks
        self.block_size = block_size
        self._dirty = False
        self._percent = -1

    def write(self, block: int, data: bytes) -> None:
        offset = block * self.block_size
        view = memoryview(data)
        while view:
            written = os.pwrite(self.part_fd, view, offset)
            view, offset = view[written:], offset + written
        self.blocks.add(block)
        self._dirty = True
        percent = 100 * self.blocks.done // self.blocks.count
        if percent != self._percent:
            self._percent = percent
            self.download._report(self.blocks)

    async def _checkpoint(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        snapshot = bytes(self.blocks.bitmap)
        try:
            await _blocking(lambda _stop: self.download.save(self.part_fd, self.identity, snapshot))
        except OSError as exc:  # only the resume point is lost; the download goes on
            self.download.log.warning("stream checkpoint failed", error=str(exc))

    @contextlib.asynccontextmanager
    async def checkpoints(self) -> Any:
        stop = asyncio.Event()

        async def periodically() -> None:
            while not await wait_event(stop, CHECKPOINT_SECONDS):
                await self._checkpoint()

        task = asyncio.create_task(periodically(), name="stream-checkpoints")
        try:
            yield
        finally:
            stop.set()
            # Not cancelled: a save under way finishes, and the last one records everything
            # written, so that the next attempt resumes from it.
            await asyncio.shield(task)
            await self._checkpoint()


class _Stopped(Exception):
    """A blocking step was asked to stop (its task was cancelled)."""


T = TypeVar("T")


async def _blocking(work: Callable[[threading.Event], T]) -> T:
    """Run `work(stop)` in a thread. It uses descriptors that the calling task closes when it
    ends, so a cancellation sets `stop` and waits for the thread to end before it goes on."""
    stop = threading.Event()
    future = asyncio.ensure_future(asyncio.to_thread(work, stop))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await future
        raise


async def run_stream_download(ctx: JobContext, request_timeout: float) -> Mapping[str, Any]:
    """The `download-file` plugin for a document with a `stream` (not a `url`)."""
    doc = ctx.document
    if doc.get("url") is not None:
        raise JobRejected("url and stream name two sources of the file; give one")
    source = StreamSource.from_document(doc.get("stream"))
    target = partfile.Target.from_values(doc.get("path"), doc.get("sha256"), doc.get("maxBytes"))
    link = ctx.mqtt_link if isinstance(ctx, SharesMqttLink) else None
    if link is None:
        raise JobFailed(
            "a stream download needs the agent's MQTT connection, which this run does not have"
        )
    job = StreamDownload(link, ctx.thing_name, source, target, ctx.progress, ctx.log)
    job.request_timeout = request_timeout
    task = asyncio.ensure_future(job.run())
    cancelled = asyncio.ensure_future(ctx.cancelled.wait())
    try:
        await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop(task)
        raise
    finally:
        cancelled.cancel()
    if not task.done():
        await _stop(task)
        raise JobFailed("cancelled")
    size = task.result()
    client = job.client
    details = {"path": str(target.path), "bytes": str(size)}
    if client is not None:
        details["streamRequests"] = str(client.stats.requests)
    return details


async def _stop(task: asyncio.Future[int]) -> None:
    """Cancel the download and give it its second to let go of the file."""
    task.cancel()
    with contextlib.suppress(BaseException):
        async with asyncio.timeout(CANCEL_WITHIN):
            await asyncio.shield(task)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the cancellation is the outcome now
