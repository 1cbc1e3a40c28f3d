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
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from jobs_agent.datamodel import model

if TYPE_CHECKING:
    from jobs_agent.transport import Transport

TerminalStatus = Literal["SUCCEEDED", "FAILED", "REJECTED"]

POINT_OF_NO_RETURN = "pointOfNoReturn"
"""A checkpoint key: a resumable handler whose checkpoint (a mapping) holds a reason under it
is past its point of no return (an A/B update that has switched slots). The engine then carries
it to its end even when the service ends the execution meanwhile: it does not stop the handler,
reboots when asked, and runs it again after the boot, reporting the outcome once (which the
service refuses, and the record keeps). Where the engine would fail it on its own (a reboot
that did not happen), it runs the handler again instead, which decides; and the plugin time
limit no longer stops it, so it must bound its own steps (docs/handlers.md)."""


def point_of_no_return(checkpoint: Any) -> str | None:
    """The reason a checkpoint gives for being past its point of no return, or None."""
    if isinstance(checkpoint, Mapping):
        reason = checkpoint.get(POINT_OF_NO_RETURN)
        if isinstance(reason, str) and reason:
            return reason
    return None


class JobFailed(Exception):
    """End the job FAILED with `reason` (and optional extra statusDetails)."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class JobRejected(Exception):
    """End the job REJECTED: the document is invalid or not meant for this device."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class JobDeferred(Exception):
    """Not now: ask again at `until` (epoch seconds), or `after` seconds, or (`window`) at the
    next maintenance window; none of them: after `jobs.defer_default_seconds`. `reason` goes to
    statusDetails. Not an outcome: the execution waits IN_PROGRESS and the handler runs again."""

    def __init__(
        self,
        reason: str,
        *,
        until: float | None = None,
        after: float | None = None,
        window: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until
        self.after = after
        self.window = window


@model(slots=True)
class Outcome:
    """What a job ended with, before sanitising to the statusDetails limits."""

    status: TerminalStatus
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def succeeded(cls, **details: Any) -> Outcome:
        return cls("SUCCEEDED", details)

    @classmethod
    def failed(cls, reason: str, **details: Any) -> Outcome:
        return cls("FAILED", {"reason": reason, **details})

    @classmethod
    def rejected(cls, reason: str, **details: Any) -> Outcome:
        return cls("REJECTED", {"reason": reason, **details})


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
