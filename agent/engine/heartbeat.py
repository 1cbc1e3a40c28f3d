"""What a running agent says about itself, for `jobs-agent status`: a small JSON file.

`state_dir/agent.json` holds the daemon's pid, when it started, whether it is connected (and
since when) and the time of its last heartbeat. It is rewritten atomically (write, fsync,
rename) when the connection changes and at most every `HEARTBEAT_SECONDS` otherwise: little
enough for flash storage, often enough for an operator to see that the agent is alive. Whether
it runs at all is the instance lock's to say (`instance_lock.holder_pid`); this file says how.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model

HEARTBEAT_NAME = "agent.json"
HEARTBEAT_SECONDS = 30.0
_POLL_SECONDS = 5.0
"""How often the connection state is looked at: a change shows in `status` within this long."""


@model
class Heartbeat:
    """The heartbeat file's content: `jobs-agent status` tells from it whether the agent lives."""

    pid: int
    started_at: float
    heartbeat_at: float
    connected: bool
    connection_changed_at: float
    transport: str
    endpoint: str
    activity: str
    """The engine's one-line status (`running job-1#1 40%`, `idle; 3 jobs done`)."""


def write_heartbeat(state_dir: Path, beat: Heartbeat) -> None:
    path = state_dir / HEARTBEAT_NAME
    temporary = path.with_name(f".{HEARTBEAT_NAME}.{os.getpid()}")
    data = json.dumps(asdict(beat), sort_keys=True).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_heartbeat(state_dir: Path) -> Heartbeat | None:
    try:
        data: Any = json.loads((state_dir / HEARTBEAT_NAME).read_text(encoding="utf-8"))
        return Heartbeat(**data)
    except (OSError, ValueError, TypeError):
        return None


async def keep_heartbeat(
    state_dir: Path,
    *,
    transport: str,
    endpoint: str,
    is_connected: Callable[[], bool],
    activity: Callable[[], str],
    interval: float = HEARTBEAT_SECONDS,
) -> None:
    """Write the heartbeat until cancelled: on every connection change, else every `interval`."""
    started = time.time()
    connected = is_connected()
    changed_at = started
    last_written = 0.0
    while True:
        now = time.time()
        current = is_connected()
        if current != connected:
            connected, changed_at = current, now
            last_written = 0.0
        if now - last_written >= interval:
            beat = Heartbeat(
                pid=os.getpid(),
                started_at=started,
                heartbeat_at=now,
                connected=connected,
                connection_changed_at=changed_at,
                transport=transport,
                endpoint=endpoint,
                activity=activity(),
            )
            with contextlib.suppress(OSError):  # a full disk must not stop the agent
                await asyncio.to_thread(write_heartbeat, state_dir, beat)
            last_written = now
        await asyncio.sleep(min(_POLL_SECONDS, interval))
