"""The state store runs a job's statements on one cursor of its own (issue 18).

`sqlite3.Connection.execute` makes a new cursor for every statement: 17 a plugin job. The
store keeps one and runs every statement of a job through it, under its lock. A real SQLite
file, the store's own calls in the engine's order, and a second connection that checks no
statement of the store is left holding the database (no timing).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store, TransitionRefused
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


class CountedConnection(sqlite3.Connection):
    """A connection that counts the cursors made for its callers (one per `execute`)."""

    made = 0

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        CountedConnection.made += 1
        return super().execute(*args, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        CountedConnection.made += 1
        return super().cursor(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[CountedConnection]:
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, factory=CountedConnection, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    CountedConnection.made = 0
    return CountedConnection


def run_job(store: Store, number: int) -> ExecutionRef:
    """A plugin job's calls in the engine's order: the start-next marker, the start record,
    the check that start-next passed nothing over, RUNNING, the decision, REPORTED."""
    ref = ExecutionRef(None, f"job-{number}", 1)
    store.begin_taking()
    record, created = store.record_taken(ref, {"operation": "x"}, 1)
    assert created and record.state is ExecutionState.STARTED
    assert store.active(ref) == []
    store.transition(ref, ExecutionState.RUNNING, handler="x")
    queued = store.decide(ref, JobExecutionStatus.SUCCEEDED, {})
    store.reported(queued[0].id, ref)
    return ref


def test_a_plugin_job_s_statements_make_no_cursor(
    tmp_path: Path, counted: type[CountedConnection]
) -> None:
    """Cursors made for three jobs' statements and reads: 0 (57 before, one per statement)."""
    store = Store(tmp_path / "state.db")
    try:
        run_job(store, 0)
        before = counted.made
        refs = [run_job(store, number) for number in range(1, 4)]
        assert counted.made - before == 0
        for ref in refs:
            record = store.get(ref)
            assert record is not None and record.state is ExecutionState.REPORTED
        assert store.durable_commits == 2 * 4  # RUNNING and the decision, as before
    finally:
        store.close()


def test_no_statement_of_the_store_is_left_holding_the_database(tmp_path: Path) -> None:
    """After each call (a refused transition's check read with `fetchone` included), another
    connection can checkpoint the whole WAL and empty it: no statement of the store's cursor
    still holds a read of the database."""
    path = tmp_path / "state.db"
    store = Store(path)
    other = sqlite3.connect(str(path), isolation_level=None)
    try:

        def nothing_held() -> None:
            busy, _log, _done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0

        ref = run_job(store, 0)
        nothing_held()
        with pytest.raises(TransitionRefused):
            store.transition(ref, ExecutionState.RUNNING)
        nothing_held()
        assert store.taking(ExecutionRef(None, "job-1", 1)).record is None
        nothing_held()
        run_job(store, 1)  # the cursor still works after the refusal
        nothing_held()
        record = store.get(ref)
        assert record is not None and record.state is ExecutionState.REPORTED
    finally:
        other.close()
        store.close()


def test_a_transition_s_statement_is_made_once_and_names_only_allowed_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNNING's UPDATE is the same text every job: `transition` joins it once per state and
    set of columns, not at each job (issue 18). A column it may not set is still refused, the
    first time and after the statement of another was made."""
    made: list[tuple[ExecutionState, tuple[str, ...]]] = []
    real = store_module._transition_sql

    def counted(state: ExecutionState, names: tuple[str, ...]) -> str:
        made.append((state, names))
        return real(state, names)

    monkeypatch.setattr(store_module, "_TRANSITION_SQL", {})
    monkeypatch.setattr(store_module, "_transition_sql", counted)
    store = Store(tmp_path / "state.db")
    try:
        with pytest.raises(ValueError, match=r"unknown execution fields: \['bogus'\]"):
            store.transition(ExecutionRef(None, "none", 1), ExecutionState.RUNNING, bogus=1)
        refs = [run_job(store, number) for number in range(3)]
        assert made == [
            (ExecutionState.RUNNING, ("bogus",)),
            (ExecutionState.RUNNING, ("handler",)),
        ]
        for ref in refs:
            record = store.get(ref)
            assert record is not None and record.handler == "x"
        with pytest.raises(ValueError, match=r"unknown execution fields: \['bogus'\]"):
            store.transition(refs[0], ExecutionState.RUNNING, handler="y", bogus=1)
        record = store.get(refs[0])
        assert record is not None and record.handler == "x"
    finally:
        store.close()
