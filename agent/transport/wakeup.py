"""A loop's wake-up from a native thread: an eventfd the loop watches, written by the thread.

The awscrt backend hands what the CRT's threads call to its asyncio loop in batches, one
wake-up per batch (`AwscrtTransport._call`). `call_soon_threadsafe` made each wake-up a `Handle`
with a copy of the calling thread's context, a byte sent on the loop's self-pipe, and on the
loop two reads of it (the byte, then `EAGAIN`, raised and caught): three system calls a hop,
two hops a plugin job (issue 18). An eventfd the loop watches (`add_reader`, its reader made
once) takes one write and one read, and nothing is built per hop.

Linux only (`os.eventfd`); elsewhere, or on a loop that cannot watch descriptors, `watch`
leaves the wake-up closed and `write` says so, and the caller uses `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


class EventfdWakeup:
    """One eventfd, watched by at most one loop at a time."""

    def __init__(self) -> None:
        self.fd: int | None = None
        """Open from `watch` until `close`."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop watching `fd`."""

    def watch(self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[], None]) -> None:
        """Have `loop` call `on_wake` after each write (those that come before it got round to
        the last one ride on it): the eventfd is made on the first call, and moved to `loop`
        if another loop watched it."""
        fd = self.fd
        if fd is not None:
            if self.loop is loop:
                return
            self._unwatch(fd)
        elif hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            return
        try:
            loop.add_reader(fd, self._readable, fd, on_wake)
        except (NotImplementedError, RuntimeError):  # a loop that cannot watch descriptors
            self.fd = self.loop = None
            os.close(fd)
            return
        self.fd, self.loop = fd, loop

    def write(self) -> bool:
        """Wake the watching loop (any thread); False where there is no eventfd to write to."""
        fd = self.fd
        if fd is None:
            return False
        try:
            os.eventfd_write(fd, 1)
        except OSError:  # never seen: the caller closes it only once no thread writes
            return False
        return True

    def close(self) -> None:
        """Close the eventfd: only once no thread can write to its number any more."""
        fd, self.fd = self.fd, None
        if fd is not None:
            self._unwatch(fd)
            os.close(fd)

    @staticmethod
    def _readable(fd: int, on_wake: Callable[[], None]) -> None:
        """Read first, so that a write made after this read wakes the loop again."""
        try:
            os.eventfd_read(fd)
        except BlockingIOError:  # nothing written after all (a spurious readiness)
            return
        on_wake()

    def _unwatch(self, fd: int) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():  # a closed loop has forgotten it
            loop.remove_reader(fd)


__all__ = ["EventfdWakeup"]
