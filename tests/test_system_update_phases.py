"""The phases of an A/B update: the declared moves (each with its why, refused otherwise) and
what a recorded phase means on a new start, a pure function tested table-driven: a `kill -9`
in every phase, before and after the reboot it may have asked for, on the new slot or back on
the old one (handlers/system_update/phases.py)."""

from __future__ import annotations

import itertools

import pytest

from jobs_agent_handlers.api import point_of_no_return
from jobs_agent_handlers.system_update import phases
from jobs_agent_handlers.system_update.phases import (
    TRANSITIONS,
    Observed,
    Phase,
    PhaseRefused,
    UpdateState,
    check_move,
    next_step,
)

DEADLINE = 300.0
NOW = 1_000_000.0
BEFORE = "boot-1"
AFTER = "boot-2"


def test_every_move_says_why_and_every_phase_is_reachable() -> None:
    assert all(why.strip() for why in TRANSITIONS.values())
    reached = {new for _, new in TRANSITIONS}
    assert reached == set(Phase)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (current, new)
        for current, new in itertools.product([None, *Phase], Phase)
        if (current, new) not in TRANSITIONS
    ],
)
def test_a_move_not_in_the_table_is_refused(current: Phase | None, new: Phase) -> None:
    with pytest.raises(PhaseRefused, match=f"to {new.value}"):
        check_move(current, new)
    if current is not None:
        with pytest.raises(PhaseRefused):
            UpdateState(phase=current).moved(new)


def test_the_checkpoint_keeps_the_state_and_ignores_anything_else() -> None:
    state = UpdateState(
        phase=Phase.ROLLBACK,
        source="A",
        target="B",
        boot_id=BEFORE,
        verify_started=NOW,
        failed_phase="verify",
        reason="health check x: exited with code 1",
    )
    assert UpdateState.from_checkpoint(state.to_checkpoint()) == state
    assert UpdateState.from_checkpoint(None) is None
    assert UpdateState.from_checkpoint({"phase": "install"}) is None  # not ours
    assert UpdateState.from_checkpoint({"systemUpdate": 1, "phase": "nonsense"}) is None


@pytest.mark.parametrize("phase", list(Phase))
def test_the_checkpoint_says_when_the_update_is_past_its_point_of_no_return(
    phase: Phase,
) -> None:
    """From `activate` on, the engine carries the job to its end whatever the service says
    (handlers/api.py POINT_OF_NO_RETURN); before it, a cancellation stops it."""
    checkpoint = UpdateState(phase=phase, source="A", target="B").to_checkpoint()
    switched = phase not in (Phase.DOWNLOAD, Phase.INSTALL)
    assert (point_of_no_return(checkpoint) is not None) is switched


def _state(phase: Phase, **changes: object) -> UpdateState:
    values: dict[str, object] = {"source": "A", "target": "B", "boot_id": BEFORE}
    values.update(changes)
    return UpdateState(phase=phase, **values)  # type: ignore[arg-type]


# (what the kill left, boot id now, booted slot now, seconds since verify began) -> step
CASES = [
    ("first run", None, BEFORE, "A", None, phases.DOWNLOAD, ""),
    ("killed while downloading", _state(Phase.DOWNLOAD), BEFORE, "A", None, phases.DOWNLOAD, ""),
    ("killed while installing", _state(Phase.INSTALL), BEFORE, "A", None, phases.INSTALL, ""),
    (
        "installing, yet the device runs another slot",
        _state(Phase.INSTALL),
        AFTER,
        "B",
        None,
        phases.STUCK,
        "now runs slot B",
    ),
    ("killed while activating", _state(Phase.ACTIVATE), BEFORE, "A", None, phases.ACTIVATE, ""),
    (
        "killed after activate, before the reboot",
        _state(Phase.REBOOT),
        BEFORE,
        "A",
        None,
        phases.REBOOT,
        "",
    ),
    (
        "the reboot was asked for twice and the device never went down",
        _state(Phase.REBOOT, reboots=2),
        BEFORE,
        "A",
        None,
        phases.ROLLBACK,
        "did not reboot into slot B (asked 2 times",
    ),
    (
        "killed during the reboot, came up on the new slot",
        _state(Phase.REBOOT),
        AFTER,
        "B",
        None,
        phases.VERIFY,
        "",
    ),
    (
        "the new slot never booted: the bootloader fell back",
        _state(Phase.REBOOT),
        AFTER,
        "A",
        None,
        phases.FELL_BACK,
        phases.BOOTLOADER_FELL_BACK,
    ),
    (
        "killed during verify, within the deadline",
        _state(Phase.VERIFY, verify_started=NOW - 10),
        AFTER,
        "B",
        None,
        phases.VERIFY,
        "",
    ),
    (
        "killed during verify, the deadline passed meanwhile",
        _state(Phase.VERIFY, verify_started=NOW - DEADLINE - 1),
        AFTER,
        "B",
        None,
        phases.ROLLBACK,
        "did not pass within 300 s",
    ),
    (
        "the device reset during verify and the bootloader fell back",
        _state(Phase.VERIFY, verify_started=NOW - 10),
        "boot-3",
        "A",
        None,
        phases.FELL_BACK,
        phases.BOOTLOADER_FELL_BACK,
    ),
    ("killed during commit", _state(Phase.COMMIT), AFTER, "B", None, phases.COMMIT, ""),
    (
        "the device reset during commit and fell back",
        _state(Phase.COMMIT),
        "boot-3",
        "A",
        None,
        phases.FELL_BACK,
        phases.BOOTLOADER_FELL_BACK,
    ),
    (
        "killed during rollback",
        _state(Phase.ROLLBACK, reason="health check x failed", failed_phase="verify"),
        AFTER,
        "B",
        None,
        phases.ROLLBACK,
        "health check x failed",
    ),
    (
        "killed after mark-bad, before the rollback's reboot",
        _state(Phase.ROLLBACK_REBOOT, boot_id=AFTER, reason="health check x failed"),
        AFTER,
        "B",
        None,
        phases.ROLLBACK_REBOOT,
        "",
    ),
    (
        "the rollback's reboot was asked for twice and never happened",
        _state(Phase.ROLLBACK_REBOOT, boot_id=AFTER, reboots=2, reason="health check x failed"),
        AFTER,
        "B",
        None,
        phases.STUCK,
        "did not reboot into slot A",
    ),
    (
        "back on the old slot after the rollback's reboot",
        _state(Phase.ROLLBACK_REBOOT, boot_id=AFTER, reason="health check x failed"),
        "boot-3",
        "A",
        None,
        phases.ROLLED_BACK,
        "health check x failed",
    ),
    (
        "the rollback's reboot came up on the new slot again",
        _state(Phase.ROLLBACK_REBOOT, boot_id=AFTER, reason="health check x failed"),
        "boot-3",
        "B",
        None,
        phases.STUCK,
        "the rollback did not take",
    ),
]


@pytest.mark.parametrize(
    ("state", "boot_id", "booted", "kind", "reason"),
    [case[1:4] + case[5:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_what_a_recorded_phase_means_now(
    state: UpdateState | None, boot_id: str, booted: str, kind: str, reason: str
) -> None:
    step = next_step(state, Observed(boot_id=boot_id, booted=booted, now=NOW), DEADLINE)
    assert step.kind == kind
    assert reason in step.reason


def test_every_phase_has_a_case() -> None:
    covered = {case[1].phase for case in CASES if case[1] is not None}
    assert covered == set(Phase)


def test_a_whole_update_as_a_chain_of_steps() -> None:
    """The normal flow is the same question asked after every phase: each answer's move is a
    row of the table, and the chain ends in a commit."""
    state: UpdateState | None = None
    seen = []
    observed = Observed(boot_id=BEFORE, booted="A", now=NOW)
    moves = {
        phases.DOWNLOAD: (Phase.INSTALL, {"source": "A", "target": "B"}),
        phases.INSTALL: (Phase.ACTIVATE, {}),
        phases.ACTIVATE: (Phase.REBOOT, {"boot_id": BEFORE}),
        phases.VERIFY: (Phase.COMMIT, {}),
    }
    for _ in range(10):
        step = next_step(state, observed, DEADLINE)
        seen.append(step.kind)
        if step.kind == phases.COMMIT:
            break
        if step.kind == phases.REBOOT:
            observed = Observed(boot_id=AFTER, booted="B", now=NOW + 60)
            continue
        phase, changes = moves[step.kind]
        if state is None:
            state = UpdateState(phase=Phase.DOWNLOAD).moved(phase, **changes)
        elif step.kind == phases.VERIFY:
            state = state.moved(Phase.VERIFY, verify_started=observed.now).moved(phase)
        else:
            state = state.moved(phase, **changes)
    assert seen == [
        phases.DOWNLOAD,
        phases.INSTALL,
        phases.ACTIVATE,
        phases.REBOOT,
        phases.VERIFY,
        phases.COMMIT,
    ]
