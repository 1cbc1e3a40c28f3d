"""The execution lifecycle, directly: the table the store enforces, the recovery decision for every
state a crash can leave behind, and chains of events in the Mender client's manner (a list of
events in, the states and the reports out). No broker, no processes: a real state database in a
temporary directory, and the pure recovery function.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine.lifecycle import TRANSITIONS, ExecutionState
from jobs_agent.engine.recovery import (
    ENDED_BY_SERVICE,
    NO_REBOOT,
    RESTARTED_MID_STEP,
    SUSPENDED,
    Action,
    Fail,
    Limits,
    Resend,
    Run,
    Settle,
    Wait,
    recover,
)
from jobs_agent.engine.store import (
    Deferral,
    ExecutionRecord,
    Store,
    StoreError,
    TransitionRefused,
)
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from jobs_agent_handlers.api import POINT_OF_NO_RETURN

S = ExecutionState
REF = ExecutionRef(None, "job-1", 1)
LIMITS = Limits(max_agent_restarts=3)
BOOT_A, BOOT_B = "boot-a", "boot-b"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "state.db")
    yield db
    db.close()


# -- the table ---------------------------------------------------------------------------------
# How a record reaches each state through transitions the table allows, from nothing.
PATHS: dict[ExecutionState, list[ExecutionState]] = {
    S.RECEIVED: [S.RECEIVED],
    S.STARTED: [S.STARTED],
    S.RUNNING: [S.STARTED, S.RUNNING],
    S.AWAITING_REBOOT: [S.STARTED, S.RUNNING, S.AWAITING_REBOOT],
    S.DECIDED: [S.STARTED, S.DECIDED],
    S.REPORTED: [S.STARTED, S.DECIDED, S.REPORTED],
    S.CANCELLED: [S.STARTED, S.CANCELLED],
    S.DEFERRED: [S.STARTED, S.DEFERRED],
}


DEFERRAL_FIELDS: dict[str, Any] = {
    "deferred_kind": "handler",
    "deferred_until": 2_000_000_000.0,
    "deferred_reason": "battery low",
    "deferred_since": 1_999_999_000.0,
}


def move(store: Store, ref: ExecutionRef, state: ExecutionState) -> None:
    """Ask the store for `state` the way the engine does for that state."""
    current = store.get(ref)
    if current is None:
        store.record_received(ref, {"operation": "x"}, 1, state)
    elif state is S.DECIDED:
        store.decide(ref, JobExecutionStatus.SUCCEEDED, {"reason": "done"})
    elif state is S.REPORTED:
        entries = [e.id for e in store.outbox() if e.key == ref]
        store.reported(entries[0] if entries else -1, ref)
    elif state is S.CANCELLED:
        store.cancelled(ref, "ended by the service")
    elif state is S.DEFERRED:
        store.transition(ref, state, **DEFERRAL_FIELDS)
    else:
        store.transition(ref, state)


def test_every_path_used_below_is_made_of_allowed_transitions() -> None:
    for path in PATHS.values():
        for old, new in itertools.pairwise([None, *path]):
            assert (old, new) in TRANSITIONS, (old, new)


def test_every_transition_says_why() -> None:
    assert all(why.strip() for why in TRANSITIONS.values())


def test_the_documented_table_is_the_table() -> None:
    """docs/architecture.md draws the lifecycle: the same rows, the same reasons."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in {str(s) for s in ExecutionState}:
            old = None if cells[0] == "(none)" else ExecutionState(cells[0])
            rows[(old, ExecutionState(cells[1]))] = cells[2]
    assert rows == dict(TRANSITIONS)


@pytest.mark.parametrize(
    ("old", "new"),
    list(itertools.product([None, *ExecutionState], ExecutionState)),
    ids=lambda state: str(state) if state is not None else "new",
)
def test_the_store_allows_exactly_the_transitions_of_the_table(
    store: Store, old: ExecutionState | None, new: ExecutionState
) -> None:
    for state in PATHS[old] if old is not None else []:
        move(store, REF, state)
    if (old, new) in TRANSITIONS:
        move(store, REF, new)
        record = store.get(REF)
        assert record is not None and record.state is new
        return
    with pytest.raises((TransitionRefused, StoreError)) as info:
        move(store, REF, new)
    if old is not None:  # a refused change names both states and leaves the record as it was
        assert isinstance(info.value, TransitionRefused)
        assert f"{old} -> {new}" in str(info.value)
        record = store.get(REF)
        assert record is not None and record.state is old


def test_a_refused_transition_writes_nothing_else(store: Store) -> None:
    move(store, REF, S.STARTED)
    move(store, REF, S.DECIDED)
    with pytest.raises(TransitionRefused):
        store.cancelled(REF, "must not drop the queued outcome")
    assert [e.status for e in store.outbox()] == [JobExecutionStatus.SUCCEEDED]


# -- recovery: every state a crash can leave behind --------------------------------------------
def record(state: ExecutionState, **fields: Any) -> ExecutionRecord:
    base = ExecutionRecord(
        key=REF,
        state=state,
        document={"operation": "x"},
        version_number=1,
        handler="x",
        resumable=False,
        step=0,
        checkpoint=None,
        boot_id=None,
        restarts=0,
        progress=None,
        outcome_status=None,
        outcome_details=None,
        note=None,
        received_at=0.0,
        updated_at=0.0,
    )
    return replace(base, **fields)


def reboot_step_checkpoint(boot_id: str) -> dict[str, Any]:
    return {"next_step": 2, "reboot_step": {"boot_id": boot_id}}


RECOVERY: list[tuple[str, ExecutionRecord, str | None, Action]] = [
    ("taken, not yet started", record(S.RECEIVED), BOOT_A, Run()),
    ("started, handler never launched", record(S.STARTED), BOOT_A, Run()),
    (
        "crashed mid-step",
        record(S.RUNNING),
        BOOT_A,
        Fail(RESTARTED_MID_STEP, stop_leftovers=True),
    ),
    (
        "resumable, crashed",
        record(S.RUNNING, resumable=True, restarts=1),
        BOOT_A,
        Run(resumed=True, restarts=2, stop_leftovers=True),
    ),
    (
        "resumable, suspended for a stop",
        record(S.RUNNING, resumable=True, restarts=3, note=SUSPENDED),
        BOOT_A,
        Run(resumed=True, restarts=3, stop_leftovers=True),
    ),
    (
        "resumable, one restart too many",
        record(S.RUNNING, resumable=True, restarts=3),
        BOOT_A,
        Fail(
            "agent restarted 4 times while running this job (boot-loop guard)",
            stop_leftovers=True,
        ),
    ),
    (
        "Device Client reboot step, the device rebooted",
        record(S.RUNNING, checkpoint=reboot_step_checkpoint(BOOT_A)),
        BOOT_B,
        Run(resumed=True, rebooted=True, confirm_reboot_step=2, stop_leftovers=True),
    ),
    (
        "Device Client reboot step, same boot",
        record(S.RUNNING, checkpoint=reboot_step_checkpoint(BOOT_A)),
        BOOT_A,
        Fail(RESTARTED_MID_STEP, stop_leftovers=True),
    ),
    (
        "Device Client reboot step, boot id unreadable",
        record(S.RUNNING, checkpoint=reboot_step_checkpoint(BOOT_A)),
        None,
        Fail(RESTARTED_MID_STEP, stop_leftovers=True),
    ),
    (
        "awaiting its reboot, rebooted",
        record(S.AWAITING_REBOOT, boot_id=BOOT_A),
        BOOT_B,
        Run(resumed=True, rebooted=True),
    ),
    (
        "awaiting its reboot, same boot",
        record(S.AWAITING_REBOOT, boot_id=BOOT_A),
        BOOT_A,
        Fail(NO_REBOOT),
    ),
    (
        "awaiting its reboot, same boot, the handler past its point of no return",
        record(
            S.AWAITING_REBOOT,
            boot_id=BOOT_A,
            resumable=True,
            checkpoint={POINT_OF_NO_RETURN: "switched slots"},
        ),
        BOOT_A,
        Run(resumed=True),
    ),
    (
        "awaiting its reboot, boot id unreadable",
        record(S.AWAITING_REBOOT, boot_id=BOOT_A),
        None,
        Run(resumed=True, rebooted=True),
    ),
    (
        "deferred by its handler: the wait goes on, the step does not run",
        record(S.DEFERRED, deferral=Deferral("handler", 2e9, "battery low", 1.9e9)),
        BOOT_A,
        Wait("handler", 2e9, "battery low"),
    ),
    (
        "deferred for its window, and the device rebooted: the same absolute time",
        record(S.DEFERRED, deferral=Deferral("window", 2e9, "window", 1.9e9)),
        BOOT_B,
        Wait("window", 2e9, "window"),
    ),
    (
        "waiting for consent: asked again, no time",
        record(S.DEFERRED, deferral=Deferral("consent", None, "update now?", 1.9e9)),
        BOOT_A,
        Wait("consent", None, "update now?"),
    ),
    ("outcome queued, not sent", record(S.DECIDED), BOOT_A, Resend()),
    (
        "reported, offered again",
        record(
            S.REPORTED,
            outcome_status=JobExecutionStatus.FAILED,
            outcome_details={"reason": "exit 1"},
        ),
        BOOT_A,
        Settle(JobExecutionStatus.FAILED, {"reason": "exit 1"}),
    ),
    (
        "ended by the service, offered again",
        record(S.CANCELLED),
        BOOT_A,
        Settle(JobExecutionStatus.FAILED, {"reason": ENDED_BY_SERVICE}),
    ),
]


@pytest.mark.parametrize(
    ("name", "crashed", "boot_id", "expected"),
    RECOVERY,
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_recovery_decides_from_the_record_alone(
    name: str, crashed: ExecutionRecord, boot_id: str | None, expected: Action
) -> None:
    assert recover(crashed, boot_id, LIMITS) == expected


def test_recovery_covers_every_state() -> None:
    assert {crashed.state for _, crashed, _, _ in RECOVERY} == set(ExecutionState)


# -- chains of events --------------------------------------------------------------------------
@dataclass
class Device:
    """The lifecycle, the store and recovery as the engine composes them, without the network:
    each event is something the service, the handler or the machine does."""

    path: Path
    boot_id: str = BOOT_A
    resumable: bool = False
    store: Store = field(init=False)
    states: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    ran: int = 0
    waits: int = 0

    def __post_init__(self) -> None:
        self.store = Store(self.path)

    def state(self) -> ExecutionState | None:
        found = self.store.get(REF)
        return None if found is None else found.state

    def note(self) -> None:
        state = self.state()
        if state is not None and (not self.states or self.states[-1] != state):
            self.states.append(str(state))

    def offered(self) -> None:
        """The service offers the execution (start-next, $next or a redelivery)."""
        if self.store.get(REF) is None:
            self.store.record_received(REF, {"operation": "x"}, 1, S.STARTED)
            self.note()
        found = self.store.get(REF)
        assert found is not None
        self.act(recover(found, self.boot_id, LIMITS))

    def act(self, action: Action) -> None:
        if isinstance(action, Run):
            fields: dict[str, Any] = {"note": ""}
            if action.restarts is not None:
                fields["restarts"] = action.restarts
            if not action.resumed:
                fields["resumable"] = self.resumable
            self.store.transition(REF, S.RUNNING, **fields)
            self.ran += 1
        elif isinstance(action, Fail):
            self.store.decide(REF, JobExecutionStatus.FAILED, {"reason": action.reason})
        elif isinstance(action, Settle):
            self.store.decide(REF, action.status, dict(action.details))
        elif isinstance(action, Wait):
            self.waits += 1  # nothing runs; the engine waits again
        self.note()

    def handler_defers(self) -> None:
        self.store.transition(REF, S.DEFERRED, **DEFERRAL_FIELDS)
        self.note()

    def deferral_over(self) -> None:
        self.store.transition(REF, S.RUNNING, note="")
        self.ran += 1
        self.note()

    def handler_ends(self, status: JobExecutionStatus) -> None:
        self.store.decide(REF, status, {})
        self.note()

    def handler_asks_reboot(self) -> None:
        self.store.transition(REF, S.AWAITING_REBOOT, boot_id=self.boot_id)
        self.note()

    def stopped_for_shutdown(self) -> None:
        self.store.transition(REF, S.RUNNING, note=SUSPENDED)

    def crash(self, *, reboot: bool = False) -> None:
        self.store.close()
        if reboot:
            self.boot_id = BOOT_B if self.boot_id == BOOT_A else BOOT_A
        self.store = Store(self.path)

    def service_accepts(self) -> None:
        for entry in self.store.outbox():
            self.reports.append(str(entry.status))
            self.store.reported(entry.id, entry.key)
        self.note()

    def service_cancels(self) -> None:
        self.store.cancelled(REF, "cancelled by the operator")
        self.note()


def run_chain(tmp_path: Path, events: list[str], **device: Any) -> Device:
    dev = Device(tmp_path / "state.db", **device)
    actions = {
        "offer": dev.offered,
        "succeed": lambda: dev.handler_ends(JobExecutionStatus.SUCCEEDED),
        "fail": lambda: dev.handler_ends(JobExecutionStatus.FAILED),
        "ask-reboot": dev.handler_asks_reboot,
        "stop": dev.stopped_for_shutdown,
        "crash": dev.crash,
        "reboot": lambda: dev.crash(reboot=True),
        "accept": dev.service_accepts,
        "cancel": dev.service_cancels,
        "defer": dev.handler_defers,
        "time-came": dev.deferral_over,
    }
    for event in events:
        actions[event]()
    dev.store.close()
    return dev


CHAINS: list[tuple[str, list[str], dict[str, Any], list[str], list[str], int]] = [
    (
        "a job that succeeds",
        ["offer", "succeed", "accept"],
        {},
        ["started", "running", "decided", "reported"],
        ["SUCCEEDED"],
        1,
    ),
    (
        "killed mid-step: FAILED, never run twice",
        ["offer", "crash", "offer", "accept"],
        {},
        ["started", "running", "decided", "reported"],
        ["FAILED"],
        1,
    ),
    (
        "killed after deciding: the outcome is sent once",
        ["offer", "succeed", "crash", "offer", "accept", "offer"],
        {},
        ["started", "running", "decided", "reported", "decided"],
        ["SUCCEEDED"],
        1,
    ),
    (
        "a resumable job survives two crashes",
        ["offer", "crash", "offer", "crash", "offer", "succeed", "accept"],
        {"resumable": True},
        ["started", "running", "decided", "reported"],
        ["SUCCEEDED"],
        3,
    ),
    (
        "a resumable job in a boot loop is stopped",
        ["offer", *(["crash", "offer"] * 4), "accept"],
        {"resumable": True},
        ["started", "running", "decided", "reported"],
        ["FAILED"],
        4,
    ),
    (
        "a stop is not a crash",
        ["offer", *(["stop", "crash", "offer"] * 5), "succeed", "accept"],
        {"resumable": True},
        ["started", "running", "decided", "reported"],
        ["SUCCEEDED"],
        6,
    ),
    (
        "a reboot the job asked for",
        ["offer", "ask-reboot", "reboot", "offer", "succeed", "accept"],
        {},
        ["started", "running", "awaiting_reboot", "running", "decided", "reported"],
        ["SUCCEEDED"],
        2,
    ),
    (
        "a reboot that did not happen",
        ["offer", "ask-reboot", "crash", "offer", "accept"],
        {},
        ["started", "running", "awaiting_reboot", "decided", "reported"],
        ["FAILED"],
        1,
    ),
    (
        "deferred twice, across a crash and a reboot: waits, never reruns a step meanwhile",
        [
            "offer",
            "defer",
            "crash",
            "offer",
            "time-came",
            "defer",
            "reboot",
            "offer",
            "time-came",
            "succeed",
            "accept",
        ],
        {},
        [
            "started",
            "running",
            "deferred",
            "running",
            "deferred",
            "running",
            "decided",
            "reported",
        ],
        ["SUCCEEDED"],
        3,
    ),
    (
        "cancelled while deferred: nothing runs again",
        ["offer", "defer", "cancel", "offer", "accept"],
        {},
        ["started", "running", "deferred", "cancelled", "decided", "reported"],
        ["FAILED"],
        1,
    ),
    (
        "cancelled while running, then offered again: FAILED, not rerun",
        ["offer", "cancel", "offer", "accept"],
        {},
        ["started", "running", "cancelled", "decided", "reported"],
        ["FAILED"],
        1,
    ),
]


@pytest.mark.parametrize(
    ("name", "events", "device", "states", "reports", "runs"),
    CHAINS,
    ids=[chain[0] for chain in CHAINS],
)
def test_chains_of_events(
    tmp_path: Path,
    name: str,
    events: list[str],
    device: dict[str, Any],
    states: list[str],
    reports: list[str],
    runs: int,
) -> None:
    dev = run_chain(tmp_path, events, **device)
    assert (dev.states, dev.reports, dev.ran) == (states, reports, runs)
