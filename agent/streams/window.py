"""The blocks of one GetStream fetch: which are missing, which are asked for by which request,
and which are to be asked for next, in ascending order (`StreamsClient.fetch` drives it)."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import field

from jobs_agent.datamodel import model
from jobs_agent.streams import protocol
from jobs_agent.streams.protocol import Format

BITMAP_SPAN = 8192
"""The widest run of blocks one CBOR request covers with its bitmap (a 1 KiB bitmap)."""


@model(frozen=False, slots=True)
class Get:
    """One GetStream request outstanding: the blocks it still owes, and when it is given up."""

    blocks: set[int]
    deadline: float


@model(frozen=False, slots=True)
class Fetch:
    """One file's blocks: still to ask for (`queue`), asked for (`outstanding`), missing."""

    file_id: int
    size: int
    block_size: int
    fmt: Format
    missing: set[int]
    queue: collections.deque[int]
    outstanding: dict[str, Get] = field(default_factory=dict)

    def next_blocks(self) -> list[int]:
        """The blocks of the next request: consecutive in JSON, within a bitmap span in CBOR."""
        limit = protocol.blocks_per_request(self.block_size)
        blocks: list[int] = []
        while self.queue and len(blocks) < limit:
            block = self.queue[0]
            if block not in self.missing:
                self.queue.popleft()  # arrived meanwhile, from an earlier request
                continue
            if blocks and (
                block - blocks[0] >= BITMAP_SPAN
                if self.fmt is Format.CBOR
                else block != blocks[-1] + 1
            ):
                break
            blocks.append(self.queue.popleft())
        return blocks

    def give_back(self, blocks: Iterable[int]) -> None:
        """Blocks to ask for again, first."""
        self.queue.extendleft(sorted((b for b in blocks if b in self.missing), reverse=True))

    def expire(self, now: float) -> int:
        expired = [t for t, get in self.outstanding.items() if get.deadline <= now]
        for token in expired:
            self.give_back(self.outstanding.pop(token).blocks)
        return len(expired)

    def deadlines(self) -> list[float]:
        return [get.deadline for get in self.outstanding.values()]

    def void(self) -> int:
        count = len(self.outstanding)
        for get in self.outstanding.values():
            self.give_back(get.blocks)
        self.outstanding.clear()
        return count

    def received(self, block: int) -> None:
        self.missing.discard(block)
        for token, get in list(self.outstanding.items()):
            get.blocks.discard(block)
            if not get.blocks:
                del self.outstanding[token]
