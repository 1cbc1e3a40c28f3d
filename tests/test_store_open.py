"""Opening the state database: a new one is made in one transaction, one this agent made is
only read (issue 18).

A first start used to make the schema one statement at a time, each its own durable commit (14
fdatasyncs before the agent's first request, 7 now). These tests read what SQLite itself ran
(the connection's trace callback) and what a real file holds after a failure half-way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import Store, StoreError


def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL statements the stores opened from now on run, in order."""
    statements: list[str] = []
    connect = sqlite3.connect

    def trace(sql: str) -> None:
        if not sql.startswith("--"):  # SQLite's note of a pragma function's own statement
            statements.append(sql.strip().rstrip(";"))

    def tracing_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(trace)
        return db

    monkeypatch.setattr(store_module.sqlite3, "connect", tracing_connect)
    return statements


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_new_database_is_made_in_one_transaction_and_an_old_one_is_only_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = traced(monkeypatch)
    path = tmp_path / "state.db"
    first = Store(path)
    writes = [s for s in statements if not s.startswith(("PRAGMA", "SELECT"))]
    assert writes[0] == "BEGIN IMMEDIATE" and writes[-1] == "COMMIT", writes
    assert sum(s == "COMMIT" for s in statements) == 1
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS executions") for s in writes)
    assert sum(s.startswith("INSERT OR IGNORE INTO meta") for s in writes) == 2
    assert {"meta", "executions", "outbox", "packages"} <= tables(path)
    database_id = first.database_id
    first.close()

    statements.clear()
    again = Store(path)
    assert again.database_id == database_id  # the meta rows are kept, not made again
    # Neither a transaction nor its write lock: the schema is as the first start left it
    # (before: the 16 statements of the schema's transaction, an empty COMMIT).
    assert statements == [
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        "SELECT schema_version, user_version FROM pragma_schema_version, pragma_user_version",
        "SELECT value FROM meta WHERE key = 'database_id'",
    ], statements
    assert again.durable_commits == 0
    again.close()


def test_a_schema_changed_since_by_another_agent_is_laid_out_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent before issue 18's round 12 started on the database in between (its index on
    `state` back): the schema's transaction runs again, and drops it, as on any earlier
    agent's database (tests/test_store_pages.py)."""
    path = tmp_path / "state.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX IF NOT EXISTS executions_state ON executions (state)")
    statements = traced(monkeypatch)
    store = Store(path)
    assert "BEGIN IMMEDIATE" in statements
    assert "DROP INDEX IF EXISTS executions_state" in statements
    store.close()
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "executions_state" not in names
    statements.clear()
    Store(path).close()
    assert "BEGIN IMMEDIATE" not in statements  # laid out now


def test_a_new_database_that_fails_half_way_is_not_left_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema's tables are rolled back with the failure, and the next start makes them."""
    path = tmp_path / "state.db"

    def failing(self: Store) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "_add_columns", failing)
        with pytest.raises(StoreError, match="disk I/O error"):
            Store(path)
    assert tables(path) == set()
    store = Store(path)
    assert {"meta", "executions", "outbox", "packages"} <= tables(path)
    assert len(store.database_id) == 32
    store.close()
