"""Pages a plugin job writes to the state database (issue 18).

Every page a commit changes is a WAL frame (two `pwrite64`, the page and its header) and, at the
next checkpoint, a write to the database file. A page written is counted here as SQLite counts
it: the frames in the WAL after the jobs (`PRAGMA wal_checkpoint` gives them), on a real file
holding what a working agent's database holds (500 finished executions kept by `prune`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store, TransitionRefused
from jobs_agent.vocabulary import ExecutionRef

DETAILS = {"percent": "100", "message": "verified", "stage": "two"}


def plugin_job(store: Store, number: int) -> None:
    """A plugin job's store calls, in the engine's order (a drain: the next offer at once)."""
    key = ExecutionRef(None, f"job-{number:06d}", 1)
    store.begin_taking()
    store.record_taken(key, {"operation": "quick"}, 2)
    store.active(besides=key)
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    entry = store.decide(key, "SUCCEEDED", DETAILS, alone=True)[0]
    store.reported(entry.id, key)


def wal_frames(store: Store) -> int:
    """Frames in the WAL now, checkpointed on the way (the WAL then starts again)."""
    busy, frames, _ = store._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(frames)


def worked_store(path: Path) -> Store:
    store = Store(path)
    for number in range(700):
        plugin_job(store, 100_000 + number)
    store.prune()
    wal_frames(store)
    return store


def test_a_plugin_job_writes_few_pages(tmp_path: Path) -> None:
    """RUNNING's commit (the start record and the state), the decision's (the state and its
    outbox entry) and REPORTED's (the state, the entry deleted): 8 pages a job and now and then
    a split of a full one. Before: 15.4 a job with two indexes on every execution (on `state`
    and `updated_at`, each rewritten by every state change; the executions now keep one index,
    of the active ones only, the one `Store.active` reads), 9.4 with the outbox's AUTOINCREMENT
    counter (a page of `sqlite_sequence` per decision)."""
    store = worked_store(tmp_path / "state.db")
    for number in range(10):
        plugin_job(store, number)
    frames = wal_frames(store)
    store.close()
    assert frames < 10 * 9


def test_the_active_executions_are_read_from_their_index_in_order(tmp_path: Path) -> None:
    """`Store.active` (once per job) reads the index of the active executions, in its order:
    no scan of the kept finished ones, no sort."""
    store = worked_store(tmp_path / "state.db")
    plan = store._db.execute(f"EXPLAIN QUERY PLAN {store_module._ACTIVE_SQL}").fetchall()
    store.close()
    assert [row[3] for row in plan] == ["SCAN executions USING INDEX executions_active"]


EARLIER_OUTBOX = """CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    job_id TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
)"""
"""The outbox as agents before issue 18's round 12 made it."""


class Earlier(NamedTuple):
    """A database as an agent before this change left it (`earlier_database`)."""

    database_id: str
    running: ExecutionRef
    """Active: in the index of the active executions once it is made."""
    queued: ExecutionRef
    """Decided, its report still queued in the outbox (id 41)."""


def earlier_database(path: Path) -> Earlier:
    """Two indexes on every execution and an AUTOINCREMENT outbox, as agents before issue
    18's round 12 made them (checked against a database written by that code)."""
    earlier = Store(path)
    running = ExecutionRef(None, "was-running", 1)
    earlier.record_received(running, {"operation": "quick"}, 1, ExecutionState.STARTED)
    earlier.transition(running, ExecutionState.RUNNING, handler="quick")
    plugin_job(earlier, 1)
    queued = ExecutionRef(None, "decided", 1)
    earlier.record_received(queued, {"operation": "quick"}, 1, ExecutionState.STARTED)
    earlier.transition(queued, ExecutionState.RUNNING, handler="quick")
    database_id = earlier.database_id
    earlier.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX executions_active")
        db.execute("CREATE INDEX executions_state ON executions (state)")
        db.execute("CREATE INDEX executions_updated ON executions (updated_at)")
        db.execute("DROP TABLE outbox")
        db.execute(EARLIER_OUTBOX)
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', 40)")
        db.execute("UPDATE executions SET state = 'decided' WHERE job_id = 'decided'")
        db.execute(
            "INSERT INTO outbox (namespace, job_id, execution_number, status, status_details,"
            " created_at) VALUES ('', 'decided', 1, 'FAILED', '{}', 1.0)"
        )
    return Earlier(database_id, running, queued)


def layout(path: Path) -> tuple[set[str], str, list[Any]]:
    """The executions' indexes, the outbox's definition and the AUTOINCREMENT counters."""
    with sqlite3.connect(path) as db:
        made = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql NOT NULL"))
        counters = db.execute("SELECT name FROM sqlite_sequence").fetchall()
    return {name for name in made if name.startswith("executions_")}, made["outbox"], counters


def test_a_database_an_earlier_agent_wrote_loses_the_indexes_no_read_needs(
    tmp_path: Path,
) -> None:
    """A database written by an agent before this change (two indexes on every execution, an
    AUTOINCREMENT outbox) is opened with its records kept: the two indexes dropped, the index
    of the active executions made with the earlier agent's active records in it, the outbox
    made again without its counter, its queued entry kept with its id (the next one above it)."""
    path = tmp_path / "state.db"
    earlier = earlier_database(path)
    store = Store(path)
    assert store.database_id == earlier.database_id
    assert [record.key for record in store.active()] == [earlier.running]
    assert store.get(ExecutionRef(None, "job-000001", 1)) is not None
    [entry] = store.outbox()
    assert (entry.id, entry.key, str(entry.status)) == (41, earlier.queued, "FAILED")
    plugin_job(store, 2)
    assert store.outbox() == [entry]
    indexes, outbox, counters = layout(path)
    assert indexes == {"executions_active"}
    assert "AUTOINCREMENT" not in outbox
    assert counters == []
    store.reported(entry.id, earlier.queued)
    assert store.outbox() == []
    store.close()


def test_an_earlier_database_that_cannot_take_the_new_layout_now_opens_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent upgraded on a disk too full for the new layout starts as the agent before it
    did (and waits for space, tests/test_disk_faults.py): the layout is left for a later
    start, and the earlier one serves every statement meanwhile. The failure is SQLite's own
    error for a full disk, raised by the layout's last step (a simulation: on a real tmpfs
    with 36-52 KB free it came from the statements or the COMMIT, the same way out)."""
    path = tmp_path / "state.db"
    earlier = earlier_database(path)

    def full(self: Store) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "_outbox_without_counter", full)
        store = Store(path)
        assert store.database_id == earlier.database_id
        assert [record.key for record in store.active()] == [earlier.running]
        plugin_job(store, 2)
        [entry] = store.outbox()
        assert entry.id == 41
        store.close()
    assert layout(path)[0] == {"executions_state", "executions_updated"}
    assert "AUTOINCREMENT" in layout(path)[1]

    Store(path).close()  # space again
    indexes, outbox, _ = layout(path)
    assert indexes == {"executions_active"}
    assert "AUTOINCREMENT" not in outbox


def test_an_id_given_again_never_touches_another_execution_s_entry(tmp_path: Path) -> None:
    """Without AUTOINCREMENT an emptied outbox gives its next entry the same id again: a late
    write by the id of an entry already gone (a failed attempt, a second `reported`) leaves
    the new entry of another execution as it is."""
    store = Store(tmp_path / "state.db")
    first, second = ExecutionRef(None, "first", 1), ExecutionRef(None, "second", 1)
    for key in (first, second):
        store.record_received(key, {"operation": "quick"}, 1, ExecutionState.STARTED)
        store.transition(key, ExecutionState.RUNNING, handler="quick")
    [gone] = store.decide(first, "SUCCEEDED", DETAILS, alone=True)
    store.reported(gone.id, first)
    [entry] = store.decide(second, "FAILED", DETAILS, alone=True)
    assert entry.id == gone.id
    store.outbox_attempt_failed(gone.id, first, "late")
    with pytest.raises(TransitionRefused):
        store.reported(gone.id, first)
    assert store.outbox() == [entry]
    store.close()


def test_a_plugin_job_s_statements_build_no_temporary_table(tmp_path: Path) -> None:
    """SQLite codes an IN list of more than two values as a temporary table, built at every run
    of the statement (a page zeroed, allocations): the lifecycle's guards and the condition of
    the index of the active executions are chains of comparisons instead (issue 18: 11 such
    tables per plugin job here before, 2 after, none now: the rows a RETURNING hands back are
    kept in one, and neither RUNNING's INSERT nor the outbox's has one any more).
    Every statement of a job, as SQLite's trace gave it, read back with EXPLAIN."""
    store = worked_store(tmp_path / "state.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    plugin_job(store, 1)
    store.settle()  # its REPORTED waits for the next transaction: written as an idle agent does
    store._db.set_trace_callback(None)
    built = [
        (sql[:60], "RETURNING" in sql, opcodes.count("OpenEphemeral"))
        for sql in statements
        if not sql.startswith(("BEGIN", "COMMIT", "PRAGMA"))
        for opcodes in [[row[1] for row in store._db.execute(f"EXPLAIN {sql}")]]
    ]
    store.close()
    assert len(built) == 7, built  # 8 before the start record and RUNNING were one INSERT
    assert all(tables == returning for _, returning, tables in built), built
    assert not [sql for sql, returning, tables in built if returning or tables], built
