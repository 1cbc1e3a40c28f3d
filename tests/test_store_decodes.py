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
