"""Streams (MQTT-based file delivery) in tests: a file put behind a stream of the emulator, and a
gate on the emulator's GetStream that records what it served and can stop answering.

The gate wraps the real `StreamService.blocks` of the emulator under test (every check and
rejection is still the emulator's); it only decides whether the blocks found go out. Dropping a
request unanswered is what a lost message looks like to the device.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.streams import Block, StreamService, parse_files

ROLE = "arn:aws:iam::123456789012:role/StreamRole"
BUCKET = "firmware"


def create_stream(service: JobsService, stream_id: str, files: Mapping[int, bytes]) -> None:
    """A stream whose file `i` is `files[i]` (one S3 object each)."""
    for file_id, content in files.items():
        service.put_s3_object(BUCKET, f"{stream_id}-{file_id}.bin", content)
    service.streams.create(
        stream_id,
        parse_files(
            [
                {"fileId": i, "s3Location": {"bucket": BUCKET, "key": f"{stream_id}-{i}.bin"}}
                for i in files
            ]
        ),
        ROLE,
    )


def replace_file(service: JobsService, stream_id: str, file_id: int, content: bytes) -> None:
    """New content for a file of a stream, and UpdateStream (the stream's next version)."""
    service.put_s3_object(BUCKET, f"{stream_id}-{file_id}.bin", content)
    service.streams.update(stream_id)


class Gate:
    """Serves GetStream while open; past `limit` blocks it drops requests unanswered."""

    def __init__(self, streams: StreamService, limit: int | None = None) -> None:
        self.streams = streams
        self.limit = limit
        self.served: list[int] = []
        self.requests = 0
        self.dropped = 0
        self.after_block: Callable[[int], None] | None = None
        """Called (on the emulator's thread) after each block served, with how many so far."""
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._original = streams.blocks
        streams.blocks = self._blocks  # type: ignore[method-assign]

    def _blocks(self, stream_id: str, request: Mapping[str, Any]) -> list[Block]:
        blocks = self._original(stream_id, request)
        with self._lock:
            self.requests += 1
            if self.limit is not None:
                room = max(self.limit - len(self.served), 0)
                if room == 0:
                    self.dropped += 1
                    self._loop.call_soon_threadsafe(self._changed.set)
                    return []
                blocks = blocks[:room]
        out = []
        for block in blocks:
            out.append(block)
            with self._lock:
                self.served.append(block.block_id)
                count = len(self.served)
            if self.after_block is not None:
                self.after_block(count)
        self._loop.call_soon_threadsafe(self._changed.set)
        return out

    async def wait(self, predicate: Callable[[Gate], bool], timeout: float = 10.0) -> None:
        """Wait (on the test's loop) until `predicate(gate)` holds after a request."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def open(self) -> None:
        with self._lock:
            self.limit = None

    def restart_count(self) -> None:
        """Forget what was served so far (to count what a later run asks for)."""
        with self._lock:
            self.served.clear()
            self.requests = 0
            self.dropped = 0


def sidecar_blocks(path: Path) -> set[int]:
    """The blocks a stream download's sidecar (`PATH.part.json`) records as on disk."""
    data = json.loads(path.with_name(path.name + ".part.json").read_text())
    bitmap = base64.b64decode(data["blocks"])
    return {i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1}
