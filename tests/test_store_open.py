"""Opening the state database: a new one is made in one transaction, one this agent made is
only read (issue 18).

A first start used to make the schema one statement at a time, each its own durable commit (14
fdatasyncs before the agent's first request, 7 now). These tests read what SQLite itself ran
(the connection's trace callback) and what a real file holds after a failure half-way.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
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
        "PRAGMA wal_autocheckpoint=0",  # once per connection: store.CHECKPOINT_COMMITS
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


# -- a new database: made under a temporary name, two syncs (issue 18) --------------------------
MAKE_ONLY = """
import os, sys
from pathlib import Path
from jobs_agent.engine.store import Store
Store(Path(sys.argv[1]))
os._exit(0)  # no close: only what opening did is traced
"""


def _synced_and_linked(trace: Path, under: Path) -> list[tuple[str, str]]:
    """(call, file) of each fsync, fdatasync, link and rename under `under`, in order."""
    found = []
    for line in trace.read_text().splitlines():
        call = line.split(maxsplit=1)[-1]
        name = call.split("(", 1)[0]
        if name in ("fsync", "fdatasync"):
            target = call[call.index("<") + 1 : call.index(">")]  # strace -y: the fd's path
        elif name in ("link", "rename"):
            target = call.split('"')[3]  # where it goes
        else:
            continue
        if target.startswith(str(under)):
            found.append((name, target.removeprefix(str(under))))
    return found


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_new_database_waits_for_two_syncs_and_appears_whole(tmp_path: Path) -> None:
    """A first start waited for 7 fdatasyncs here (the switch to WAL through a rollback
    journal, the WAL's creation, the schema's commit); now the database is laid out under a
    temporary name without a sync of SQLite's, fsynced once, linked into place, and the
    directory fsynced: `state.db` never names a database that is not whole."""
    state = tmp_path / "state"
    trace = tmp_path / "trace"
    strace = ["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,link,rename", "-o", str(trace)]
    subprocess.run(
        [*strace, sys.executable, "-c", MAKE_ONLY, str(state / "state.db")],
        check=True,
        timeout=120,
    )
    assert _synced_and_linked(trace, state) == [
        ("fsync", "/state.db.new"),
        ("link", "/state.db"),
        ("fsync", ""),  # the directory, with its new name
    ]
    assert [p.name for p in state.iterdir() if ".new" in p.name] == []
    assert (state / "state.db").read_bytes()[18:20] == b"\x02\x02"  # WAL, as opened after
    store = Store(state / "state.db")
    assert {"meta", "executions", "outbox", "packages"} <= tables(state / "state.db")
    assert len(store.database_id) == 32
    store.close()


def test_what_an_interrupted_first_start_left_is_made_again(tmp_path: Path) -> None:
    """A start stopped while making the database left its temporary files, and nothing at
    `state.db`: the next start removes them and makes the database whole."""
    path = tmp_path / "state.db"
    for leftover in ("state.db.new", "state.db.new-wal", "state.db.new-shm"):
        (tmp_path / leftover).write_bytes(b"half made" * 100)
    store = Store(path)
    assert [p.name for p in tmp_path.iterdir() if ".new" in p.name] == []
    assert {"meta", "executions", "outbox", "packages"} <= tables(path)
    assert len(store.database_id) == 32
    store.close()


def test_a_new_database_that_fails_half_way_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing at `state.db` (it was an empty database before) nor under the temporary name."""

    def failing(self: Store) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "_add_columns", failing)
        with pytest.raises(StoreError, match="disk I/O error"):
            Store(tmp_path / "state.db")
    assert list(tmp_path.iterdir()) == []
