"""The contract between the engine and a handler: what a handler gets and how it ends.

This module is the public plugin API. A Python plugin is any class with a `run(ctx)` coroutine;
it is found through the entry-point group `jobs_agent.handlers` or named in the config
(`handlers: {name: "package.module:Class"}`). `run` chooses the outcome:

* return `None` or a mapping of extra statusDetails -> SUCCEEDED;
* raise `JobFailed(reason, **details)` -> FAILED (the job's retry config may run it again);
* raise `JobRejected(reason, **details)` -> REJECTED (the document is wrong for this device);
* raise `JobDeferred(reason, until=..., after=..., window=...)` -> not now: the execution stays
  IN_PROGRESS (statusDetails say deferred, why, until when) and `run` is called again then,
  with `ctx.resumed` true and its checkpoint (docs/handlers.md, "Not now");
* raise anything else -> FAILED with the exception's message; the agent never crashes for it.

A handler that sets `resumable = True` promises that running it again after an agent restart,
with `ctx.resumed` true and `ctx.checkpoint_data` as last saved, is safe. A handler that is not
resumable is never run twice: after a crash mid-run the job is reported FAILED instead.

The engine's context also lends the agent's MQTT connection (`SharesMqttLink`) and fetches the
job document again for fresh presigned URLs (`RefreshesDocument`): optional capabilities, so
that contexts written before them (tests, `jobs-agent exec`) still are contexts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from jobs_agent_handlers.outcome import POINT_OF_NO_RETURN as POINT_OF_NO_RETURN
from jobs_agent_handlers.outcome import JobDeferred as JobDeferred
from jobs_agent_handlers.outcome import JobFailed as JobFailed
from jobs_agent_handlers.outcome import JobRejected as JobRejected
from jobs_agent_handlers.outcome import Outcome as Outcome
from jobs_agent_handlers.outcome import TerminalStatus as TerminalStatus
from jobs_agent_handlers.outcome import point_of_no_return as point_of_no_return

if TYPE_CHECKING:
    from jobs_agent.transport import Transport


class Logger(Protocol):
    """The part of a structlog bound logger handlers may use."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


@runtime_checkable
class JobContext(Protocol):
    """What the engine gives a running handler.

    `progress` never blocks and never fails: the engine keeps only the latest state and sends
    it at a bounded rate. `checkpoint` is durable when it returns (it is written to the agent's
    database), so a resumable handler can continue from it after a crash or a reboot.
    """

    job_id: str
    execution_number: int
    thing_name: str
    namespace: str | None
    document: Mapping[str, Any]
    checkpoint_data: Any
    resumed: bool
    """True when this run continues an earlier one (after an agent restart or a reboot)."""
    rebooted: bool
    """True when the run continues after a reboot the job asked for and the boot id changed."""
    cancelled: asyncio.Event
    log: Logger
    scratch_dir: Path
    """A private directory for this execution, removed after the outcome is reported."""
    state_dir: Path
    """A private directory for this job that survives restarts until the job ends."""

    def progress(
        self, percent: float | None = None, message: str | None = None, **details: Any
    ) -> None: ...

    async def checkpoint(self, data: Any) -> None: ...

    def request_reboot(self) -> None:
        """Ask for a reboot once `run` returns; `run` is called again after the boot."""

    def extend_step_timeout(self, minutes: int) -> None:
        """Ask the service for a longer step timeout (1 to 10080 minutes) for the next step."""


class MqttLink(Protocol):
    """The agent's one MQTT connection, as lent to a Python plugin (`SharesMqttLink`).

    `view()` is the plugin's own `Transport` on it: it delivers only the messages of the view's
    own subscriptions and tells of every loss and resumption of the link; its `unsubscribe` and
    `disconnect` never take a topic the Jobs client (or another view) uses, and it cannot close
    the link. A plugin makes a view per use and disconnects it when done
    (`jobs_agent.transport.shared`)."""

    def view(self) -> Transport: ...


@runtime_checkable
class SharesMqttLink(Protocol):
    """A `JobContext` that lends the handler the agent's MQTT connection, for a protocol of
    its own beside Jobs (MQTT-based file delivery). The engine's context does; one without the
    cloud (`jobs-agent exec`) does not, so check: `isinstance(ctx, SharesMqttLink)`."""

    mqtt_link: MqttLink | None


@runtime_checkable
class RefreshesDocument(Protocol):
    """A `JobContext` that can fetch its job document again, with newly signed presigned URLs
    (a download whose URL expired, or that resumes later). The engine's context does, through
    its own Jobs client: the handler gets the document, never the link or a credential.

    `refresh_document()` returns the new document (also set as `ctx.document`); it raises
    `JobFailed` with the reason when the service cannot give it, when it differs from the
    execution's document beyond its presigned URLs, when it fails the document checks (the
    signature with `jobs.require_signature`), or when the run has used its
    `jobs.max_document_refreshes`. Let that propagate: it is the job's outcome."""

    async def refresh_document(self) -> Mapping[str, Any]: ...


@runtime_checkable
class Handler(Protocol):
    """A resolved handler ready to run one execution."""

    name: str
    resumable: bool

    async def run(self, ctx: JobContext) -> Mapping[str, Any] | Outcome | None: ...
