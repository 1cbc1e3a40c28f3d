"""The resumable handler of the chaos runs, loaded by the agent process (not by the driver).

The driver copies this file as `chaos_plugin.py` into a private directory it puts on the agent's
PYTHONPATH and names it in the agent's config (`handlers: {chaos-resumable:
"chaos_plugin:ResumableChunks"}`). Scripts cannot be resumable (a Device Client step may have
half-happened), so a Python plugin is the only way to exercise the engine's resume path.

Every chunk is logged to the side-effect log (`CHAOS_SIDE_EFFECT_LOG`) as `begin`, then checkpointed
durably, then logged as `commit`. Because `commit` is written only after the checkpoint returned,
a later `resume` from a chunk at or before a committed one proves the agent lost a checkpoint:
the checker counts that as a duplicated side effect. Line format (one `write` with O_APPEND, so
lines from several processes never interleave):

    jobId executionNumber chunk event pid ppid time
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

from jobs_agent_handlers.api import JobContext, JobFailed

LOG_ENV = "CHAOS_SIDE_EFFECT_LOG"


def _record(ctx: JobContext, chunk: int, event: str) -> None:
    line = (
        f"{ctx.job_id} {ctx.execution_number} {chunk} {event} {os.getpid()} {os.getppid()}"
        f" {time.time():.6f}\n"
    )
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class ResumableChunks:
    """`{"operation": "chaos-resumable", "chunks": N, "chunkSeconds": S}`: N checkpointed chunks."""

    resumable = True

    async def run(self, ctx: JobContext) -> Mapping[str, Any]:
        chunks = int(ctx.document.get("chunks", 5))
        seconds = float(ctx.document.get("chunkSeconds", 0.2))
        data = ctx.checkpoint_data
        start = int(data.get("next", 0)) if isinstance(data, Mapping) else 0
        if ctx.resumed:
            _record(ctx, start, "resume")
        for chunk in range(start, chunks):
            _record(ctx, chunk, "begin")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.cancelled.wait(), timeout=seconds)
            if ctx.cancelled.is_set():
                _record(ctx, chunk, "cancelled")
                raise JobFailed("cancelled")
            await ctx.checkpoint({"next": chunk + 1})
            _record(ctx, chunk, "commit")
            ctx.progress(percent=100.0 * (chunk + 1) / chunks, message=f"chunk {chunk + 1}")
        _record(ctx, chunks, "end")
        return {"chunks": str(chunks)}
