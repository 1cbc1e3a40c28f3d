"""Durable state of the agent: one SQLite file under `state_dir`.

The Mender lesson: every transition of an execution is written (and fsynced: WAL with
synchronous=FULL) before the side effect it announces, so that a `kill -9` or a power cut at any
line leaves a record from which the next start knows exactly what happened and what is left.

Two writes of a job need no fsync of their own, which halves a job's fsyncs (issue 18): the
record of an execution start-next just took (`record_taken`), and REPORTED, which a power cut
may turn back into DECIDED: the outcome is then sent again and the service's "already terminal"
answer closes it. Neither is a transaction of its own: each is written first in the store's
next transaction (the start record with RUNNING, fsynced, or the decided outcome; REPORTED with
the next job's RUNNING), or on its own by a read that needs it, by `settle` when the engine
goes idle and at `close`, so a job makes two commits, not four. Until then a kill -9 loses
either as a power cut would: the start record with the start-next marker kept for that case;
REPORTED with its outbox row kept, so the restarted agent sends the outcome once more and the
service's refusal closes it. Only a REPORTED the lifecycle surely allows (an execution this
store itself decided, untouched since) waits; any other is written and checked at once, so a
refused one is refused to its caller and never rides in another execution's transaction. The
notes in `jobs_agent.engine.lifecycle` say what each loss means.
The states and the transitions allowed between them are declared in
`jobs_agent.engine.lifecycle`; every write that changes a state is checked against that table
inside its own transaction, and refused (`TransitionRefused`) when the table does not list it.

`decided` rows always have a matching outbox row until the service accepted the update; the
outbox is flushed in id order before new work is taken.

The `packages` table is the device's own record of what its jobs installed (one row per
package, the latest job's word), written in the same transaction as the SUCCEEDED outcome that
installed it, with a flag for what still has to be reported to `$package` (engine/packages.py).

This module is longer than 500 lines: every SQL statement of the engine is in this one class, so
that what a transaction writes together (a state, its fields, its outbox row) is read in one
place.
"""

# ruff: noqa: S608  -- SQL text is assembled only from constants here; values are always bound.

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

import structlog

from jobs_agent import jsontext
from jobs_agent.engine.lifecycle import (
    DECIDED,
    FINISHED_STATES,
    REPORTED,
    RUNNING,
    STARTED,
    TRANSITIONS,
    execution_state,
)
from jobs_agent.engine.lifecycle import ExecutionState as ExecutionState
from jobs_agent.engine.records import (
    ACTIVE_WHERE,
    ADDED_COLUMNS,
    LAYOUT,
    OUTBOX_COLUMNS,
    RECORD_COLUMNS,
    SCHEMA,
    record_from_row,
    state_in,
)
from jobs_agent.engine.records import Deferral as Deferral
from jobs_agent.engine.records import ExecutionRecord as ExecutionRecord
from jobs_agent.engine.records import OutboxEntry as OutboxEntry
from jobs_agent.engine.records import PackageRow as PackageRow
from jobs_agent.redact import redact_url_credentials
from jobs_agent.vocabulary import (
    ExecutionRef,
    JobExecutionStatus,
    StatusDetails,
    job_execution_status,
)

_log = structlog.get_logger("jobs_agent.engine")

ExecutionKey = ExecutionRef
"""The reference to an execution, under the name the store has always used for it."""

SCHEMA_VERSION = 1
LAYOUT_MARK = 13
"""This agent's schema and layout (records.py); another layout, another mark (below 256)."""
CHECKPOINT_COMMITS = 250
"""Commits after which the next durable commit that may checkpoint (`_write_locked`) runs a
passive checkpoint of the WAL. SQLite's automatic checkpoints are off for the connection's
life: turned on and off around each job's commits, as they were, they cost two PRAGMAs a job
(about 27 k instructions, issue 18). A plugin job writes about 8 WAL pages over its commits
(3.6 a commit in a drain, 2.7 when idle between jobs), so this checkpoints about as often as
SQLite's default (1,000 pages) did, and the WAL stays bounded by this many commits
(tests/test_store_statements.py). An agent that goes idle between jobs checkpoints before
this, off the jobs' path (`IDLE_CHECKPOINT_COMMITS`)."""
IDLE_CHECKPOINT_COMMITS = CHECKPOINT_COMMITS - 50
"""Commits after which `settle` (the engine about to wait for work) checkpoints the WAL, before
`CHECKPOINT_COMMITS` makes a decision's commit do it. There no job waits for it: at a decision
it held up that job's report (0.5-7 ms in the latency benchmark's runs: two fdatasyncs, the
WAL's and the database's). Made before `settle`'s own write, which
then restarts the WAL (SQLite's header write and fdatasync at the first commit after a complete
checkpoint) instead of the next job's RUNNING. The 50 commits between the two are more than a
job makes, so an agent that goes idle between jobs reaches this one first; one that never goes
idle checkpoints at `CHECKPOINT_COMMITS` as before (tests/test_store_checkpoint.py)."""


def _layout_mark(cookie: int) -> int:
    """`user_version` of a database this agent laid out, whose schema cookie is `cookie`."""
    return (cookie % (1 << 22)) << 8 | LAYOUT_MARK  # within user_version's 32 signed bits


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(fresh: Path, path: Path) -> None:
    """`fresh` made `path` unless a file is there already; renamed where the file system has
    no hard links (FAT): the instance lock keeps every other agent out meanwhile."""
    try:
        os.link(fresh, path)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        os.rename(fresh, path)


class Change(NamedTuple):
    """The state change a write makes, checked against the lifecycle in its transaction."""

    key: ExecutionRef
    state: ExecutionState
    guarded: bool = False
    """The write's first statement (after a pending start record) is the execution's UPDATE,
    limited by `_allowed_before` to the states the lifecycle lets reach `state`: one row
    changed is the check passed, none and the state is read to say why (issue 18: a SELECT
    per state change less). Unguarded (an INSERT): the state is read before the statements."""


def _allowed_before(state: ExecutionState) -> str:
    """The WHERE condition of a guarded UPDATE to `state`: the states it may come from."""
    before = tuple(sorted({old for old, new in TRANSITIONS if new is state and old is not None}))
    return f" AND {state_in(before)}" if before else " AND 0"


_GUARDS = {state: _allowed_before(state) for state in ExecutionState}
_DECIDED_VALUE: Final = str(ExecutionState.DECIDED)
_REPORTED_VALUE: Final = str(ExecutionState.REPORTED)
"""The stored values of the states a job's decision and report write, made once: the per-job
paths read no enum member off its class (about 900 instructions each on Python 3.11; issue
18), as they compare with the `lifecycle` aliases."""
_TRANSITION_FIELDS = frozenset(
    {
        "version_number",
        "handler",
        "resumable",
        "step",
        "boot_id",
        "restarts",
        "note",
        "deferred_kind",
        "deferred_until",
        "deferred_reason",
        "deferred_since",
        "deferred_total_seconds",
        "deferrals",
    }
)
"""The columns `Store.transition` may set besides the state."""
_TRANSITION_SQL: dict[tuple[Any, ...], str] = {}
"""`Store.transition`'s statement by its state and the names of its columns, in their order:
made once each (a few dozen at most: the callers name their columns in the code), not joined
again at each job's RUNNING (issue 18)."""


def _transition_sql(state: ExecutionState, names: tuple[str, ...]) -> str:
    """The UPDATE that moves an execution to `state` and sets `names`, kept in
    `_TRANSITION_SQL`; a name that is not a column `transition` may set raises ValueError."""
    unknown = set(names) - _TRANSITION_FIELDS
    if unknown:
        raise ValueError(f"unknown execution fields: {sorted(unknown)}")
    assignments = ", ".join(["state = ?", "updated_at = ?", *(f"{name} = ?" for name in names)])
    sql = (
        f"UPDATE executions SET {assignments} WHERE {Store._WHERE_KEY}"
        f"{_GUARDS[state]} RETURNING {RECORD_COLUMNS}"
    )
    _TRANSITION_SQL[(state, *names)] = sql
    return sql


_HANDLER_FIELDS = frozenset(("handler", "resumable"))
"""The columns a new job's RUNNING sets (the runner's): `Store._started_running`."""
_INSERT_COLUMNS = (
    "namespace",
    "job_id",
    "execution_number",
    "state",
    "document",
    "version_number",
    "received_at",
    "updated_at",
)
"""A new record's columns (`Store._insert`): its parameters are in this order."""
_INSERT_SQL = (
    f"INSERT INTO executions ({', '.join(_INSERT_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)
_STARTED_RUNNING_SQL: dict[tuple[str, ...], str] = {}
"""The INSERT of a start record still pending as RUNNING leaves it (`Store.transition`), by
the names of the handler's columns in their order: the start record's columns, then those."""


def _started_running_sql(names: tuple[str, ...]) -> str:
    """`_STARTED_RUNNING_SQL`'s statement for `names` (`_HANDLER_FIELDS`), made once."""
    columns = ", ".join([*_INSERT_COLUMNS, *names])
    values = ", ".join("?" * (len(_INSERT_COLUMNS) + len(names)))
    sql = f"INSERT INTO executions ({columns}) VALUES ({values})"
    _STARTED_RUNNING_SQL[names] = sql
    return sql


_STARTED_DECIDED_SQL = (
    f"INSERT INTO executions ({', '.join([*_INSERT_COLUMNS, 'outcome_status', 'outcome_details'])})"
    f" VALUES ({', '.join('?' * (len(_INSERT_COLUMNS) + 2))})"
)
"""The INSERT of a start record still pending as its decision leaves it (`Store.decide`: a
document refused, or what it installs installed already, before anything ran): the start
record's columns, then the outcome's."""


def _fresh_record(
    key: ExecutionRef,
    state: ExecutionState,
    document: Any,
    version_number: int | None,
    handler: str | None,
    resumable: bool,
    received_at: float,
    updated_at: float,
) -> ExecutionRecord:
    """A record as a row no step has touched reads back (the schema's defaults for everything
    a run writes later): `Store._new_record`'s and `Store._started_running`'s, built by
    position, as `record_from_row` builds one (7 k instructions less than by keyword)."""
    return ExecutionRecord(
        key,
        state,
        document,
        version_number,
        handler,
        resumable,
        0,  # step
        None,  # checkpoint
        None,  # boot_id
        0,  # restarts
        None,  # progress
        None,  # outcome_status
        None,  # outcome_details
        None,  # note
        received_at,
        updated_at,
    )


_ACTIVE_SQL = f"SELECT {RECORD_COLUMNS} FROM executions WHERE {ACTIVE_WHERE} ORDER BY received_at"
"""`active`'s statement, made once (it is read once per job; issue 18): the index of the active
executions, read in its order (no sort)."""


class Taking(NamedTuple):
    """What start-next's answer is checked against (`Store.taking`)."""

    others: list[ExecutionRecord]
    """The active records but the taken execution's."""
    record: ExecutionRecord | None
    """The taken execution's own record, in any state (a re-delivery), or None."""


class StoreError(Exception):
    """The state database cannot be used (full disk, corrupt file, permissions)."""


class StoreLost(StoreError):
    """The database file was deleted or replaced while the agent had it open.

    SQLite would go on writing to the unlinked file, and the next start would find no record
    of what was running: exactly what could run a step twice. Every write checks for it first.
    """


class TransitionRefused(Exception):
    """A state change the lifecycle table does not list: a bug, never a database problem."""

    def __init__(self, key: ExecutionRef, old: ExecutionState | None, new: ExecutionState) -> None:
        before = "(no record)" if old is None else str(old)
        super().__init__(
            f"execution {key}: {before} -> {new} is not a transition of the lifecycle"
            " (jobs_agent.engine.lifecycle)"
        )
        self.key = key
        self.old = old
        self.new = new


class Store:
    """Synchronous SQLite access; the engine calls it from one worker thread (see AsyncStore)."""

    def __init__(self, path: Path, *, exclusive: bool = False, hold_marker: bool = True) -> None:
        """`exclusive`: SQLite's EXCLUSIVE locking mode, for `sim fleet` only. The WAL index
        then lives in this process's memory instead of a `-shm` file, so the store holds two
        descriptors instead of three (thousands of simulated things in one process); the
        price is that no other process can read the database while it is open, which a
        gateway's `jobs-agent status` needs. Durability is the same (same journal, same
        fsyncs). `hold_marker=False`, for `sim fleet` too: the start-next marker is opened
        for each write and emptied by its path, so no descriptor is held between jobs (a
        fleet's limit is descriptors per thing); the price is three system calls per job
        (two opens, two closes, no ftruncate), the marker's contents and timing are the same."""
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._make_if_new(path)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._set_up(exclusive)
            self._make_schema()
            row = self._db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
            self.database_id: str = str(row[0])
            self._cursor = self._db.cursor()
            """Every statement a job runs goes through this one cursor, used under `_lock`
            only: `Connection.execute` makes a cursor per statement (17 a plugin job, about
            1 us each here; issue 18). Each `execute` resets the statement it last ran."""
            info = os.stat(path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc
        self._identity = (info.st_dev, info.st_ino)
        self._take_marker = path.with_name(path.name + ".taking")
        self._marker_fd: int | None = None
        self._hold_marker = hold_marker
        self._marker_made = False
        """This store made (or emptied) the marker file: emptied, not unlinked, when done."""
        self._durable: bool | None = True
        """How the connection is set (`_sync`): True after the pragma above."""
        self._checkpointed = 0
        """`commits` when the WAL was last checkpointed (`CHECKPOINT_COMMITS`)."""
        self._record_unsynced = False
        """A taken execution's record is not yet fsynced: the start-next marker stays until it
        is (after a crash or a power cut it is what lets that execution run)."""
        self._pending: tuple[str, tuple[Any, ...]] | None = None
        """The INSERT of a taken execution's record (`record_taken`), written first in the
        next transaction (or before the next read)."""
        self._pending_key: ExecutionRef | None = None
        """The execution of that INSERT."""
        self._pending_record: ExecutionRecord | None = None
        """The record of that INSERT (`record_taken`'s): `transition` builds RUNNING's from it."""
        self._closing: list[tuple[ExecutionRef, tuple[Any, ...], tuple[Any, ...]]] = []
        """REPORTED writes waiting for the next transaction (`reported`, `_close_reported`)."""
        self._decided: set[ExecutionRef] = set()
        """Executions this store decided and wrote nothing for since (`reported`)."""
        self.durable_commits = 0
        """Commits that were fsynced, since the store was opened (benchmarks and tests)."""
        self.commits = 0
        """Every commit, fsynced or not, since the store was opened (tests)."""
        self._returned: list[tuple[Any, ...]] = []
        """The rows the last statement of the last transaction returned (`_commit`)."""

    def _set_up(self, exclusive: bool) -> None:
        """The connection's settings, once: WAL, fsynced commits, and no automatic checkpoint
        (`CHECKPOINT_COMMITS`)."""
        if exclusive:
            # Before the first WAL access: SQLite then never maps the shared-memory file.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")

    # -- the start-next window -----------------------------------------------------------------
    # StartNextPendingJobExecution moves an execution to IN_PROGRESS before the agent can
    # record it. A marker file, naming this database, is left while such a request is out and
    # removed once its answer is recorded: after a crash in that window, the one execution the
    # service then shows in progress without a record was never run, and may run; without the
    # marker (or with another database's), such an execution is one this database lost.

    def mark_taking(self) -> None:
        """Before asking for the next execution (no fsync: a marker lost in a crash only makes
        the restarted agent more careful). The file is made once and then written and emptied
        through the descriptor kept open: no file is created and unlinked per job (issue 18);
        an empty marker marks nothing."""
        if self._marker_fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            self._marker_fd = os.open(self._take_marker, flags, 0o600)
        try:
            os.pwrite(self._marker_fd, self.database_id.encode("ascii"), 0)
        finally:
            if not self._hold_marker:
                os.close(self._marker_fd)
                self._marker_fd = None
        self._marker_made = True

    def begin_taking(self) -> None:
        """`verify`, then `mark_taking`: one store call before each start-next (a job the
        database could not keep track of is never taken)."""
        self.verify()
        self.mark_taking()

    def taken(self) -> None:
        """The answer is recorded (or was: nothing pending). While the record is not yet on
        disk the marker stays: the next durable commit removes it."""
        if not self._record_unsynced:
            self._remove_marker()

    def _remove_marker(self) -> None:
        if self._marker_fd is not None:
            os.ftruncate(self._marker_fd, 0)
            return
        with contextlib.suppress(FileNotFoundError):
            if self._marker_made:  # not held open (`hold_marker`); never through a symlink
                flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
                os.close(os.open(self._take_marker, flags))
            else:
                os.unlink(self._take_marker)  # an earlier agent's

    def was_taking(self) -> bool:
        """Did this database's agent stop while a start-next request was out?"""
        try:
            return self._take_marker.read_text().strip() == self.database_id
        except OSError:
            return False

    def _make_if_new(self, path: Path) -> None:
        """Without a file at `path`, a new database, laid out whole under a temporary name and
        linked into place, as `sim fleet` makes its devices' (`sim/fleet.py`): SQLite writes it
        without an fsync of its own (the switch to WAL, the schema's transaction, the
        checkpoint at close), then the file is fsynced, linked to `path` (never over a database
        made meanwhile) and the directory fsynced. `path` then holds either nothing (a crash
        before the link: the next start makes it again) or the complete database. Made in
        place, a first start waited for 7 fdatasyncs here before its first request (the switch
        to WAL through a rollback journal, the WAL's creation, the schema's commit); now 2
        (issue 18). What an interrupted start left under the temporary name is removed first.
        The first write of the agent then makes the WAL again (its header's and the
        directory's syncs), as the first job after every restart does: the closed connection
        removed it."""
        if os.path.lexists(path):
            return
        fresh = path.with_name(path.name + ".new")
        for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        try:
            self._db = sqlite3.connect(str(fresh), isolation_level=None)
            try:
                self._db.execute("PRAGMA synchronous=OFF")  # before the switch to WAL: no sync
                self._db.execute("PRAGMA journal_mode=WAL")
                self._make_schema()
            finally:
                self._db.close()  # the last connection: it checkpoints and removes the WAL
            _fsync(fresh, os.O_RDONLY | os.O_NOFOLLOW)
            _link_new(fresh, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)
        with contextlib.suppress(OSError):  # as SQLite syncs its files' directory: best effort
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)

    def _make_schema(self) -> None:
        """The schema, its later columns and the meta rows, in one transaction: a new database
        is made whole or not at all, with one durable commit instead of one per statement (a
        first start made 14 fdatasyncs here before its first request, then 7; a new database
        is now laid out under a temporary name without them, `_make_if_new`; issue 18). A
        database this transaction already laid out, untouched since, is not asked again
        (`_laid_out`): a restart runs 4 statements to open it instead of 16, and takes no
        write lock.

        The layout of issue 18's round 12 (`LAYOUT`'s indexes, the outbox without its counter)
        is made in the same transaction, on an earlier agent's database once. One that cannot
        take it now (a disk with room for the WAL but not for it: 36-52 KB free, tried on a
        real tmpfs) is opened with its earlier layout, which every statement here reads and
        writes as well, and takes it at a later start: an upgraded agent starts wherever the
        agent before it did, and waits for space as that one did."""
        if self._laid_out():
            return
        try:
            self._schema_transaction(layout=True)
        except sqlite3.Error:
            self._schema_transaction(layout=False)

    def _laid_out(self) -> bool:
        """Is the schema as `_schema_transaction` left it? That transaction writes SQLite's
        schema cookie, which every change of the schema by anyone moves (an earlier agent's
        index, a later agent's column), with `LAYOUT_MARK` into `user_version`; a new database,
        an earlier agent's, or one opened with its earlier layout (a full disk) has another."""
        cookie, mark = self._db.execute(
            "SELECT schema_version, user_version FROM pragma_schema_version, pragma_user_version"
        ).fetchone()
        return bool(cookie) and mark == _layout_mark(cookie)

    def _schema_transaction(self, *, layout: bool) -> None:
        try:
            # executescript would commit an open transaction first: BEGIN is in its script.
            self._db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}{LAYOUT if layout else ''}")
            self._add_columns()
            if layout:
                self._outbox_without_counter()
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)",
                (os.urandom(16).hex(),),  # as secrets.token_hex(16), without its imports
            )
            if layout:  # the cookie as it stays once committed (user_version leaves it)
                (cookie,) = self._db.execute("PRAGMA schema_version").fetchone()
                self._db.execute(f"PRAGMA user_version = {_layout_mark(cookie)}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    self._db.execute("ROLLBACK")
            raise

    def _add_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(executions)")}
        for name, kind in ADDED_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE executions ADD COLUMN {name} {kind}")

    def _outbox_without_counter(self) -> None:
        """An earlier agent's outbox (`id ... AUTOINCREMENT`) is made again without its counter,
        its entries kept with their ids (`OUTBOX_COLUMNS`), in the schema's transaction: once,
        at the first start after the upgrade that can write it; an agent before it opens the
        new one as its own."""
        (made,) = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        ).fetchone()
        if "AUTOINCREMENT" not in made.upper():
            return
        columns = (
            "id, namespace, job_id, execution_number, status, status_details, created_at,"
            " attempts, last_error"
        )
        self._db.execute(f"CREATE TABLE outbox_plain ({OUTBOX_COLUMNS})")
        self._db.execute(f"INSERT INTO outbox_plain ({columns}) SELECT {columns} FROM outbox")
        self._db.execute("DROP TABLE outbox")  # and its row of sqlite_sequence
        self._db.execute("ALTER TABLE outbox_plain RENAME TO outbox")

    def verify(self) -> None:
        """Raise `StoreLost` if the open database is no longer the file at `path`."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError as exc:
            raise StoreError(f"cannot check the state database {self.path}: {exc}") from exc
        else:
            if (info.st_dev, info.st_ino) == self._identity:
                return
            what = "replaced"
        raise StoreLost(
            f"the state database {self.path} was {what} while the agent was running: no job"
            " is taken until the agent is restarted (it then reports what was running FAILED)"
        )

    def close(self) -> None:
        with self._lock:
            if self._pending is not None or self._closing:
                # Lost, a start record is an execution the marker says was never run: it runs
                # after the restart. Written, it is a record of it: the same, with a record to
                # show. A REPORTED lost is an outcome sent once more.
                with contextlib.suppress(StoreError):
                    self._write_locked([], None, durable=False)
            self._db.close()
            if self._marker_fd is not None:
                os.close(self._marker_fd)
                self._marker_fd = None

    # -- helpers ------------------------------------------------------------------------------
    def _write(
        self,
        statements: list[tuple[str, tuple[Any, ...]]],
        *,
        transition: Change | None = None,
        durable: bool = True,
    ) -> None:
        """Run statements in one durable transaction; on failure nothing is written. With
        `transition`, the change is checked in the same transaction (`Change`) and refused
        unless the lifecycle lists it. `durable=False`: committed without an
        fsync (a kill -9 loses nothing; a power cut may lose it, and every commit before the
        next durable one): only for the writes the module's docstring names."""
        with self._lock:
            self._write_locked(statements, transition, durable=durable)

    def _write_locked(
        self,
        statements: list[tuple[str, tuple[Any, ...]]],
        transition: Change | None,
        *,
        durable: bool,
        taken: bool = False,
    ) -> None:
        """`_write` with the lock held; a pending start record (`record_taken`) goes first,
        before the transition is checked, in the same transaction (`taken`: the statements
        write it themselves, `transition`). The file is checked
        (`verify`) before a durable commit: one that is not (REPORTED's, a pending start
        record's) promises nothing a power cut keeps either, and a database lost under it is
        found by the check before the next start-next (`begin_taking`) or the next durable
        commit, before any job is taken or run (a `stat` less per plugin job; issue 18)."""
        if durable:
            self.verify()
        first = [] if self._pending is None or taken else [self._pending]
        try:
            self._sync(durable)
            self._commit(first + statements, transition, checked_after=len(first))
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise StoreError(f"cannot write the state database {self.path}: {exc}") from exc
        self._pending = None
        self._pending_key = None
        self._pending_record = None
        self._closing.clear()
        if transition is not None:
            if transition.state is DECIDED:
                self._decided.add(transition.key)
            else:
                self._decided.discard(transition.key)
        self.commits += 1
        if durable:
            self.durable_commits += 1
            if self._record_unsynced:
                self._record_unsynced = False  # on disk now, with every commit before it
                self._remove_marker()

    def _sync(self, durable: bool) -> None:
        """Set the connection for a durable commit (fsynced) or not: WAL with
        synchronous=NORMAL does not fsync at commit, and with no automatic checkpoint (a
        checkpoint fsyncs; `CHECKPOINT_COMMITS`) such a commit may run on the event loop
        (`AsyncStore`). Only durable commits checkpoint, and never RUNNING's: it is on the path
        from a job's notification to its handler, and a checkpoint there (the WAL and the
        database file fsynced once more) was that job's latency; the next durable commit (the
        decision, which follows every run) checkpoints. The setting is set only when it
        changes (statements less per write)."""
        if durable != self._durable:
            self._durable = None  # unknown if the statement below fails
            self._cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _commit(
        self,
        statements: list[tuple[str, tuple[Any, ...]]],
        transition: Change | None,
        checked_after: int = 0,
    ) -> None:
        """One transaction; `transition` is checked after the first `checked_after`
        statements (a pending start record) and before the others. The rows the last statement
        returns (`RETURNING`) are kept in `_returned`, read before the COMMIT (a statement
        still stepping would hold the transaction open). A durable one that is not RUNNING's
        checkpoints the WAL after it when `CHECKPOINT_COMMITS` commits went by since the last."""
        cursor = self._cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            self._close_reported()
            rows: list[tuple[Any, ...]] = []
            for index, (sql, params) in enumerate(statements):
                checked = transition if index == checked_after else None
                if checked is not None and not checked.guarded:
                    self._check_transition(checked.key, checked.state)
                cursor.execute(sql, params)
                rows = cursor.fetchall()  # before `rowcount`, which RETURNING sets only then
                if checked is not None and checked.guarded and cursor.rowcount != 1:
                    self._check_transition(checked.key, checked.state)
            if len(statements) <= checked_after and transition is not None:
                self._check_transition(transition.key, transition.state)
            self._returned = rows
            cursor.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (SQLITE_FULL) has already rolled back: rolling back again would
            # raise "no transaction is active" and hide the real cause.
            if self._db.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        if (
            self._durable  # as `_sync` set it for this transaction
            and (transition is None or transition.state is not RUNNING)
            and self.commits - self._checkpointed >= CHECKPOINT_COMMITS
        ):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """A passive checkpoint after a committed transaction (`CHECKPOINT_COMMITS`). As
        SQLite's automatic one, it may copy less than the whole WAL (a reader in the way) and
        its failure fails no write: the commit before it is done; it is tried again at the next
        durable commit or `settle`."""
        try:
            self._cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            _log.warning("WAL not checkpointed", path=str(self.path), error=str(exc))
            return
        self._checkpointed = self.commits

    def _close_reported(self) -> None:
        """The REPORTED writes that waited (`reported`), first in this transaction. Each was
        let wait because the lifecycle allows it; should its guard still find the execution in
        another state (only a writer besides this store could do that), it writes nothing, as
        a refused change, and the transaction it rides in goes on: it is not that one's."""
        cursor = self._cursor
        for key, update, done in self._closing:
            cursor.execute(self._REPORTED_SQL, update)
            if cursor.rowcount == 1:
                cursor.execute(self._OUTBOX_DONE_SQL, done)
            else:
                _log.error("outcome not recorded as reported: its record changed", key=str(key))

    def _check_transition(self, key: ExecutionRef, new: ExecutionState) -> None:
        row = self._cursor.execute(
            f"SELECT state FROM executions WHERE {self._WHERE_KEY}", self._key_params(key)
        ).fetchone()
        old = None if row is None else execution_state(row[0])
        if (old, new) in TRANSITIONS:
            return
        if old is None:
            raise StoreError(f"execution {key} is not in the state database")
        raise TransitionRefused(key, old, new)

    def _query(
        self,
        sql: str,
        params: tuple[Any, ...] = (),
        *,
        leaving_out: ExecutionRef | None = None,
        about: ExecutionRef | None = None,
    ) -> list[tuple[Any, ...]]:
        """`leaving_out`: an execution the caller drops from what it reads; a pending start
        record that is its is not written first. `about`: the one execution read (`_unread`)."""
        with self._lock:
            if (self._pending is not None or self._closing) and self._unread(leaving_out, about):
                self._write_locked([], None, durable=False)  # what is read is written first
            try:
                return self._cursor.execute(sql, params).fetchall()
            except (sqlite3.Error, OverflowError, ValueError) as exc:
                raise StoreError(f"cannot read the state database {self.path}: {exc}") from exc

    def _unread(self, leaving_out: ExecutionRef | None, about: ExecutionRef | None) -> bool:
        """Whether a read must write what waits first. A waiting REPORTED changes what is read
        of its own execution only: a read of one execution (`about`, `get`) or of the active
        ones but one (`leaving_out`: `active`, `taking`; a DECIDED execution is not active)
        writes it first only when it is that execution's."""
        if self._pending is not None and (leaving_out is None or leaving_out != self._pending_key):
            return True
        if not self._closing:
            return False
        if leaving_out is None and about is None:
            return True
        return any(key in (leaving_out, about) for key, _, _ in self._closing)

    def settle(self) -> None:
        """Write what waits for the next transaction (a REPORTED, a start record) in one of its
        own, without an fsync: the engine calls it before it waits for work, so that an idle
        agent's database (`jobs-agent status`) says what happened, and a kill -9 while idle
        loses nothing. The WAL is checkpointed here first when `IDLE_CHECKPOINT_COMMITS` commits
        went by: off every job's path."""
        with self._lock:
            if self.commits - self._checkpointed >= IDLE_CHECKPOINT_COMMITS:
                self._checkpoint()
            if self._pending is not None or self._closing:
                self._write_locked([], None, durable=False)

    @property
    def unsettled(self) -> bool:
        """Something waits for the next transaction (`settle`)."""
        return self._pending is not None or bool(self._closing)

    _WHERE_KEY = "namespace = ? AND job_id = ? AND execution_number = ?"
    _REPORTED_SQL = (
        f"UPDATE executions SET state = ?, note = COALESCE(?, note), updated_at = ?"
        f" WHERE {_WHERE_KEY}{_GUARDS[ExecutionState.REPORTED]}"
    )
    _OUTBOX_DONE_SQL = f"DELETE FROM outbox WHERE id = ? AND {_WHERE_KEY}"
    _DECIDED_SQL = (
        "UPDATE executions SET state = ?, outcome_status = ?, outcome_details = ?,"
        f" updated_at = ? WHERE {_WHERE_KEY}{_GUARDS[ExecutionState.DECIDED]}"
    )
    _OUTBOX_INSERT_SQL = (
        "INSERT INTO outbox (namespace, job_id, execution_number, status,"
        " status_details, created_at) VALUES (?, ?, ?, ?, ?, ?)"
    )
    """`decide`'s statements, made once (issue 18)."""

    _TAKING_SQL = (
        f"SELECT 0, {RECORD_COLUMNS} FROM executions WHERE {ACTIVE_WHERE}"
        f" UNION ALL SELECT 1, {RECORD_COLUMNS} FROM executions WHERE {_WHERE_KEY}"
    )
    """`taking`'s statement: the active records (marked 0), then the one of the key (1)."""

    @staticmethod
    def _key_params(key: ExecutionRef) -> tuple[str, str, int]:
        """The key's columns: the default namespace (None) is stored as "", as it always was."""
        return (key.namespace or "", key.job_id, key.execution_number)

    # -- executions ---------------------------------------------------------------------------
    def get(self, key: ExecutionRef) -> ExecutionRecord | None:
        rows = self._query(
            f"SELECT {RECORD_COLUMNS} FROM executions WHERE {self._WHERE_KEY}",
            self._key_params(key),
            about=key,
        )
        return record_from_row(rows[0]) if rows else None

    def active(self, besides: ExecutionRef | None = None) -> list[ExecutionRecord]:
        """Executions the agent has taken and not finished, oldest first; with `besides`, all
        but that one. A start record still pending (`record_taken`) that is `besides`'s is not
        written first: the read does not need it, and it goes with RUNNING, in one transaction
        (issue 18: the check that start-next passed nothing over, between the two, had made
        each job write its record in a commit of its own)."""
        rows = self._query(_ACTIVE_SQL, leaving_out=besides)
        if besides is None:
            return [record_from_row(r) for r in rows]
        return [record for record in map(record_from_row, rows) if record.key != besides]

    def taking(self, key: ExecutionRef) -> Taking:
        """`active(besides=key)` and `key`'s own record in one statement: what the engine
        reads when start-next hands it `key` (did start-next pass over a record in progress?
        is `key` already recorded?), given to `record_taken` (issue 18: two reads, each a
        statement and a read transaction, before)."""
        rows = self._query(self._TAKING_SQL, self._key_params(key), leaving_out=key)
        others: list[ExecutionRecord] = []
        record = None
        for row in rows:
            found = record_from_row(row[1:])
            if row[0]:
                record = found
            elif found.key != key:
                others.append(found)
        return Taking(others, record)

    def recent(self, limit: int = 20) -> list[ExecutionRecord]:
        rows = self._query(
            f"SELECT {RECORD_COLUMNS} FROM executions ORDER BY updated_at DESC LIMIT ?", (limit,)
        )
        return [record_from_row(r) for r in rows]

    def record_received(
        self,
        key: ExecutionRef,
        document: Mapping[str, Any],
        version_number: int | None,
        state: ExecutionState = ExecutionState.RECEIVED,
        *,
        durable: bool = True,
    ) -> ExecutionRecord:
        """Record a new execution. The document is stored with the credentials of its
        presigned URLs removed: the service sends a fresh copy with every delivery."""
        now = time.time()
        redacted = redact_url_credentials(document)
        encoded = jsontext.dumps(redacted)
        self._write(
            [self._insert(key, state, encoded, version_number, now)],
            transition=Change(key, state),
            durable=durable,
        )
        return self._new_record(key, state, redacted, version_number, now)

    def _insert(
        self,
        key: ExecutionRef,
        state: ExecutionState,
        encoded: str,
        version_number: int | None,
        now: float,
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            _INSERT_SQL,
            (*self._key_params(key), str(state), encoded, version_number, now, now),
        )

    @staticmethod
    def _new_record(
        key: ExecutionRef,
        state: ExecutionState,
        redacted: dict[str, Any],
        version_number: int | None,
        now: float,
    ) -> ExecutionRecord:
        """The row just written, as `get` would read it back (the schema's defaults), without
        reading it back (issue 18; `tests/test_store_handoffs.py` compares the two). The
        document is `redact_url_credentials`'s copy (new dicts and lists, nothing shared with
        the caller's document, which is decoded JSON), not the JSON just written decoded again:
        a JSON decode less per job."""
        return _fresh_record(
            key,  # as read back: an ExecutionRef's namespace is None already, never ""
            state,
            redacted,
            version_number,
            None,  # handler
            False,  # resumable
            now,  # received_at
            now,  # updated_at
        )

    def record_taken(
        self,
        key: ExecutionRef,
        document: Mapping[str, Any],
        version_number: int | None,
        taking: Taking | None = None,
    ) -> tuple[ExecutionRecord, bool]:
        """The record of an execution start-next gave this device: the one it already has
        (a re-delivery), or a new STARTED one; and whether it is new.

        A new record is written first in the store's next transaction (the durable RUNNING
        one, or the durable DECIDED of a refused document; a read writes it before it reads),
        never in one of its own (issue 18: a transaction less per job). Its handler is
        launched only after that durable write, and until then the start-next marker stays,
        so that a crash or power cut that loses the record leaves an execution the restarted
        agent knows it never ran. Runs on the event loop (`AsyncStore`): no hand-off.
        `taking`: `key`'s record as `taking` read it just before, not read again.
        """
        # A read writes a record still pending first.
        record = self.get(key) if taking is None else taking.record
        if record is None:
            with self._lock:
                if self._pending is not None:  # never with the engine's order of calls
                    self._write_locked([], None, durable=False)
                now = time.time()
                redacted = redact_url_credentials(document)
                encoded = jsontext.dumps(redacted)
                state = STARTED
                self._pending = self._insert(key, state, encoded, version_number, now)
                self._pending_key = key
                self._record_unsynced = True
                record = self._new_record(key, state, redacted, version_number, now)
                self._pending_record = record
            created = True
        else:
            created = False
        if key.namespace is None:
            self.taken()
        return record, created

    def transition(
        self, key: ExecutionRef, state: ExecutionState, /, **fields: Any
    ) -> ExecutionRecord:
        """Move an execution to `state`, updating the given columns in the same transaction;
        returns the record as now stored, given back by the UPDATE itself (issue 18: a SELECT
        after the commit was a statement more per job), or, for a new job's RUNNING
        (`_started_running`), built here: its start record, still pending, is then written by
        one INSERT of the row as RUNNING leaves it. The UPDATE's text is looked up only when
        it runs (a tuple of the state and the names, hashed: about 3 k instructions a job)."""
        now = time.time()
        params: list[Any] = [str(state), now]
        for value in fields.values():
            params.append(int(value) if isinstance(value, bool) else value)
        with self._lock:  # `_returned` is this write's until the lock is let go
            started = self._pending_record
            if started is not None and (state is not RUNNING or self._pending_key != key):
                started = None
            pending = self._pending  # set with `_pending_record`, cleared with it
            if started is not None and pending is not None and fields.keys() == _HANDLER_FIELDS:
                # The start record is not written yet: one INSERT of the row as RUNNING leaves
                # it, not the INSERT of the STARTED row and an UPDATE of it in the same
                # transaction (a statement less per job; issue 18). The lifecycle lets STARTED
                # reach RUNNING, and the row did not exist: the change's guard is the INSERT's
                # own (one row, or an error that writes nothing and leaves the record pending).
                names = tuple(fields)
                insert = _STARTED_RUNNING_SQL.get(names)
                if insert is None:
                    insert = _started_running_sql(names)
                start = pending[1]
                row = (*start[:3], str(state), *start[4:7], now, *params[2:])
                self._write_locked(
                    [(insert, row)], Change(key, state, guarded=True), durable=True, taken=True
                )
                return self._started_running(started, fields, now)
            sql = _TRANSITION_SQL.get((state, *fields))
            if sql is None:
                sql = _transition_sql(state, tuple(fields))
            update = (sql, (*params, *self._key_params(key)))
            self._write_locked([update], Change(key, state, guarded=True), durable=True)
            rows, self._returned = self._returned, []
        if not rows:
            raise StoreError(f"execution {key} is not in the state database")
        return record_from_row(rows[0])

    @staticmethod
    def _started_running(
        started: ExecutionRecord, fields: Mapping[str, Any], now: float
    ) -> ExecutionRecord:
        """RUNNING's record of an execution whose start record was still pending: that record
        (`record_taken`'s, the schema's defaults) with the handler's columns and the time,
        as the UPDATE's `RETURNING` would give it back, without it (issue 18: the RETURNING
        made the UPDATE about 98 k instructions instead of about 31 k, its 24 columns read
        back and decoded again; `tests/test_store_statements.py` compares the two). Nothing
        else could change the row in between: any other write or read writes a pending start
        record first, and it is pending no more."""
        return _fresh_record(
            started.key,
            RUNNING,
            started.document,
            started.version_number,
            fields["handler"],
            bool(fields["resumable"]),
            started.received_at,
            now,  # updated_at
        )

    def save_checkpoint(self, key: ExecutionRef, data: Any) -> None:
        self._save_json(key, "checkpoint", data)

    def save_progress(self, key: ExecutionRef, progress: Mapping[str, Any]) -> None:
        self._save_json(key, "progress", dict(progress))

    def _save_json(self, key: ExecutionRef, column: str, value: Any) -> None:
        """A JSON column that does not change the state (a checkpoint, the latest progress)."""
        sql = f"UPDATE executions SET {column} = ?, updated_at = ? WHERE {self._WHERE_KEY}"
        self._write([(sql, (json.dumps(value), time.time(), *self._key_params(key)))])

    def decide(
        self,
        key: ExecutionRef,
        status: JobExecutionStatus | str,
        details: Mapping[str, str],
        packages: tuple[PackageRow, ...] = (),
        *,
        alone: bool = False,
    ) -> list[OutboxEntry]:
        """Record the outcome and queue its report, atomically, with the `packages` the job
        installed (only ever given with SUCCEEDED); the outbox as it now is (the reports to send
        next: read here, in the same hand-off to the store's thread). `alone`: the caller knows
        the outbox held nothing (`Outbox`): it is the new entry, its id the INSERT's rowid
        (`Cursor.lastrowid`: the outbox's id is its rowid) instead of a read of the outbox (a
        statement and a read transaction per job; issue 18). Not given back by the INSERT's
        `RETURNING`: that made the INSERT about 12 k instructions dearer (a row stepped out and
        fetched), for the rowid SQLite keeps anyway."""
        status = job_execution_status(status)
        now = time.time()
        encoded = jsontext.dumps(dict(details))
        where = self._key_params(key)  # once for the two statements (issue 18)
        statements = [
            (self._DECIDED_SQL, (_DECIDED_VALUE, status, encoded, now, *where)),
            *(self._package_statement(row, now) for row in packages),
            (self._OUTBOX_INSERT_SQL, (*where, str(status), encoded, now)),
        ]
        decided = Change(key, DECIDED, guarded=True)
        with self._lock:  # the cursor's `lastrowid` is this write's until the lock is let go
            pending = self._pending  # set with `_pending_key`, cleared with it
            taken = pending is not None and self._pending_key == key
            if pending is not None and taken:
                # The start record is not written yet (a document refused before anything
                # ran): one INSERT of the row as the decision leaves it, not the INSERT of the
                # STARTED row and an UPDATE of it in the same transaction (a statement less;
                # issue 18), as RUNNING's (`transition`). The lifecycle lets STARTED reach
                # DECIDED, and the row did not exist: the change's guard is the INSERT's own.
                start = pending[1]
                row = (*start[:3], _DECIDED_VALUE, *start[4:7], now, status, encoded)
                statements[0] = (_STARTED_DECIDED_SQL, row)
            self._write_locked(statements, decided, durable=True, taken=taken)
            # The last INSERT's rowid: the outbox's, the transaction's last statement (the
            # COMMIT, and a checkpoint after it, insert nothing).
            entry_id = self._cursor.lastrowid
        if not alone:
            return self.outbox()
        assert entry_id is not None  # an INSERT ran: lastrowid is None only before any
        details = StatusDetails(details)  # sanitised by the caller, as a stored one was
        return [OutboxEntry(entry_id, key, status, details, now, 0, None)]

    @staticmethod
    def _package_statement(row: PackageRow, now: float) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO packages (name, version, attributes, report, aws_reports, seq,"
            " updated_at) VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM packages),"
            " ?) ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
            " attributes = excluded.attributes, report = excluded.report,"
            " aws_reports = excluded.aws_reports, seq = excluded.seq,"
            " updated_at = excluded.updated_at",
            (
                row.name,
                row.version,
                json.dumps(row.attributes),
                int(row.report),
                int(row.aws_reports),
                now,
            ),
        )

    def packages(self, *, pending: bool = False) -> list[PackageRow]:
        """The packages the device's jobs installed (`pending`: those still to be reported,
        removals included), by name."""
        where = "report = 1" if pending else "version IS NOT NULL"
        rows = self._query(
            "SELECT name, version, attributes, report, aws_reports, seq FROM packages"
            f" WHERE {where} ORDER BY name"
        )
        return [
            PackageRow(r[0], r[1], json.loads(r[2]), bool(r[3]), bool(r[4]), r[5]) for r in rows
        ]

    def packages_reported(self, rows: list[PackageRow]) -> None:
        """`$package` says these (or never will): clear their flag unless a later job wrote
        the package again meanwhile; forget removals nobody has to report any more."""
        self._write(
            [
                *(
                    ("UPDATE packages SET report = 0 WHERE name = ? AND seq = ?", (r.name, r.seq))
                    for r in rows
                ),
                ("DELETE FROM packages WHERE version IS NULL AND report = 0", ()),
            ]
        )

    def reported(self, entry_id: int, key: ExecutionRef, note: str | None = None) -> None:
        """The service accepted (or will never accept) the outcome: close the execution.

        Without an fsync, and without a transaction of its own when this store decided the
        execution and wrote nothing for it since (the lifecycle allows it; issue 18: a
        transaction and its four statements less per job): written first in the next one.
        Lost in a power cut, or in a kill -9 before that, the execution is DECIDED again and its
        outcome is sent again, which the service refuses as terminal and the outbox then
        closes (`Outbox._refused_as_ended`). Any other REPORTED is written and checked now."""
        where = self._key_params(key)  # once for the two statements (issue 18)
        update = (_REPORTED_VALUE, note, time.time(), *where)
        done = (entry_id, *where)
        with self._lock:
            if key in self._decided:
                self._decided.discard(key)
                self._closing.append((key, update, done))
                return
            self._write_locked(
                [(self._REPORTED_SQL, update), (self._OUTBOX_DONE_SQL, done)],
                Change(key, REPORTED, guarded=True),
                durable=False,
            )

    def cancelled(self, key: ExecutionRef, note: str) -> None:
        """The cloud ended the execution: drop anything queued for it, report nothing."""
        self._write(
            [
                (
                    f"UPDATE executions SET state = ?, note = ?, updated_at = ?"
                    f" WHERE {self._WHERE_KEY}{_GUARDS[ExecutionState.CANCELLED]}",
                    (str(ExecutionState.CANCELLED), note, time.time(), *self._key_params(key)),
                ),
                ("DELETE FROM outbox WHERE " + self._WHERE_KEY, self._key_params(key)),
            ],
            transition=Change(key, ExecutionState.CANCELLED, guarded=True),
        )

    def probe(self) -> None:
        """A durable write that changes nothing of note: can the database be written now?"""
        self._write(
            [("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)", (str(time.time()),))]
        )

    # -- outbox -------------------------------------------------------------------------------
    def outbox(self) -> list[OutboxEntry]:
        rows = self._query(
            "SELECT id, namespace, job_id, execution_number, status, status_details, created_at,"
            " attempts, last_error FROM outbox ORDER BY id"
        )
        return [
            OutboxEntry(
                id=r[0],
                key=ExecutionRef(r[1] or None, r[2], r[3]),
                status=job_execution_status(r[4]),
                status_details=StatusDetails(json.loads(r[5])),  # sanitised before it was stored
                created_at=r[6],
                attempts=r[7],
                last_error=r[8],
            )
            for r in rows
        ]

    def outbox_attempt_failed(self, entry_id: int, key: ExecutionRef, error: str) -> None:
        """`key`: the entry's execution (an id may be given again once its entry is gone)."""
        self._write(
            [
                (
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?"
                    f" WHERE id = ? AND {self._WHERE_KEY}",
                    (error[:500], entry_id, *self._key_params(key)),
                )
            ]
        )

    def prune(self, keep: int = 500) -> None:
        """Forget finished executions beyond the most recent `keep` (the DB stays small)."""
        finished = tuple(str(state) for state in FINISHED_STATES)
        marks = ",".join("?" for _ in finished)
        self._write(
            [
                (
                    f"DELETE FROM executions WHERE state IN ({marks}) AND rowid NOT IN ("
                    "SELECT rowid FROM executions ORDER BY updated_at DESC LIMIT ?)",
                    (*finished, keep),
                )
            ]
        )
