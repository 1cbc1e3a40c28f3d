"""What to do with an execution the device already has a record of, when the service offers it
(again): after a crash, a stop, a reboot, or simply on the next look for work.

A pure function of the record, the current boot id and the limits: no I/O, no clock, so every
state a crash can leave behind is tested directly (tests/test_lifecycle.py), and a new state of
the lifecycle gets its meaning here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Final

from jobs_agent.datamodel import model
from jobs_agent.engine.lifecycle import (
    AWAITING_REBOOT,
    DECIDED,
    DEFERRED,
    RECEIVED,
    REPORTED,
    RUNNING,
    STARTED,
)
from jobs_agent.engine.store import ExecutionRecord
from jobs_agent.vocabulary import JobExecutionStatus
from jobs_agent_handlers.api import point_of_no_return

SUSPENDED = "suspended"
"""The note of a RUNNING record whose resumable handler was stopped on purpose (not a crash)."""
RESTARTED_MID_STEP = "agent restarted while the step was running"
NO_REBOOT = "reboot was requested but the device did not reboot (boot id unchanged)"
ENDED_BY_SERVICE = "stopped on the device after the service ended it; not run again"


@model
class Limits:
    """The bounds recovery applies to executions an earlier agent left unfinished."""

    max_agent_restarts: int
    """A resumable job whose agent restarted more often than this is FAILED (boot-loop guard)."""


@model
class Run:
    """Run the handler: from the start, or continuing an earlier run of it."""

    resumed: bool = False
    rebooted: bool = False
    """Continuing after a reboot the job asked for (the boot id changed)."""
    restarts: int | None = None
    """The agent-restart count to record before continuing (None: unchanged)."""
    confirm_reboot_step: int | None = None
    """A Device Client reboot step to run again, which confirms the reboot on its second run."""
    stop_leftovers: bool = False
    """Stop what an earlier agent's handler left running first (it ran without us)."""


@model
class Fail:
    """Decide FAILED with `reason` and run nothing."""

    reason: str
    stop_leftovers: bool = False


@model
class Resend:
    """The outcome is decided and waits in the outbox: send it."""


@model
class Settle:
    """Closed here, yet offered by the service: decide `status` again, never run it again."""

    status: JobExecutionStatus
    details: Mapping[str, str] = field(default_factory=dict)


@model
class Wait:
    """The execution is deferred: wait again (until `until`, or for consent), never run the
    step now. A restart or a reboot changes nothing: the resume time is absolute."""

    kind: str
    until: float | None
    reason: str


Action = Run | Fail | Resend | Settle | Wait

FROM_THE_START: Final = Run()
"""A record no handler ran for: run it from the start. One instance (the models are frozen),
not one a job (issue 18)."""


def recover(record: ExecutionRecord, boot_id: str | None, limits: Limits) -> Action:
    """What to do with `record`'s execution now; `boot_id` is this boot's (None: unreadable)."""
    state = record.state
    if state in (RECEIVED, STARTED):
        return FROM_THE_START
    if state is RUNNING:
        return _after_running(record, boot_id, limits)
    if state is AWAITING_REBOOT:
        if record.boot_id is not None and boot_id == record.boot_id:
            if record.resumable and point_of_no_return(record.checkpoint):
                return Run(resumed=True)  # the handler decides what the missed reboot means
            return Fail(NO_REBOOT)
        return Run(resumed=True, rebooted=True)
    if state is DEFERRED:
        deferral = record.deferral
        if deferral is None:  # cannot happen: the store writes both together
            return Fail("deferred without a record of why", stop_leftovers=True)
        return Wait(deferral.kind, deferral.until, deferral.reason)
    if state is DECIDED:
        return Resend()
    if state is REPORTED and record.outcome_status is not None:
        return Settle(record.outcome_status, record.outcome_details or {})
    return Settle(JobExecutionStatus.FAILED, {"reason": ENDED_BY_SERVICE})


def _after_running(record: ExecutionRecord, boot_id: str | None, limits: Limits) -> Action:
    """The agent stopped (or died) while the handler ran; it may still be running."""
    from jobs_agent.dispatch.devicec import interrupted_reboot_step  # only after a crash

    interrupted = interrupted_reboot_step(record.checkpoint)
    if interrupted is not None and boot_id is not None and boot_id != interrupted[1]:
        # The device went down while a step that reboots it the Device Client's way ran: this
        # is the boot it asked for, and the step runs again to confirm it.
        return Run(
            resumed=True, rebooted=True, confirm_reboot_step=interrupted[0], stop_leftovers=True
        )
    if not record.resumable:
        return Fail(RESTARTED_MID_STEP, stop_leftovers=True)
    restarts = record.restarts + (0 if record.note == SUSPENDED else 1)
    if restarts > limits.max_agent_restarts:
        return Fail(
            f"agent restarted {restarts} times while running this job (boot-loop guard)",
            stop_leftovers=True,
        )
    return Run(resumed=True, restarts=restarts, stop_leftovers=True)
