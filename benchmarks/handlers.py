"""Python plugins the benchmarked agent process loads (config `handlers: {name: "module:Class"}`).

`BENCH_STAMP_FILE` names a file where `Stamp` appends `jobId time.time()` the moment the engine
starts it: the device end of the "job created -> handler started" latency, on the same clock as
the emulator in the harness process.
"""

from __future__ import annotations

import os
import time
from typing import Any

_stamp_fd: int | None = None


def _fd() -> int:
    global _stamp_fd
    if _stamp_fd is None:
        path = os.environ["BENCH_STAMP_FILE"]
        _stamp_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _stamp_fd


class Stamp:
    """Records when it was started, then succeeds."""

    async def run(self, ctx: Any) -> None:
        os.write(_fd(), f"{ctx.job_id} {time.time():.6f}\n".encode())


class Noop:
    """Succeeds at once: what is left is the agent's own cost per job."""

    async def run(self, ctx: Any) -> None:
        return None


class ProgressStorm:
    """Calls `progress()` as fast as it can; the engine must keep only the latest and rate-limit.

    The count comes from the document (`calls`), the last call says 100 %.
    """

    async def run(self, ctx: Any) -> dict[str, str]:
        calls = int(ctx.document.get("calls", 100_000))
        started = time.process_time()
        for i in range(1, calls + 1):
            ctx.progress(percent=i * 100 / calls, message=f"step {i}")
        spent = time.process_time() - started
        return {"calls": str(calls), "handlerCpuSeconds": f"{spent:.3f}"}
