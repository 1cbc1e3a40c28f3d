"""The lifecycle of one job execution on the device: its states, and the transitions between them
that may happen, each with why. The state store refuses any other (`TransitionRefused`), and
docs/architecture.md draws this table.

Mender's rule holds for every row: the new state is written durably before the side effect it
announces, so that a `kill -9` or a power cut at any line leaves a state from which the next
start knows what happened and what is left (`jobs_agent.engine.recovery` decides that).
`None` stands for "no record yet": the rows from it are the ways a record is created.

Two writes keep the rule without an fsync of their own (issue 18: a job costs 2 fsyncs, not 4):
- (none) -> started, when start-next took the execution (`Store.record_taken`): written first in
  the store's next transaction, the durable started -> running (or started -> decided) one, in
  which it is checked; the handler is launched only after it, and the start-next marker stays
  until then. A kill -9 or a power cut before it loses the record: the restarted agent finds the
  execution in progress, no record, and the marker: never run, it runs (or, if the marker was
  lost as well, it is decided FAILED as a lost record: never run twice).
- decided -> reported: written first in the store's next transaction (the next job's durable
  started -> running one), or on its own before the engine waits for work (`Store.settle`); only
  for an execution the store decided itself, so the write is one the table allows. A kill -9
  before it, or a power cut before the next fsync, loses it: the record is decided again with
  its outbox row; the outcome is sent again, the service refuses it as terminal with the same
  status, and it is closed.

A new capability adds its states and rows here (`deferred`: waiting for a time, a maintenance
window or consent; the phases of an A/B update), then teaches `recovery` what each new state
means after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


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
    DEFERRED = "deferred"
    """IN_PROGRESS on the service, waiting (its kind: a handler's "not now", a maintenance
    window, a person's consent) until `deferred_until` or a decision; nothing runs meanwhile,
    unless `jobs.run_others_while_deferred` lets other executions run (`engine/turns.py`)."""


RECEIVED: Final = ExecutionState.RECEIVED
STARTED: Final = ExecutionState.STARTED
RUNNING: Final = ExecutionState.RUNNING
AWAITING_REBOOT: Final = ExecutionState.AWAITING_REBOOT
DECIDED: Final = ExecutionState.DECIDED
REPORTED: Final = ExecutionState.REPORTED
DEFERRED: Final = ExecutionState.DEFERRED
"""States the per-job paths compare with and write, read as module globals: on Python 3.11 a
member read off its class goes through the hook of `EnumType.__getattr__` (about 900
instructions a read, which `sys.setprofile` does not show; issue 18)."""

_STATE_OF: dict[str, ExecutionState] = {state.value: state for state in ExecutionState}


def execution_state(value: str) -> ExecutionState:
    """`ExecutionState(value)` without the enum's two Python calls (a record read per job;
    issue 18); a value that names no state raises ValueError as it does."""
    try:
        return _STATE_OF[value]
    except (KeyError, TypeError):  # the enum's own error for it
        return ExecutionState(value)


S = ExecutionState

TRANSITIONS: Mapping[tuple[ExecutionState | None, ExecutionState], str] = {
    (None, S.RECEIVED): "a namespaced execution, or one taken by name while another waits"
    " deferred, is recorded before it is moved to IN_PROGRESS",
    (None, S.STARTED): "start-next moved it to IN_PROGRESS (or the service says this device"
    " runs an execution it has no record of, which is then decided FAILED)",
    (S.RECEIVED, S.STARTED): "the service accepted IN_PROGRESS for the namespaced execution",
    (S.RECEIVED, S.CANCELLED): "the service ended it before it could be started",
    (S.STARTED, S.RUNNING): "a handler was resolved for the document and is launched",
    (
        S.STARTED,
        S.DECIDED,
    ): "the document was refused, or what it installs is installed already, before anything ran",
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
    (S.STARTED, S.DEFERRED): "before anything ran: consent is required or the window is closed",
    (S.RUNNING, S.DEFERRED): 'the handler said "not now" (exit 92, JobDeferred), or the next'
    " step would outlast its maintenance window",
    (S.DEFERRED, S.DEFERRED): "the wait is announced again after a restart or a reboot, or"
    " consent accepted gives way to a closed window",
    (S.DEFERRED, S.RUNNING): "the time came (or consent was accepted): the handler runs again",
    (S.DEFERRED, S.DECIDED): "consent rejected (REJECTED), or the deferral limit reached (FAILED)",
    (S.DEFERRED, S.CANCELLED): "the service ended the execution while it waited",
}
"""(from, to) -> why. Every transition the device may make; the store refuses any other."""

ACTIVE_STATES: tuple[ExecutionState, ...] = (
    S.RECEIVED,
    S.STARTED,
    S.RUNNING,
    S.AWAITING_REBOOT,
    S.DEFERRED,
)
"""Taken by this device and not finished: what start-up reconciles with the service."""

FINISHED_STATES: tuple[ExecutionState, ...] = (S.REPORTED, S.CANCELLED)
"""Nothing is left to do or send: what the store may forget after a while."""
