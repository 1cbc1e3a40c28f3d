"""Reading a running step: its output streams, its progress pipe (the script protocol's JSON
lines on fd 3), and its exit, without waiting on anything a leftover grandchild may hold open.

Each pipe is read on the event loop (one `os.read` per wake-up): no transport, protocol or
stream object per pipe and no thread, since a job's step costs the agent a few of these per run
(issue 18). The exit is learnt from a pidfd, the moment the kernel has it: no watcher thread per
child and no polling. Steps' descriptors are watched together (`StepPoll`): one epoll per event
loop, registered with the loop once, instead of a registration per descriptor (or per step).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

PROGRESS_LINE_MAX = 64 * 1024
_READ_CHUNK = 64 * 1024
_PAUSE_ABOVE = 2 * PROGRESS_LINE_MAX
"""Progress lines waiting for their callback past this many bytes: stop reading the pipe (the
handler then blocks on its next write) until they are handled."""
_REAP_POLL_SECONDS = 0.01

MessageCallback = Callable[[Any], Awaitable[None]]
BadLineCallback = Callable[[str], None]


class Readers(Protocol):
    """What watches a descriptor for reading: the event loop itself, or a step's `StepPoll`."""

    def add_reader(self, fd: int, callback: Callable[[], None], /) -> None: ...

    def remove_reader(self, fd: int, /) -> bool: ...


class StepPoll:
    """Steps' descriptors (their pipes' read ends, their pidfds) in an epoll of their own,
    whose one descriptor is what the event loop watches for all of them (`step_poll`: one per
    loop, kept for the next steps).

    Why: asyncio's `add_reader` and `remove_reader` cost about 26 k instructions each
    (a `Handle`, a `SelectorKey`, the selector's lookups and a `KeyError` raised and caught
    at each registration), and a step made four pairs; the EOFs and the exit, which come
    together, were four callbacks of the loop. Here a wake-up is one callback that dispatches
    what the epoll says is ready, in the order it says it, as the loop did. Level-triggered
    like the loop's: whatever a callback leaves unread wakes the loop again. The epoll is
    close-on-exec, so no step inherits it (the chain closes every descriptor it is not
    given; the forked path's exec drops close-on-exec ones). Every descriptor is unwatched
    before it is closed (`remove_reader`), so nothing a step ended stays in it.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = weakref.ref(loop)
        """Weak: the loop's own registration keeps this poll, never the other way round
        (`step_poll` keeps one per loop, for as long as the loop lives)."""
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def add_reader(self, fd: int, callback: Callable[[], None], /) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove_reader(self, fd: int, /) -> bool:
        """Stop watching `fd` (before it is closed: a copy of it in a child being forked for
        another step would keep it in the epoll after the close)."""
        if self._callbacks.pop(fd, None) is None:
            return False
        self._epoll.unregister(fd)
        return True

    def _ready(self) -> None:
        for fd, _events in self._epoll.poll(0):
            # A callback may have stopped watching a descriptor later in the same list.
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()

    def close(self) -> None:
        """Stop watching everything and close the epoll (idempotent)."""
        if not self._epoll.closed:
            loop = self._loop()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._callbacks.clear()


_polls: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StepPoll] = weakref.WeakKeyDictionary()
_latest: tuple[asyncio.AbstractEventLoop, StepPoll] | None = None
"""The loop the last step ran on and its poll: the usual ask, answered without the weak map."""


def step_poll(loop: asyncio.AbstractEventLoop) -> StepPoll:
    """The `StepPoll` of `loop` (the running one), made at its first step and kept: a poll of
    its own per step was an epoll made and closed and a loop registration added and removed,
    about 55 k instructions a script job (issue 18). One per loop (a process has one, but for
    tests), gone with its loop."""
    global _latest
    latest = _latest
    if latest is not None and latest[0] is loop:
        return latest[1]
    poll = _polls.get(loop)
    if poll is None:
        poll = _polls[loop] = StepPoll()
    _latest = (loop, poll)
    return poll


class PipeReader:
    """One pipe's read end, read on the event loop until end of file; then closed.

    `on_data` is called with every chunk as it arrives. `closed` is done at end of file (or
    after `close()`). Closed, it lets go of `on_data`: that is usually a bound method of the
    reader holding this pipe, and the cycle would keep the step's run, its sinks and its job's
    context alive until a collection of the cyclic collector (issue 18).
    """

    def __init__(
        self, fd: int, on_data: Callable[[bytes], None], readers: Readers | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._readers: Readers = self._loop if readers is None else readers
        self._fd = fd
        self._on_data = on_data
        self._reading = False
        self.closed: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self.resume()

    def resume(self) -> None:
        if not self._reading and self._fd >= 0:
            self._readers.add_reader(self._fd, self._readable)
            self._reading = True

    def pause(self) -> None:
        if self._reading:
            self._readers.remove_reader(self._fd)
            self._reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._on_data(data)

    def close(self) -> None:
        """Stop reading and close the descriptor (idempotent)."""
        self.pause()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._on_data = _ignore
        if not self.closed.done():
            self.closed.set_result(None)


def _ignore(_chunk: bytes) -> None:
    """`on_data` of a closed pipe: it reads nothing more."""


class OutputReader:
    """stdout or stderr: every chunk to the sinks (`feed`), the log and the echo."""

    def __init__(
        self, fd: int, sinks: list[Any], log: Any, echo: Any, readers: Readers | None = None
    ) -> None:
        self._sinks = sinks
        self._log = log
        self._echo = echo
        self.pipe = PipeReader(fd, self._data, readers)

    def _data(self, chunk: bytes) -> None:
        for sink in self._sinks:
            sink.feed(chunk)
        if self._log is not None:
            self._log.write(chunk)
        if self._echo is not None:
            self._echo(chunk)


class ProgressReader:
    """The progress pipe: JSON lines, each handed to `on_message` in order, one at a time (a
    checkpoint is saved before the next line is handled). Malformed or oversized lines are
    skipped and reported to `on_bad_line`: a handler author must not lose progress without a
    word. A step that never writes a line costs one reader and no task."""

    def __init__(
        self,
        fd: int,
        on_message: MessageCallback | None,
        on_bad_line: BadLineCallback | None,
        readers: Readers | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_bad_line = on_bad_line
        self._partial = bytearray()
        self._skipping = False
        """Inside a line that was too long: dropped up to its newline."""
        self._lines: deque[bytes] = deque()
        self._queued_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.pipe = PipeReader(fd, self._data, readers)

    def _bad(self, problem: str) -> None:
        if self._on_bad_line is not None:
            self._on_bad_line(problem)

    def _data(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._line(chunk[start:end])
            start = end + 1
        self._partial += chunk[start:]
        if len(self._partial) > PROGRESS_LINE_MAX:
            self._partial.clear()
            if not self._skipping:
                self._skipping = True
                self._bad(f"a progress line longer than {PROGRESS_LINE_MAX} bytes was ignored")

    def _line(self, tail: bytes) -> None:
        line = bytes(self._partial) + tail if self._partial else tail
        self._partial.clear()
        if self._skipping:
            self._skipping = False  # the end of the overlong line
            return
        if len(line) > PROGRESS_LINE_MAX:
            self._bad(f"a progress line longer than {PROGRESS_LINE_MAX} bytes was ignored")
            return
        if self._on_message is None or not line.strip():
            return
        self._lines.append(line)
        self._queued_bytes += len(line)
        if self._queued_bytes > _PAUSE_ABOVE:
            self.pipe.pause()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._handle_lines())
        else:
            assert self._wake is not None
            self._wake.set()

    async def _handle_lines(self) -> None:
        assert self._on_message is not None and self._wake is not None
        while True:
            while self._lines:
                line = self._lines.popleft()
                self._queued_bytes -= len(line)
                if self._queued_bytes <= _PAUSE_ABOVE and not self.pipe.closed.done():
                    self.pipe.resume()
                try:
                    message = json.loads(line)
                except ValueError:
                    excerpt = line.decode("utf-8", "replace").strip()[:120]
                    self._bad(f"a progress line is not JSON and was ignored: {excerpt!r}")
                    continue
                await self._on_message(message)
            if self.pipe.closed.done():
                return
            self._wake.clear()
            await self._wake.wait()

    async def finish(self, grace: float) -> None:
        """Handle what the pipe still has (end of file within `grace` seconds: a leftover
        grandchild may hold it open), then stop reading it. Usually the end of file came with
        the exit, in the same wake-up: then there is nothing to wait for (no timer, no task)."""
        if not self.pipe.closed.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.pipe.closed)
        self.pipe.close()
        if self._partial and not self._skipping:
            self._line(b"")  # a last line without its newline
        if self._task is None:
            return
        assert self._wake is not None
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        self.cancel()

    def cancel(self) -> None:
        self.pipe.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait_cancelled(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ReplyPipe:
    """The agent's end of a step's reply pipe (fd 4 in the step): one JSON line written per
    request the step made on its progress pipe (`{"refreshUrls": true}`), in order.

    Written on the event loop without blocking it: a line that does not fit in the pipe (a step
    that asks and never reads) waits for room with `add_writer`, and the progress pipe's next
    line waits with it; the step's time limit bounds that wait as any other. A step that closed
    its end gets nothing more (the lines are dropped, not raised: its exit status speaks).
    Unattached (no process yet, or already ended), `send` drops the line.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._room: asyncio.Future[None] | None = None

    def attach(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def send(self, message: Any) -> None:
        data = memoryview((json.dumps(message, separators=(",", ":")) + "\n").encode())
        loop = asyncio.get_running_loop()
        while data and self._fd >= 0:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                self._room = room = loop.create_future()
                loop.add_writer(self._fd, _settle_room, room)
                try:
                    await room
                finally:
                    self._room = None
                    if self._fd >= 0:
                        loop.remove_writer(self._fd)
                continue
            except OSError:  # EPIPE: the step closed its end
                return
            data = data[written:]

    def close(self) -> None:
        """The step has ended: close the agent's end; a line waiting for room is dropped."""
        if self._fd >= 0:
            if self._room is not None:
                asyncio.get_running_loop().remove_writer(self._fd)
                _settle_room(self._room)
            os.close(self._fd)
            self._fd = -1


def _settle_room(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


class ExitWatch:
    """The exit status of a started process, as soon as it exits (a pidfd readable on the loop;
    where the kernel has no pidfd, polled). `status` is done with the return code."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        woken: asyncio.Future[None] | None = None,
        readers: Readers | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._readers: Readers = self._loop if readers is None else readers
        self._process = process
        self.status: asyncio.Future[int] = self._loop.create_future()
        self._woken = woken
        """Completed with `status`, directly (not by a callback: no turn of the loop)."""
        self._pidfd = -1
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            self._poller = asyncio.create_task(self._poll())
            self._exited()  # it may have exited already
        else:
            # A pidfd is readable as soon as the process has exited, before it is reaped, and
            # so already now if it has: no `waitpid` is tried before then (issue 18).
            self._readers.add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        code = self._process.poll()
        if code is None or self.status.done():
            return
        self._stop_watching()
        self.status.set_result(code)
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def _poll(self) -> None:
        while not self.status.done():
            await asyncio.sleep(_REAP_POLL_SECONDS)
            self._exited()

    def _stop_watching(self) -> None:
        if self._pidfd >= 0:
            self._readers.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._poller is not None and asyncio.current_task() is not self._poller:
            self._poller.cancel()

    def close(self) -> None:
        self._stop_watching()
        if not self.status.done():
            self.status.cancel()
