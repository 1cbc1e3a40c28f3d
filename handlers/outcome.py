"""How a handler ends (`Outcome`, `JobFailed`, `JobRejected`, `JobDeferred`) and the checkpoint's
point of no return: the part of the handler API (`jobs_agent_handlers.api`, which gives these
names too) the engine uses from its start. The rest of the API, the protocols a handler and its
context follow, is for the first job and for type checks: the engine's modules that report,
recover and reboot import only this small module, so an idle agent holds none of the
protocols' classes (issue 18).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from jobs_agent.datamodel import model

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
