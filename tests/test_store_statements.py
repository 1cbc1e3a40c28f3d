"""The statements SQLite runs per job, and the WAL they leave: SQLite's automatic checkpoints
are off for the connection's life and the store checkpoints explicitly every
`CHECKPOINT_COMMITS` commits, at a durable commit that is not RUNNING's (issue 18: turned on
and off around each job's commits they were two PRAGMAs a job, about 27 k instructions). The
two fsynced commits a job makes (its record before its handler, its decision before its
report) stay: counted here with the statements."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.records import RECORD_COLUMNS
from jobs_agent.engine.store import ExecutionState, PackageRow, Store
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from tests.harness import wait_until
from tests.helpers.agent_harness import (
    make_config,
    make_handler_dir,
    plugin_on_path,
    running_agent,
)

PLUGIN = """
class Quick:
    async def run(self, ctx):
        ctx.progress(40, "verified", stage="two")
"""


@pytest.fixture
def plugin_module(tmp_path: Path) -> Iterator[None]:
    with plugin_on_path(tmp_path, "store_statements_plugin", PLUGIN):
        yield


def drain_job(store: Store, number: int) -> None:
    """One job as the engine drains a queue: what start-next gave is checked and recorded,
    RUNNING (fsynced, with the start record), the decision (fsynced), its REPORTED left to
    ride in the next job's first transaction."""
    key = ExecutionRef(None, f"job-{number}", 1)
    taking = store.taking(key)
    store.record_taken(key, {"operation": "quick"}, 1, taking)
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {"percent": "100"}, alone=True)
    store.reported(entry.id, key)


async def test_a_plugin_job_runs_14_statements_and_two_fsynced_commits(
    tmp_path: Path, plugin_module: None
) -> None:
    """Counted by SQLite's own trace on the real agent's connection, over three jobs after a
    first one, the agent idle between them (its REPORTED written on its own, unsynced): 17
    statements a job before (the two `PRAGMA wal_autocheckpoint` toggles), 15 after, 14 now
    that the start record and RUNNING are one INSERT; and still two fsynced commits a job."""
    make_handler_dir(tmp_path)
    config = dataclasses.replace(
        make_config(tmp_path), handlers={"quick": "store_statements_plugin:Quick"}
    )
    statements: list[str] = []
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        store = engine.store.target
        durable = store.durable_commits
        store._db.set_trace_callback(statements.append)
        try:
            for number in range(3):
                execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
                assert str(execution.status) == "SUCCEEDED"
                await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
        finally:
            store._db.set_trace_callback(None)
        assert store.durable_commits - durable == 2 * 3
    assert not [s for s in statements if "wal_autocheckpoint" in s]
    assert len(statements) == 14 * 3, "\n".join(statements)


def test_a_drained_job_runs_10_statements(tmp_path: Path) -> None:
    """A queue drained through the store's calls in the engine's order: 13 statements a job
    before, 11 after, 10 now that the start record and RUNNING are one INSERT (no checkpoint
    is due over these jobs), two of them fsynced COMMITs; and RUNNING's statement gives back
    no row (its UPDATE was about 98 k instructions with its RETURNING, 31 k without:
    `Store._started_running`)."""
    store = Store(tmp_path / "state.db")
    try:
        for number in range(3):
            drain_job(store, number)
        statements: list[str] = []
        durable = store.durable_commits
        store._db.set_trace_callback(statements.append)
        try:
            for number in range(3, 6):
                drain_job(store, number)
        finally:
            store._db.set_trace_callback(None)
        assert store.durable_commits - durable == 2 * 3
        assert len(statements) == 10 * 3, "\n".join(statements)
        assert statements.count("COMMIT") == 2 * 3
        # RUNNING's record is built from the start record, not given back by its statement.
        assert not [s for s in statements if f"RETURNING {RECORD_COLUMNS}" in s]
    finally:
        store.close()


def test_the_wal_stays_bounded_over_a_long_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no automatic checkpoint, the WAL is checkpointed every `CHECKPOINT_COMMITS`
    commits (here 30, for a short test), never by RUNNING's commit: over 300 jobs (600
    commits, each REPORTED riding in the next job's first; about 2,200 WAL pages unchecked)
    the WAL file never outgrows what 30 commits and the one before the checkpoint write; and
    each checkpoint follows a decision's COMMIT."""
    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 30)
    path = tmp_path / "state.db"
    store = Store(path)
    wal = path.with_name(path.name + "-wal")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        (page_size,) = store._db.execute("PRAGMA page_size").fetchone()
        largest = 0
        for number in range(300):
            drain_job(store, number)
            largest = max(largest, wal.stat().st_size)
    finally:
        store._db.set_trace_callback(None)
        store.close()
    checkpoints = [i for i, s in enumerate(statements) if s == "PRAGMA wal_checkpoint(PASSIVE)"]
    assert len(checkpoints) >= 600 // 31
    for index in checkpoints:
        assert statements[index - 1] == "COMMIT"
        assert statements[index - 2].startswith("INSERT INTO outbox")  # the decision's
    # A drained job's commit writes about 3.6 pages (111 frames at most here; a WAL frame is a
    # page and 24 bytes, after a 32-byte header).
    assert largest <= 31 * 5 * (page_size + 24) + 32, largest


@pytest.mark.parametrize("namespace", [None, "ns"])
def test_running_s_record_built_from_the_start_record_is_the_row_written(
    tmp_path: Path, namespace: str | None
) -> None:
    """A new job's RUNNING record (`Store._started_running`, no RETURNING) is the record the
    row then holds, read back; a RUNNING of a record already written (a resumed execution,
    other columns) is still given back by its UPDATE, and is the row too."""
    store = Store(tmp_path / "state.db")
    try:
        key = ExecutionRef(namespace, "new", 1)
        taking = store.taking(key)
        document = {"operation": "quick", "files": [{"url": "https://x/y?X-Amz-Signature=s"}]}
        store.record_taken(key, document, 7, taking)
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        running = store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=True)
        store._db.set_trace_callback(None)
        assert not [s for s in statements if "RETURNING" in s], statements
        assert running == store.get(key)
        assert running.handler == "quick" and running.resumable
        again = store.transition(key, ExecutionState.RUNNING, restarts=1, note="")
        assert again == store.get(key) and again.restarts == 1
        other = ExecutionRef(namespace, "other", 1)
        store.record_taken(other, {"operation": "quick"}, 1, store.taking(other))
        # Another execution's RUNNING writes the pending record first, and is given back.
        assert store.transition(key, ExecutionState.RUNNING, handler="x", resumable=False) == (
            store.get(key)
        )
    finally:
        store.close()


@pytest.mark.parametrize("packages", [0, 2])
def test_the_decision_s_outbox_id_is_the_insert_s_rowid_with_no_row_returned(
    tmp_path: Path, packages: int
) -> None:
    """The entry `decide(alone=True)` gives back has the id its row holds, read by SQLite's
    rowid of the INSERT (`Cursor.lastrowid`), not by a `RETURNING id` (issue 18: the outbox's
    INSERT about 39 k instructions with it, 14 k without); with the packages a SUCCEEDED job
    installed written in the same transaction before it (their INSERTs are not the id), over
    ids given again once the outbox is empty."""
    store = Store(tmp_path / "state.db")
    try:
        for number in range(3):
            key = ExecutionRef(None, f"job-{number}", 1)
            store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
            store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
            rows = tuple(
                PackageRow(f"p{number}-{index}", "1.0", {}, True, False, 0)
                for index in range(packages)
            )
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)
            [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {}, rows, alone=True)
            store._db.set_trace_callback(None)
            assert not [s for s in statements if "RETURNING" in s], statements
            assert store.outbox() == [entry]
            if number < 2:
                store.reported(entry.id, key)
        assert [entry.id for entry in store.outbox()] == [1]  # given again: 1 each time
    finally:
        store.close()
