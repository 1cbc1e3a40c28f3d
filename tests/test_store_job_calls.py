"""The store's own Python per drained plugin job, counted by calls (issue 18): what it builds
and reads again that a job does not need. The store's calls in the engine's order on a real
SQLite file; no timing."""

from __future__ import annotations

from pathlib import Path

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus
from tests.helpers.calls import Calls

JOBS = 3


def drain_job(store: Store, key: ExecutionRef) -> None:
    """One job as the engine drains a queue (its reference made by the caller, as the
    engine's comes from start-next's answer)."""
    store.begin_taking()
    store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {"percent": "100"}, alone=True)
    store.reported(entry.id, key)


def test_a_drained_job_makes_no_reference_and_reads_its_key_four_times(tmp_path: Path) -> None:
    """The start record's key is the caller's reference, not a copy made of it (an
    `ExecutionRef` built, about 5 k instructions); the key's columns are made once for the
    decision's two statements and once for REPORTED's two (6 -> 4 a job with the start-next's
    read and the start record's, 1.2 k each); RUNNING's INSERT looks up no UPDATE text it does
    not run (about 3 k)."""
    store = Store(tmp_path / "state.db")
    try:
        drain_job(store, ExecutionRef(None, "job-0", 1))
        keys = [ExecutionRef(None, f"job-{number}", 1) for number in range(1, 1 + JOBS)]
        calls = Calls((store_module.__file__, ExecutionRef.__post_init__.__code__.co_filename))
        with calls.counting():
            for key in keys:
                drain_job(store, key)
    finally:
        store.close()
    assert calls.of("vocabulary.py", "__post_init__") == 0, calls.by_name.most_common()
    assert calls.of("store.py", "_key_params") == 4 * JOBS, calls.by_name.most_common()
    assert calls.of("store.py", "_transition_sql") == 0
    # The INSERT's text only (`_STARTED_RUNNING_SQL`), not the UPDATE's besides (2 -> 1).
    assert calls.by_name[("builtin", "dict.get")] == JOBS, calls.by_name.most_common()
