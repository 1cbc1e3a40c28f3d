"""A `JobContext` without the cloud: for `jobs-agent exec` and for tests of handlers.

It keeps what the engine would keep (checkpoints, the reboot request, progress) in memory and
prints progress to a stream, so a document can be tried on a device exactly as a job would run
it, through the same Dispatcher and sandbox.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from jobs_agent.dispatch.cancellation import Cancellation
from jobs_agent_handlers.api import Logger


class LocalJobContext:
    def __init__(
        self,
        *,
        document: Mapping[str, Any],
        scratch_dir: Path,
        state_dir: Path,
        job_id: str = "local",
        execution_number: int = 1,
        thing_name: str = "local",
        namespace: str | None = None,
        out: TextIO | None = None,
        log: Logger | None = None,
    ) -> None:
        self.job_id = job_id
        self.execution_number = execution_number
        self.thing_name = thing_name
        self.namespace = namespace
        self.document = document
        self.checkpoint_data: Any = None
        self.resumed = False
        self.rebooted = False
        self.cancelled: asyncio.Event = Cancellation()
        self.log: Logger = log or structlog.get_logger("jobs-agent.exec").bind(job_id=job_id)
        self.scratch_dir = scratch_dir
        self.state_dir = state_dir
        self.reboot_requested = False
        self.progress_events: list[tuple[float | None, str | None, dict[str, Any]]] = []
        self.checkpoints: list[Any] = []
        self.step_timeout_requests: list[int] = []
        self._out = out

    def progress(
        self, percent: float | None = None, message: str | None = None, **details: Any
    ) -> None:
        self.progress_events.append((percent, message, dict(details)))
        if self._out is not None:
            shown = f"{percent:5.1f}%" if percent is not None else "     -"
            extra = " ".join(f"{k}={v}" for k, v in details.items())
            self._out.write(f"progress {shown} {message or ''} {extra}".rstrip() + "\n")
            self._out.flush()

    async def checkpoint(self, data: Any) -> None:
        saved = copy.deepcopy(data)
        self.checkpoints.append(saved)
        self.checkpoint_data = saved

    def request_reboot(self) -> None:
        self.reboot_requested = True

    def extend_step_timeout(self, minutes: int) -> None:
        self.step_timeout_requests.append(minutes)

    def after_reboot(self) -> None:
        """Prepare this context for the run that follows a (simulated) reboot."""
        self.reboot_requested = False
        self.resumed = True
        self.rebooted = True
