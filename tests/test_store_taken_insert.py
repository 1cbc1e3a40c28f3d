"""A job's start record and its RUNNING are one INSERT (issue 18).

The start record of an execution start-next took (`Store.record_taken`) waits for the store's
next transaction, which is RUNNING's, fsynced, before the handler is launched: it was written
there as an INSERT of the STARTED row and an UPDATE of that row to RUNNING, two statements in
one transaction. `Store.transition` now writes it as one INSERT of the row as RUNNING leaves
it (the record given back is built from the start record, `Store._started_running`); the same
transaction and the same row. A real SQLite file, the store's own calls in the
engine's order, SQLite's own trace of the statements (no timing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jobs_agent.engine.store import ExecutionState, Store, TransitionRefused
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


def run_job(store: Store, number: int) -> ExecutionRef:
    """A plugin job's calls in the engine's order: the start-next marker, the check that
    start-next passed nothing over (with the look for the execution's own record), the start
    record, RUNNING, the decision, REPORTED."""
    ref = ExecutionRef(None, f"job-{number}", 1)
    store.begin_taking()
    taking = store.taking(ref)
    assert taking.others == [] and taking.record is None
    record, created = store.record_taken(ref, {"operation": "x"}, 1, taking)
    assert created and record.state is ExecutionState.STARTED
    running = store.transition(ref, ExecutionState.RUNNING, handler="x", resumable=False)
    assert running.state is ExecutionState.RUNNING
    queued = store.decide(ref, JobExecutionStatus.SUCCEEDED, {}, alone=True)
    store.reported(queued[0].id, ref)
    return ref


def test_a_plugin_job_writes_its_start_record_and_running_in_one_insert(
    tmp_path: Path,
) -> None:
    """Over three jobs after a first one: no UPDATE to RUNNING any more, one INSERT a job, and
    a statement less a job than before; still two fsynced commits a job."""
    store = Store(tmp_path / "state.db")
    try:
        run_job(store, 0)
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        durable = store.durable_commits
        for number in range(1, 4):
            run_job(store, number)
        store._db.set_trace_callback(None)
        assert store.durable_commits - durable == 2 * 3
    finally:
        store.close()
    inserts = [s for s in statements if s.startswith("INSERT INTO executions")]
    assert len(inserts) == 3
    assert all("'running'" in s and "RETURNING" not in s for s in inserts)
    assert not [s for s in statements if s.startswith("UPDATE executions SET state = 'running'")]
    # 11 statements a job before (the previous job's REPORTED goes with RUNNING), 10 now.
    assert len(statements) == 10 * 3


def test_the_one_insert_stores_the_row_the_insert_and_update_stored(tmp_path: Path) -> None:
    """The same execution's RUNNING written the two ways, the start record pending (one
    INSERT, the record built) and the start record written first by a read (INSERT, then the
    UPDATE, the record given back by it): the same record given back and read back, but for
    the times."""
    records = []
    for folded in (True, False):
        store = Store(tmp_path / f"state-{folded}.db")
        try:
            ref = ExecutionRef(None, "job", 3)
            store.begin_taking()
            store.record_taken(ref, {"operation": "x", "n": [1, 2]}, 7)
            if not folded:
                assert store.get(ref) is not None  # writes the start record first
            running = store.transition(
                ExecutionRef(None, "job", 3),
                ExecutionState.RUNNING,
                handler="plugin",
                resumable=True,
            )
            assert running == store.get(ref)
            assert not store.unsettled and not store.was_taking()
            records.append(dataclasses.replace(running, received_at=0.0, updated_at=0.0))
        finally:
            store.close()
    assert records[0] == records[1]
    assert records[0].state is ExecutionState.RUNNING
    assert records[0].handler == "plugin" and records[0].resumable is True
    assert records[0].version_number == 7 and records[0].document == {"operation": "x", "n": [1, 2]}


def test_a_change_the_lifecycle_refuses_from_started_is_refused_and_the_record_kept(
    tmp_path: Path,
) -> None:
    """STARTED may not reach AWAITING_REBOOT: with the start record pending, the change is not
    made one INSERT with it but refused, as before, and the start record still waits; RUNNING
    then writes it."""
    store = Store(tmp_path / "state.db")
    try:
        ref = ExecutionRef(None, "job", 1)
        store.begin_taking()
        store.record_taken(ref, {"operation": "x"}, 1)
        with pytest.raises(TransitionRefused):
            store.transition(ref, ExecutionState.AWAITING_REBOOT)
        assert store.unsettled
        running = store.transition(ref, ExecutionState.RUNNING, handler="x")
        assert running.state is ExecutionState.RUNNING
        assert store.get(ref) == running
    finally:
        store.close()


@pytest.mark.parametrize("alone", [True, False])
def test_a_refused_document_s_start_record_and_decision_are_one_insert(
    tmp_path: Path, alone: bool
) -> None:
    """A document refused before anything ran is decided while its start record still waits:
    one INSERT of the row as the decision leaves it, not the INSERT of the STARTED row and an
    UPDATE of it to DECIDED (a statement less), in one fsynced commit; the row is what the two
    wrote (read back), its outbox entry queued, and REPORTED then closes it as any."""
    store = Store(tmp_path / "state.db")
    try:
        run_job(store, 0)
        ref = ExecutionRef(None, "refused", 1)
        store.begin_taking()
        store.record_taken(ref, {"operation": "nope", "n": [1]}, 3, store.taking(ref))
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        durable = store.durable_commits
        details = {"reason": "unknown operation"}
        queued = store.decide(ref, JobExecutionStatus.FAILED, details, alone=alone)
        store._db.set_trace_callback(None)
        assert store.durable_commits - durable == 1
        assert not store.was_taking()  # the record is on disk: the marker is emptied
        decided = "UPDATE executions SET state = 'decided'"
        assert not [s for s in statements if s.startswith(decided)], statements
        inserts = [s for s in statements if s.startswith("INSERT INTO executions")]
        assert len(inserts) == 1 and "'decided'" in inserts[0], statements
        record = store.get(ref)
        assert record is not None and record.state is ExecutionState.DECIDED
        assert record.outcome_status == JobExecutionStatus.FAILED
        assert record.outcome_details == details
        assert record.document == {"operation": "nope", "n": [1]} and record.version_number == 3
        assert record.handler is None and record.received_at <= record.updated_at
        [entry] = [entry for entry in queued if entry.key == ref]
        assert entry.status == JobExecutionStatus.FAILED and entry.status_details == details
        assert store.outbox() == queued
        store.reported(entry.id, ref)
        closed = store.get(ref)
        assert closed is not None and closed.state is ExecutionState.REPORTED
        assert store.outbox() == []
    finally:
        store.close()


def test_a_decision_of_another_execution_writes_the_start_record_first(tmp_path: Path) -> None:
    """The fold is for the start record's own execution only: another's decision writes the
    pending start record (STARTED) first, then its own UPDATE, in one transaction."""
    store = Store(tmp_path / "state.db")
    try:
        running = ExecutionRef(None, "running", 1)
        store.record_received(running, {"operation": "x"}, 1, ExecutionState.STARTED)
        store.transition(running, ExecutionState.RUNNING, handler="x")
        taken = ExecutionRef(None, "taken", 1)
        store.record_taken(taken, {"operation": "x"}, 1, store.taking(taken))
        store.decide(running, JobExecutionStatus.SUCCEEDED, {})
        started = store.get(taken)
        assert started is not None and started.state is ExecutionState.STARTED
        decided = store.get(running)
        assert decided is not None and decided.state is ExecutionState.DECIDED
    finally:
        store.close()
