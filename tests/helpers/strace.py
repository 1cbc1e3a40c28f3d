"""strace attached to a running agent: system calls counted on every thread of it.

Deterministic counts (fsyncs, mkdirs per job) where timings would move with the machine's load.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import wait_until


@contextlib.asynccontextmanager
async def strace_attached(pid: int, trace: Path, syscalls: str) -> AsyncIterator[None]:
    """Trace `syscalls` of `pid` and its threads into `trace` (`-y`: descriptors with their
    paths) for the body; skips the test where strace cannot attach."""
    messages = trace.with_name(f"{trace.name}.err")
    with messages.open("wb") as stderr:
        strace = subprocess.Popen(
            ["strace", "-f", "-y", "-e", f"trace={syscalls}", "-o", str(trace), "-p", str(pid)],
            stderr=stderr,
        )
    try:
        # "Process N attached (with M threads)": every thread is traced from then on.
        await wait_until(
            lambda: b"attached" in messages.read_bytes() or strace.poll() is not None,
            30,
            "strace",
        )
        if strace.poll() is not None:
            pytest.skip(f"strace cannot trace here: {messages.read_text(errors='replace')}")
        yield
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=10)
