"""The lifecycle of one job execution on the device: its states, and the transitions between them
that may happen, each with why. The state store refuses any other (`TransitionRefused`), and
docs/architecture.md draws this table.

Mender's rule holds for every row: the new state is written durably before the side effect it
announces, so that a `kill -9` or a power cut at any line leaves a state from which the next
start knows what happened and what is left (`jobs_agent.engine.recovery` decides that).
`None` stands for "no record yet": the rows from it are the ways a record is created.

A new capability adds its states and rows here (a deferred execution waiting for its window, the
phases of an A/B update), then teaches `recovery` what each new state means after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ExecutionState(StrEnum):
    RECEIVED = "received"
    """Recorded before the service was asked to move it to IN_PROGRESS (namespaced jobs)."""
    STARTED = "started"
    """IN_PROGRESS on the service; no handler has run yet."""
    RUNNING = "running"
    """A handler was resolved and launched (or is about to be)."""
    AWAITING_REBOOT = "awaiting_reboot"
    """The handler succeeded and asked for a reboot; the boot id before it is recorded."""
    DECIDED = "decided"
    """The outcome is recorded and queued in the outbox, not yet accepted by the service."""
    REPORTED = "reported"
    """The service accepted the outcome (or never will: the record's note says why)."""
    CANCELLED = "cancelled"
    """The service ended the execution; nothing more is reported for it."""


S = ExecutionState

TRANSITIONS: Mapping[tuple[ExecutionState | None, ExecutionState], str] = {
    (None, S.RECEIVED): "a namespaced execution is recorded before it is moved to IN_PROGRESS",
    (None, S.STARTED): "start-next moved it to IN_PROGRESS (or the service says this device"
    " runs an execution it has no record of, which is then decided FAILED)",
    (S.RECEIVED, S.STARTED): "the service accepted IN_PROGRESS for the namespaced execution",
    (S.RECEIVED, S.CANCELLED): "the service ended it before it could be started",
    (S.STARTED, S.RUNNING): "a handler was resolved for the document and is launched",
    (S.STARTED, S.DECIDED): "the document was refused before anything ran",
    (S.STARTED, S.CANCELLED): "the service ended it before its handler started",
    (S.RUNNING, S.RUNNING): "a resumable handler is suspended for a stop, or resumed after one",
    (S.RUNNING, S.AWAITING_REBOOT): "the handler succeeded and asked for a reboot",
    (S.RUNNING, S.DECIDED): "the handler ended, or a crash mid-step is decided FAILED",
    (S.RUNNING, S.CANCELLED): "the service ended it while the handler ran",
    (S.AWAITING_REBOOT, S.RUNNING): "the boot id changed: the job continues after its reboot"
    " (or, past its point of no return, its handler decides about a reboot that did not happen)",
    (S.AWAITING_REBOOT, S.DECIDED): "the reboot did not happen (command failed, same boot id)",
    (S.AWAITING_REBOOT, S.CANCELLED): "the service ended it before the device rebooted",
    (S.DECIDED, S.REPORTED): "the service accepted the outcome, or refused it for good",
    (S.REPORTED, S.DECIDED): "the service offers it again: the recorded outcome is sent again",
    (S.CANCELLED, S.DECIDED): "the service offers it again after ending it: FAILED, never rerun",
}
"""(from, to) -> why. Every transition the device may make; the store refuses any other."""

ACTIVE_STATES: tuple[ExecutionState, ...] = (
    S.RECEIVED,
    S.STARTED,
    S.RUNNING,
    S.AWAITING_REBOOT,
)
"""Taken by this device and not finished: what start-up reconciles with the service."""

FINISHED_STATES: tuple[ExecutionState, ...] = (S.REPORTED, S.CANCELLED)
"""Nothing is left to do or send: what the store may forget after a while."""
