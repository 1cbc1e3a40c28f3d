"""Where the store checkpoints its WAL: off every job's path when the agent goes idle between
jobs (`Store.settle`, `IDLE_CHECKPOINT_COMMITS`), at a decision only when it never does (a
drain, `CHECKPOINT_COMMITS`: tests/test_store_statements.py holds that bound).

A checkpoint fdatasyncs the WAL and the database (1-7 ms in the latency benchmark's runs);
made after a decision's commit it held up that job's report, and in a drain the next job's
start, and the first commit after it (SQLite restarts the WAL there: a header write and one
more fdatasync) was whatever came next."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus

CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
SETTLE = "-- the engine settles: nothing queued, about to wait for work"
DECISION = "-- the decision"


def idle_job(store: Store, number: int, statements: list[str]) -> None:
    """One job as the engine runs it when it arrives with the agent idle (the latency
    benchmark's shape): recorded, RUNNING (fsynced), the decision (fsynced), reported, and
    the engine settles before it waits for the next. The test's markers go in the trace."""
    key = ExecutionRef(None, f"job-{number}", 1)
    taking = store.taking(key)
    store.record_taken(key, {"operation": "quick"}, 1, taking)
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    statements.append(DECISION)
    [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {"percent": "100"}, alone=True)
    store.reported(entry.id, key)
    statements.append(SETTLE)
    store.settle()


def transactions_after(statements: list[str], index: int) -> list[str]:
    """The statements of the first transaction after `index`."""
    begin = statements.index("BEGIN IMMEDIATE", index)
    return statements[begin : statements.index("COMMIT", begin) + 1]


def test_an_agent_idle_between_jobs_checkpoints_when_it_settles_never_at_a_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 jobs (600 commits) with the agent idle between them, the bounds made 30 and 20
    commits for a short test: every checkpoint runs in `settle` (before this, each followed a
    decision's COMMIT, before its report), before settle's own write, which is then the first
    commit on the restarted WAL (REPORTED's, unsynced), never a job's RUNNING; and the WAL is
    checkpointed at least every `IDLE_CHECKPOINT_COMMITS` commits and a job."""
    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 30)
    monkeypatch.setattr(store_module, "IDLE_CHECKPOINT_COMMITS", 20)
    store = Store(tmp_path / "state.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        for number in range(200):
            idle_job(store, number, statements)
    finally:
        store._db.set_trace_callback(None)
        store.close()
    checkpoints = [i for i, s in enumerate(statements) if s == CHECKPOINT]
    assert len(checkpoints) >= 600 // (20 + 3)
    for index in checkpoints:
        assert statements[index - 1] == SETTLE, statements[index - 8 : index + 1]
        after = transactions_after(statements, index)
        assert any("SET state = 'reported'" in s for s in after)  # the REPORTED that waited
        assert statements.index(DECISION, index) > statements.index("COMMIT", index)


def test_a_checkpoint_due_at_settle_runs_even_with_nothing_to_write(tmp_path: Path) -> None:
    """`settle` checkpoints when `IDLE_CHECKPOINT_COMMITS` commits went by, whether or not a
    write waits; and not before."""
    store = Store(tmp_path / "state.db")
    statements: list[str] = []
    try:
        for number in range(store_module.IDLE_CHECKPOINT_COMMITS // 3 - 1):
            idle_job(store, number, [])
        store._db.set_trace_callback(statements.append)
        store.settle()
        assert CHECKPOINT not in statements
        while store.commits < store_module.IDLE_CHECKPOINT_COMMITS:
            store.save_checkpoint(ExecutionRef(None, "job-0", 1), {"step": store.commits})
        store.settle()
        assert statements.count(CHECKPOINT) == 1
        store.settle()  # checkpointed: nothing due
        assert statements.count(CHECKPOINT) == 1
    finally:
        store._db.set_trace_callback(None)
        store.close()


def test_the_idle_bound_comes_before_the_decision_s_by_more_than_a_job() -> None:
    """An agent idle between jobs reaches `IDLE_CHECKPOINT_COMMITS` at a settle before a
    decision reaches `CHECKPOINT_COMMITS`: a job makes far fewer than 50 commits."""
    assert store_module.CHECKPOINT_COMMITS - store_module.IDLE_CHECKPOINT_COMMITS >= 50
    assert store_module.IDLE_CHECKPOINT_COMMITS > 0
