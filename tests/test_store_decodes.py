"""What the state store decodes per plugin job (issue 18): the JSON it reads back from SQLite,
counted on a real file with the calls in the engine's order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


class CountingJson:
    """The `json` module as `store.py` sees it, counting its decodes."""

    def __init__(self) -> None:
        self.loads_calls = 0
        self.dumps = json.dumps

    def loads(self, text: str | bytes) -> Any:
        self.loads_calls += 1
        return json.loads(text)


def test_a_taken_record_is_not_decoded_from_the_json_just_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`record_taken` returned its record's document by decoding the JSON it had just encoded
    for the row (two decodes a job in store.py with the outbox's status details); the document
    is now the redacted copy itself (one). What `get` reads back is the same record
    (tests/test_store_handoffs.py)."""
    counting = CountingJson()
    monkeypatch.setattr(store_module, "json", counting)
    store = Store(tmp_path / "state.db")
    jobs = 3
    try:
        for number in range(jobs):
            ref = ExecutionRef(None, f"job-{number}", 1)
            store.begin_taking()
            document = {"operation": "x", "url": "https://h/f?X-Amz-Signature=secret", "n": [1]}
            record, created = store.record_taken(ref, document, 1)
            assert created and "secret" not in str(record.document)
            assert record.document["n"] is not document["n"]  # nothing shared with the caller
            assert store.active(ref) == []
            store.transition(ref, ExecutionState.RUNNING, handler="x")
            queued = store.decide(ref, JobExecutionStatus.SUCCEEDED, {})
            store.reported(queued[0].id, ref)
        assert counting.loads_calls == 1 * jobs
    finally:
        store.close()


def test_a_row_s_columns_reach_the_fields_of_their_names() -> None:
    """`record_from_row` gives the record's fields by position (issue 18): each column of
    `RECORD_COLUMNS`, a value of its own, lands in the field of its name, as keywords would
    put it."""
    from jobs_agent.engine.records import (
        RECORD_COLUMNS,
        Deferral,
        ExecutionRecord,
        record_from_row,
    )

    values: dict[str, Any] = {
        "namespace": "ns",
        "job_id": "job",
        "execution_number": 7,
        "state": "running",
        "document": '{"operation": "x"}',
        "version_number": 3,
        "handler": "h",
        "resumable": 1,
        "step": 2,
        "checkpoint": '{"c": 1}',
        "boot_id": "boot",
        "restarts": 4,
        "progress": '{"p": "1"}',
        "outcome_status": "FAILED",
        "outcome_details": '{"reason": "r"}',
        "note": "n",
        "received_at": 10.5,
        "updated_at": 11.5,
        "deferred_kind": "window",
        "deferred_until": 12.5,
        "deferred_reason": "why",
        "deferred_since": 9.5,
        "deferred_total_seconds": 8.5,
        "deferrals": 5,
    }
    columns = [name.strip() for name in RECORD_COLUMNS.split(",")]
    assert sorted(columns) == sorted(values)
    record = record_from_row(tuple(values[name] for name in columns))
    assert record == ExecutionRecord(
        key=ExecutionRef("ns", "job", 7),
        state=ExecutionState.RUNNING,
        document={"operation": "x"},
        version_number=3,
        handler="h",
        resumable=True,
        step=2,
        checkpoint={"c": 1},
        boot_id="boot",
        restarts=4,
        progress={"p": "1"},
        outcome_status=JobExecutionStatus.FAILED,
        outcome_details={"reason": "r"},
        note="n",
        received_at=10.5,
        updated_at=11.5,
        deferral=Deferral("window", 12.5, "why", 9.5),
        deferred_total_seconds=8.5,
        deferrals=5,
    )
