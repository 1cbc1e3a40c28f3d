"""`hello`: greets `name` from the job document, counting to `count` with progress.

Shows the whole plugin contract: read the document, report progress, checkpoint so a restart
continues where it stopped (`resumable = True`), honour cancellation, and end with a mapping of
statusDetails (SUCCEEDED), `JobRejected` (bad document) or `JobFailed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from jobs_agent_handlers.api import JobContext, JobFailed, JobRejected


class HelloHandler:
    name = "hello"
    resumable = True

    async def run(self, ctx: JobContext) -> Mapping[str, Any]:
        name = ctx.document.get("name")
        if not isinstance(name, str) or not name:
            raise JobRejected('"name": expected a non-empty string')
        count = ctx.document.get("count", 3)
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise JobRejected('"count": expected an integer from 1 to 100')
        start = ctx.checkpoint_data.get("done", 0) if isinstance(ctx.checkpoint_data, dict) else 0
        for done in range(start, count):
            if ctx.cancelled.is_set():
                raise JobFailed("cancelled")
            ctx.progress(100.0 * done / count, f"greeting {done + 1} of {count}")
            await asyncio.sleep(0)
            await ctx.checkpoint({"done": done + 1})
        if name == "fail":
            raise JobFailed("asked to fail", greeted=str(count))
        return {"greeting": f"hello, {name}", "count": str(count)}
