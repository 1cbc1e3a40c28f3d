"""Reading a running step: its output streams, its progress pipe (the script protocol's JSON
lines on fd 3), and its exit, without waiting on anything a leftover grandchild may hold open.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from jobs_agent.dispatch.output import OutputLog, Tail

PROGRESS_LINE_MAX = 64 * 1024
_READ_CHUNK = 64 * 1024
_REAP_POLL_SECONDS = 0.01

MessageCallback = Callable[[Any], Awaitable[None]]
BadLineCallback = Callable[[str], None]


async def wait_exit(process: asyncio.subprocess.Process) -> int:
    """The exit status as soon as the process exits.

    `Process.wait()` also waits for the output pipes to close, which a leftover grandchild can
    keep open forever; here the exit itself is what counts (a pidfd where the kernel has them).
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    # The child watcher reaps the process and sets the status a moment after it exits.
    while process.returncode is None:
        await asyncio.sleep(_REAP_POLL_SECONDS)
    return process.returncode


async def drain(
    stream: asyncio.StreamReader,
    sinks: list[Tail],
    log: OutputLog | None,
    echo: Callable[[bytes], None] | None = None,
) -> None:
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            return
        for sink in sinks:
            sink.feed(chunk)
        if log is not None:
            log.write(chunk)
        if echo is not None:
            echo(chunk)


async def read_messages(
    fd: int, on_message: MessageCallback | None, on_bad_line: BadLineCallback | None = None
) -> None:
    """Read JSON lines from the progress pipe; malformed or oversized lines are skipped (and
    reported to `on_bad_line`: a handler author must not lose progress without a word)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PROGRESS_LINE_MAX)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)

    def bad(problem: str) -> None:
        if on_bad_line is not None:
            on_bad_line(problem)

    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                bad(f"a progress line longer than {PROGRESS_LINE_MAX} bytes was ignored")
                continue
            if not line:
                return
            if on_message is None or not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                excerpt = line.decode("utf-8", "replace").strip()[:120]
                bad(f"a progress line is not JSON and was ignored: {excerpt!r}")
                continue
            await on_message(message)
    finally:
        transport.close()
