"""Optional SQLite persistence of the emulator's state (`jobs-agent sim serve --state PATH`).

Write-through: every operation of `JobsService` that changed something saves the changed records
in one transaction before its events are published, so a restarted emulator finds exactly what
devices were last told. Records are stored as JSON documents keyed by their identity; the schema
is deliberately dumb because only the emulator reads it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from jobs_agent.emulator.configs import (
    AbortConfig,
    RolloutConfig,
    SchedulingConfig,
)
from jobs_agent.emulator.model import (
    Execution,
    ExecutionStatus,
    HistoryEntry,
    Job,
    JobStatus,
    RetryCriterion,
    Source,
    Thing,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    execution_number INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, thing_name, execution_number)
);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, key)
);
"""


@dataclass(frozen=True, slots=True)
class LoadedState:
    things: list[Thing]
    jobs: list[Job]
    executions: list[Execution]
    history: list[HistoryEntry]
    records: dict[str, list[dict[str, Any]]]
    """Other records by kind (thing groups...), as the service saved them."""


_CONFIGS: dict[str, type[RolloutConfig] | type[AbortConfig] | type[SchedulingConfig]] = {
    "rollout": RolloutConfig,
    "abort": AbortConfig,
    "scheduling": SchedulingConfig,
}


def _job_to_json(job: Job) -> dict[str, Any]:
    data = {f.name: getattr(job, f.name) for f in fields(job)}
    data["status"] = job.status.value
    data["retry_criteria"] = [c.to_json() for c in job.retry_criteria]
    for name in _CONFIGS:
        value = data[name]
        data[name] = None if value is None else value.to_json()
    return data


def _job_from_json(data: dict[str, Any]) -> Job:
    data = dict(data)
    data["status"] = JobStatus(data["status"])
    data["retry_criteria"] = [
        RetryCriterion(c["failureType"], c["numberOfRetries"]) for c in data["retry_criteria"]
    ]
    for name, config in _CONFIGS.items():
        if data.get(name) is not None:
            data[name] = config.from_json(data[name])
    return Job(**data)


def _execution_to_json(execution: Execution) -> dict[str, Any]:
    data = asdict(execution)
    data.pop("summary_cache", None)
    data["status"] = execution.status.value
    return data


def _execution_from_json(data: dict[str, Any]) -> Execution:
    data = dict(data)
    data["status"] = ExecutionStatus(data["status"])
    return Execution(**data)


def _history_to_json(entry: HistoryEntry) -> dict[str, Any]:
    data = entry._asdict()
    data["from_status"] = None if entry.from_status is None else entry.from_status.value
    data["to_status"] = entry.to_status.value
    data["source"] = entry.source.value
    return data


def _history_from_json(data: dict[str, Any]) -> HistoryEntry:
    data = dict(data)
    data["from_status"] = (
        None if data["from_status"] is None else ExecutionStatus(data["from_status"])
    )
    data["to_status"] = ExecutionStatus(data["to_status"])
    data["source"] = Source(data["source"])
    return HistoryEntry(**data)


class StateStore:
    """One SQLite file; used only under the service lock, so one connection is enough."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def load(self) -> LoadedState:
        with self._lock:
            things = [
                Thing(**json.loads(row[0])) for row in self._db.execute("SELECT data FROM things")
            ]
            jobs = [
                _job_from_json(json.loads(row[0]))
                for row in self._db.execute("SELECT data FROM jobs")
            ]
            executions = [
                _execution_from_json(json.loads(row[0]))
                for row in self._db.execute("SELECT data FROM executions")
            ]
            history = [
                _history_from_json(json.loads(row[0]))
                for row in self._db.execute("SELECT data FROM history ORDER BY seq")
            ]
            records: dict[str, list[dict[str, Any]]] = {}
            for kind, data in self._db.execute("SELECT kind, data FROM records ORDER BY kind, key"):
                records.setdefault(kind, []).append(json.loads(data))
        return LoadedState(things, jobs, executions, history, records)

    def save(
        self,
        *,
        things: Iterable[Thing] = (),
        jobs: Iterable[Job] = (),
        executions: Iterable[Execution] = (),
        history: Iterable[HistoryEntry] = (),
        deleted_jobs: Iterable[str] = (),
        deleted_executions: Iterable[tuple[str, str, int]] = (),
        records: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO things (name, data) VALUES (?, ?)",
                    [(t.name, json.dumps(asdict(t))) for t in things],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO jobs (job_id, data) VALUES (?, ?)",
                    [(j.job_id, json.dumps(_job_to_json(j))) for j in jobs],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO executions "
                    "(job_id, thing_name, execution_number, data) VALUES (?, ?, ?, ?)",
                    [
                        (
                            e.job_id,
                            e.thing_name,
                            e.execution_number,
                            json.dumps(_execution_to_json(e)),
                        )
                        for e in executions
                    ],
                )
                db.executemany(
                    "INSERT INTO history (data) VALUES (?)",
                    [(json.dumps(_history_to_json(h)),) for h in history],
                )
                db.executemany(
                    "DELETE FROM executions WHERE job_id = ? AND thing_name = ? "
                    "AND execution_number = ?",
                    list(deleted_executions),
                )
                db.executemany("DELETE FROM jobs WHERE job_id = ?", [(j,) for j in deleted_jobs])
                for (kind, key), value in (records or {}).items():
                    if value is None:
                        db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO records (kind, key, data) VALUES (?, ?, ?)",
                            (kind, key, json.dumps(value)),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
