"""`jobs-agent run --dry-run`: look at the pending jobs with the real config, change nothing.

Only read operations are ever sent (GetPendingJobExecutions, DescribeJobExecution): never
start-next and never an update, so every execution stays as it is (status and versionNumber).
Each document goes through the same resolution as a real run (routing, signature, validation)
and its plan is printed: steps, command lines, users, timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from jobs_agent.config import AgentConfig
from jobs_agent.transport import Transport, TransportError

log = structlog.get_logger("jobs_agent.dryrun")


class DryRun:
    def __init__(self, config: AgentConfig, client: Any, dispatcher: Any, out: TextIO) -> None:
        self.config = config
        self.client = client
        self.dispatcher = dispatcher
        self.out = out
        self.seen: set[tuple[str, str, int]] = set()

    def _print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def plan_pending(self) -> int:
        """Plan every pending execution not planned yet; returns how many were new."""
        from jobs_agent.jobs.models import JobExecution

        found: list[tuple[str, JobExecution]] = []
        pending = await self.client.get_pending()
        for summary in [*pending.in_progress, *pending.queued]:
            if ("", summary.job_id, summary.execution_number or 0) in self.seen:
                continue
            execution = await self.client.describe(
                summary.job_id, execution_number=summary.execution_number
            )
            if execution is not None:
                found.append(("", execution))
        # Over MQTT a namespace's queue can only be seen through its head ($next).
        for namespace in self.config.jobs.namespaces:
            execution = await self.client.describe("$next", namespace=namespace)
            if execution is not None:
                found.append((namespace, execution))
        new = 0
        for namespace, execution in found:
            key = (namespace, execution.job_id, execution.execution_number or 0)
            if key in self.seen:
                continue
            self.seen.add(key)
            new += 1
            self._print_plan(namespace, execution)
        return new

    def _print_plan(self, namespace: str, execution: Any) -> None:
        from jobs_agent_handlers.api import JobRejected

        where = f" namespace {namespace}" if namespace else ""
        self._print(
            f"job {execution.job_id} execution {execution.execution_number}{where}: "
            f"{execution.status} (version {execution.version_number})"
        )
        document = execution.job_document
        if not isinstance(document, Mapping):
            self._print("  would be REJECTED: the execution has no job document")
            return
        try:
            handler = self.dispatcher.resolve(document, job_id=execution.job_id)
            steps = self.dispatcher.plan(document, job_id=execution.job_id)
        except JobRejected as exc:
            self._print(f"  would be REJECTED: {exc.reason}")
            return
        self._print(f"  handler: {handler.name}" + (" (resumable)" if handler.resumable else ""))
        for index, step in enumerate(steps, 1):
            self._print(f"  step {index}: {step.describe()}")
        self._print()


async def run_dry(
    config: AgentConfig,
    *,
    watch: bool = False,
    transport: Transport | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    from jobs_agent.device import dispatcher, jobs_client
    from jobs_agent.jobs.errors import JobsError

    out = out or sys.stdout
    if transport is None:
        from jobs_agent.transport.factory import create_transport

        if config.connection.transport == "local":
            print("jobs-agent: --dry-run needs a real connection (not transport: local)", file=out)
            return 2
        transport = create_transport(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await transport.connect(timeout=config.jobs.request_timeout_seconds)
        client = jobs_client(config, transport)
        await client.start()
        dry = DryRun(config, client, dispatcher(config), out)
        count = await dry.plan_pending()
        if count == 0:
            dry._print("no pending job executions")
        if watch:
            dry._print("watching for new jobs (Ctrl-C to stop)")
            await _watch(dry, client, stop)
        await client.close()
        return 0
    except (TransportError, JobsError) as exc:
        print(f"jobs-agent: dry run failed: {exc}", file=out)
        return 1
    finally:
        with contextlib.suppress(Exception):
            await transport.disconnect()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


async def _watch(dry: DryRun, client: Any, stop: asyncio.Event) -> None:
    from jobs_agent.jobs.errors import JobsError

    events = client.events()
    stopper = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            next_event = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({next_event, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                next_event.cancel()
                break
            try:
                await dry.plan_pending()
            except JobsError as exc:
                log.warning("dry run: cannot list jobs", error=str(exc))
    finally:
        stopper.cancel()
