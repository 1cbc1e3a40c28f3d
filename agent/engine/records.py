"""The rows of the state database: its schema, and the records `Store` reads back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jobs_agent.engine.lifecycle import ExecutionState
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus, StatusDetails

SCHEMA = """
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
    PRIMARY KEY (namespace, job_id, execution_number)
);
CREATE INDEX IF NOT EXISTS executions_state ON executions (state);
CREATE INDEX IF NOT EXISTS executions_updated ON executions (updated_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    job_id TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
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


@dataclass(frozen=True, slots=True)
class OutboxEntry:
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
    " outcome_details, note, received_at, updated_at"
)
"""What `record_from_row` reads, in its order."""


def record_from_row(row: tuple[Any, ...]) -> ExecutionRecord:
    return ExecutionRecord(
        key=ExecutionRef(row[0] or None, row[1], row[2]),
        state=ExecutionState(row[3]),
        document=json.loads(row[4]),
        version_number=row[5],
        handler=row[6],
        resumable=bool(row[7]),
        step=row[8],
        checkpoint=_loads(row[9]),
        boot_id=row[10],
        restarts=row[11],
        progress=_loads(row[12]),
        outcome_status=None if row[13] is None else JobExecutionStatus(row[13]),
        outcome_details=_loads(row[14]),
        note=row[15],
        received_at=row[16],
        updated_at=row[17],
    )
