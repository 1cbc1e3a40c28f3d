"""The rows of the state database: its schema, and the records `Store` reads back."""

from __future__ import annotations

import json
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.engine.lifecycle import ACTIVE_STATES, ExecutionState, execution_state
from jobs_agent.vocabulary import (
    ExecutionRef,
    JobExecutionStatus,
    StatusDetails,
    job_execution_status,
)


def state_in(states: tuple[ExecutionState, ...]) -> str:
    """`state` is one of `states`, as comparisons: SQLite codes an IN list of more than two
    values as a temporary table, built at every run of a statement (a page zeroed, allocations:
    10 per plugin job, where the index of the active executions and the lifecycle's guards
    evaluate it; issue 18), and a chain of comparisons as itself."""
    return "(" + " OR ".join(f"state = {str(state)!r}" for state in states) + ")"


ACTIVE_WHERE = state_in(ACTIVE_STATES)
"""The active executions, as both the index of them and `Store.active` write it: SQLite reads a
partial index only for a query whose condition is its own, term for term (values, not `?`)."""

OUTBOX_COLUMNS = """
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    job_id TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
"""
"""The outbox's id is its rowid, one more than the highest queued: the outbox is sent in id
order, and an id may be given again once its entry is gone, so every write by id also names
the entry's execution (`Store.reported`, `Store.outbox_attempt_failed`). Not AUTOINCREMENT,
whose counter (`sqlite_sequence`) was one more page written by every decision (issue 18; an
earlier agent's outbox is made again without it: `Store._make_schema`)."""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    namespace TEXT NOT NULL,
    job_id TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    state TEXT NOT NULL,
    document TEXT NOT NULL,
    version_number INTEGER,
    handler TEXT,
    resumable INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    boot_id TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    outcome_status TEXT,
    outcome_details TEXT,
    note TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deferred_kind TEXT,
    deferred_until REAL,
    deferred_reason TEXT,
    deferred_since REAL,
    deferred_total_seconds REAL NOT NULL DEFAULT 0,
    deferrals INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, job_id, execution_number)
);
CREATE TABLE IF NOT EXISTS outbox ({OUTBOX_COLUMNS});
CREATE TABLE IF NOT EXISTS packages (
    name TEXT PRIMARY KEY,
    version TEXT,
    attributes TEXT NOT NULL DEFAULT '{{}}',
    report INTEGER NOT NULL DEFAULT 0,
    aws_reports INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""

LAYOUT = f"""
DROP INDEX IF EXISTS executions_state;
DROP INDEX IF EXISTS executions_updated;
CREATE INDEX IF NOT EXISTS executions_active ON executions (received_at) WHERE {ACTIVE_WHERE};
"""
"""The executions keep one index besides their key: of the active ones, in the order `Store.active`
reads them (once per job). An execution enters it when taken and leaves it when decided, and no
other write of a job touches it; the indexes of every execution by `state` and by `updated_at`
(dropped from a database an earlier agent wrote) had each state change rewrite a page of each:
15.4 -> 9.4 pages a plugin job (tests/test_store_pages.py; issue 18). `recent` and `prune`, which
read by `updated_at`, scan the 500 or so kept rows instead: a status command, and once every 200
outcomes."""

ADDED_COLUMNS = (
    ("deferred_kind", "TEXT"),
    ("deferred_until", "REAL"),
    ("deferred_reason", "TEXT"),
    ("deferred_since", "REAL"),
    ("deferred_total_seconds", "REAL NOT NULL DEFAULT 0"),
    ("deferrals", "INTEGER NOT NULL DEFAULT 0"),
)
"""Columns added after the first schema (deferral, issue 16): a database written by an earlier
agent gets them on open (`ALTER TABLE ... ADD COLUMN`), so an upgrade keeps its records."""


@model(slots=True)
class ExecutionRecord:
    """What the state database holds of one execution: enough to resume it after a crash."""

    key: ExecutionRef
    state: ExecutionState
    document: dict[str, Any]
    version_number: int | None
    handler: str | None
    resumable: bool
    step: int
    checkpoint: Any
    boot_id: str | None
    restarts: int
    progress: dict[str, Any] | None
    outcome_status: JobExecutionStatus | None
    outcome_details: dict[str, str] | None
    note: str | None
    received_at: float
    updated_at: float
    deferral: Deferral | None = None
    """Set while the execution is (or was last) deferred: kind, until when, why."""
    deferred_total_seconds: float = 0.0
    """How long the execution has waited in all, over its finished deferrals."""
    deferrals: int = 0


@model(slots=True)
class Deferral:
    """Why and until when an execution waits (the `deferred_*` columns)."""

    kind: str
    """`handler` (the handler said "not now"), `window` (a maintenance window), `consent`."""
    until: float | None
    """Epoch seconds (wall clock: a reboot changes nothing); None: until consent is given."""
    reason: str
    since: float


@model(slots=True)
class PackageRow:
    """One package as a job left it: `version` None when the job removed it; `report` True
    while the agent still has to tell `$package`; `aws_reports` True when AWS IoT Jobs tells it
    (`destinationPackageVersions`): never the agent, not even at start-up; `seq` orders the
    writes."""

    name: str
    version: str | None
    attributes: dict[str, str]
    report: bool
    aws_reports: bool = False
    seq: int = 0


@model(slots=True)
class OutboxEntry:
    """A status update kept until the service accepts it, so that none is lost."""

    id: int
    key: ExecutionRef
    status: JobExecutionStatus
    status_details: StatusDetails
    created_at: float
    attempts: int
    last_error: str | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


RECORD_COLUMNS = (
    "namespace, job_id, execution_number, state, document, version_number, handler,"
    " resumable, step, checkpoint, boot_id, restarts, progress, outcome_status,"
    " outcome_details, note, received_at, updated_at, deferred_kind, deferred_until,"
    " deferred_reason, deferred_since, deferred_total_seconds, deferrals"
)
"""What `record_from_row` reads, in its order."""


def record_from_row(row: tuple[Any, ...]) -> ExecutionRecord:
    """The record of a row of `RECORD_COLUMNS`. Its fields are given by position, in the
    model's order (`tests/test_store_decodes.py` holds the two together): keywords cost about
    7 k instructions more a record, read once a job (issue 18)."""
    return ExecutionRecord(
        ExecutionRef(row[0] or None, row[1], row[2]),  # key
        execution_state(row[3]),  # state
        json.loads(row[4]),  # document
        row[5],  # version_number
        row[6],  # handler
        bool(row[7]),  # resumable
        row[8],  # step
        _loads(row[9]),  # checkpoint
        row[10],  # boot_id
        row[11],  # restarts
        _loads(row[12]),  # progress
        None if row[13] is None else job_execution_status(row[13]),  # outcome_status
        _loads(row[14]),  # outcome_details
        row[15],  # note
        row[16],  # received_at
        row[17],  # updated_at
        None if row[18] is None else Deferral(row[18], row[19], row[20] or "", row[21]),
        row[22] or 0.0,  # deferred_total_seconds
        row[23] or 0,  # deferrals
    )
