"""The phases of one A/B update, the moves between them, and what a phase means on a new start.

The whole update runs inside one RUNNING execution (the lifecycle of agent/engine/lifecycle.py
does not change): the phase is the handler's own state, written durably into the execution's
checkpoint (`ctx.checkpoint`) *before* the side effect it announces, as the lifecycle's rows
are. `PhaseWriter` refuses any move that is not a row of `TRANSITIONS`.

Every run of the handler, the first one, one after a reboot and one after a `kill -9`, asks the
same pure function, `next_step(state, observed)`, what to do now, given the recorded phase and
what the device says at this moment (its boot id and the slot it booted from). So recovery is
not a separate code path: the normal flow is the same question asked after each phase, and
tests/test_system_update_phases.py asks it for every phase a crash can leave behind.

The point of no return is `activate`: until it is written nothing on the device has changed but
the inactive slot, and a cancellation simply stops; from it on the bootloader may boot the new
slot, and the update is carried to a commit or a rollback (docs/handlers.md, "system-update").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from enum import StrEnum
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent_handlers.api import POINT_OF_NO_RETURN


class Phase(StrEnum):
    DOWNLOAD = "download"
    """The bundle is being fetched into the job's state directory (resumable)."""
    INSTALL = "install"
    """The updater writes the bundle into the inactive slot; the boot order is untouched."""
    ACTIVATE = "activate"
    """The bootloader is being told to boot the new slot next, on trial: the switch."""
    REBOOT = "reboot"
    """The device reboots into the new slot; the boot id before it is recorded."""
    VERIFY = "verify"
    """Running the new slot: the health checks run until they pass or the deadline passes."""
    COMMIT = "commit"
    """The new slot is being marked good: the bootloader stops counting its tries."""
    ROLLBACK = "rollback"
    """The new slot is being marked bad, so that the next boot takes the old one."""
    ROLLBACK_REBOOT = "rollback_reboot"
    """The device reboots into the old slot; the boot id before it is recorded."""


P = Phase

TRANSITIONS: Mapping[tuple[Phase | None, Phase], str] = {
    (None, P.DOWNLOAD): "the job starts: the bundle is fetched first",
    (P.DOWNLOAD, P.INSTALL): "the bundle is complete and its sha256 matches the document's",
    (P.INSTALL, P.ACTIVATE): "the updater verified the bundle's signature and wrote the inactive"
    " slot, and no cancellation came: the switch begins",
    (P.ACTIVATE, P.REBOOT): "the bootloader boots the new slot next, on trial",
    (P.REBOOT, P.REBOOT): "a reboot is asked for (again: the device did not go down)",
    (P.REBOOT, P.ROLLBACK): "the device did not reboot into the new slot, asked twice",
    (P.ACTIVATE, P.ROLLBACK): "the activation failed: the new slot is given up before any boot",
    (P.REBOOT, P.VERIFY): "the boot id changed and the device runs the new slot",
    (P.VERIFY, P.COMMIT): "every health check passed on the new slot within the deadline",
    (P.VERIFY, P.ROLLBACK): "a health check failed, or did not pass within the deadline",
    (P.COMMIT, P.ROLLBACK): "the commit itself failed: the slot on trial is given up",
    (P.ROLLBACK, P.ROLLBACK_REBOOT): "the new slot is marked bad: the next boot takes the old one",
    (P.ROLLBACK_REBOOT, P.ROLLBACK_REBOOT): "a reboot into the old slot is asked for (again)",
}
"""(from, to) -> why. Every move between phases; `PhaseWriter` refuses any other. The last step
of each path (SUCCEEDED after `commit`, FAILED after the rollback's boot or after the
bootloader's own fallback) is the job's outcome, which the engine records."""

SWITCHED: frozenset[Phase] = frozenset(
    {P.ACTIVATE, P.REBOOT, P.VERIFY, P.COMMIT, P.ROLLBACK, P.ROLLBACK_REBOOT}
)
"""Past the point of no return: the update is carried to a commit or a rollback."""


class PhaseRefused(Exception):
    """A move that is not a row of `TRANSITIONS` (a bug, or a checkpoint from elsewhere)."""


@model
class UpdateState:
    """What the checkpoint keeps between runs (`to_checkpoint` / `from_checkpoint`)."""

    phase: Phase
    source: str = ""
    """The slot the device ran when the update began: the one a rollback returns to."""
    target: str = ""
    """The slot the bundle is installed into."""
    boot_id: str = ""
    """The boot id before a reboot this update asked for (`reboot`, `rollback_reboot`)."""
    reboots: int = 0
    """Reboots asked for in this phase and boot: one more than `MAX_REBOOT_REQUESTS` gives up."""
    verify_started: float | None = None
    """When the health checks began on the new slot (wall clock): the deadline counts from it,
    across agent restarts."""
    failed_phase: str = ""
    reason: str = ""
    """Why a rollback began, and in which phase: what the FAILED report says."""

    def to_checkpoint(self) -> dict[str, Any]:
        data: dict[str, Any] = {"systemUpdate": 1, "phase": str(self.phase)}
        if self.phase in SWITCHED:
            data[POINT_OF_NO_RETURN] = "the A/B update has begun its slot switch"
        for name in ("source", "target", "boot_id", "reboots", "failed_phase", "reason"):
            value = getattr(self, name)
            if value:
                data[name] = value
        if self.verify_started is not None:
            data["verify_started"] = self.verify_started
        return data

    @classmethod
    def from_checkpoint(cls, data: Any) -> UpdateState | None:
        """The recorded state; None when the checkpoint holds none (a first run)."""
        if not isinstance(data, Mapping) or data.get("systemUpdate") != 1:
            return None
        try:
            phase = Phase(data["phase"])
        except (KeyError, ValueError):
            return None
        started = data.get("verify_started")
        return cls(
            phase=phase,
            source=str(data.get("source", "")),
            target=str(data.get("target", "")),
            boot_id=str(data.get("boot_id", "")),
            reboots=int(data["reboots"]) if isinstance(data.get("reboots"), int) else 0,
            verify_started=float(started) if isinstance(started, int | float) else None,
            failed_phase=str(data.get("failed_phase", "")),
            reason=str(data.get("reason", "")),
        )

    def moved(self, phase: Phase, **changes: Any) -> UpdateState:
        """This state in `phase`; refused unless (self.phase, phase) is a row."""
        check_move(self.phase, phase)
        return replace(self, phase=phase, **changes)


def check_move(current: Phase | None, new: Phase) -> None:
    if (current, new) not in TRANSITIONS:
        shown = current.value if current is not None else "(start)"
        raise PhaseRefused(f"system update: no move from phase {shown} to {new.value}")


# -- what to do now --------------------------------------------------------------------------------
@model
class Observed:
    """What the device says now."""

    boot_id: str
    booted: str
    """The slot the running system was booted from."""
    now: float
    """Wall clock (seconds since the epoch), for the verify deadline."""


@model
class Step:
    """The one thing to do next. `kind` names it; the handler has one method per kind."""

    kind: str
    reason: str = ""


DOWNLOAD = "download"
INSTALL = "install"
ACTIVATE = "activate"
REBOOT = "reboot"
VERIFY = "verify"
COMMIT = "commit"
ROLLBACK = "rollback"
ROLLBACK_REBOOT = "rollback_reboot"
SUCCEEDED = "succeeded"
FELL_BACK = "fell_back"
"""FAILED: the bootloader, not the agent, went back to the old slot."""
ROLLED_BACK = "rolled_back"
"""FAILED: the agent's rollback is done; the device runs the old slot."""
STUCK = "stuck"
"""FAILED: the device is on neither the slot it should be on (the reason says which)."""

BOOTLOADER_FELL_BACK = "rolled back by the bootloader"
MAX_REBOOT_REQUESTS = 2
"""A reboot asked for this often without the boot id changing (the command failed, the agent
was restarted without a reboot) is given up: before the switch took, that is a rollback."""


def next_step(state: UpdateState | None, observed: Observed, verify_deadline: float) -> Step:
    """What an update in `state` does now; a pure function (tests/test_system_update_phases.py).

    Each phase means the same thing whether its run ended normally or was killed in it: the
    phase is written before its side effect, so the effect may or may not have happened, and
    every step is safe to do again (install into the inactive slot, activate, mark good or bad
    are idempotent; a download resumes).
    """
    if state is None or state.phase is P.DOWNLOAD:
        return Step(DOWNLOAD)
    phase = state.phase
    if phase is P.INSTALL:
        if observed.booted != state.source:
            return Step(STUCK, f"the device now runs slot {observed.booted}, not {state.source}")
        return Step(INSTALL)
    if phase is P.ACTIVATE:
        return Step(ACTIVATE)
    if phase is P.REBOOT:
        if observed.boot_id == state.boot_id:
            if state.reboots >= MAX_REBOOT_REQUESTS:
                return Step(
                    ROLLBACK,
                    f"the device did not reboot into slot {state.target}"
                    f" (asked {state.reboots} times, boot id unchanged)",
                )
            return Step(REBOOT)  # not asked for yet, or asked and the device did not go down
        if observed.booted == state.target:
            return Step(VERIFY)
        return Step(FELL_BACK, BOOTLOADER_FELL_BACK)
    if phase in (P.VERIFY, P.COMMIT):
        if observed.booted != state.target:
            return Step(FELL_BACK, BOOTLOADER_FELL_BACK)
        if phase is P.COMMIT:
            return Step(COMMIT)
        started = state.verify_started if state.verify_started is not None else observed.now
        if observed.now - started > verify_deadline:
            return Step(ROLLBACK, f"the health checks did not pass within {verify_deadline:g} s")
        return Step(VERIFY)
    if phase is P.ROLLBACK:
        return Step(ROLLBACK, state.reason)
    # ROLLBACK_REBOOT
    if observed.boot_id == state.boot_id:
        if state.reboots >= MAX_REBOOT_REQUESTS:
            return Step(
                STUCK,
                f"{state.reason}; slot {state.target} is marked bad, but the device did not"
                f" reboot into slot {state.source} (asked {state.reboots} times)",
            )
        return Step(ROLLBACK_REBOOT)
    if observed.booted == state.source:
        return Step(ROLLED_BACK, state.reason)
    return Step(
        STUCK,
        f"{state.reason}; the rollback did not take: the device still runs slot {observed.booted}",
    )
