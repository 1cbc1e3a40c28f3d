"""A state database lost at any point of a job is found before the job's handler runs or the
next job is taken (`Store.verify` before every durable commit). Round 21 measured skipping the
check at RUNNING's commit (the check before the start-next was a round trip earlier: a `stat`,
about 9 k instructions, a job) and left it out: a file lost within that round trip would have
had the handler run on a record no restart can read, and its outcome told without a record."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs_agent.engine.store import ExecutionState, Store, StoreLost
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


def drain_job(store: Store, number: int) -> None:
    """One job as the engine drains a queue: the check before start-next, what it gave read
    and recorded, RUNNING (fsynced, with the start record), the decision (fsynced)."""
    key = ExecutionRef(None, f"job-{number}", 1)
    store.begin_taking()
    store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {}, alone=True)
    store.reported(entry.id, key)


@pytest.mark.parametrize("when", ["before start-next", "during start-next", "during the run"])
def test_a_database_lost_at_any_point_of_a_job_is_found_before_it_runs_or_the_next_is_taken(
    tmp_path: Path, when: str
) -> None:
    """Lost before the start-next: nothing is taken. Within the start-next's round trip:
    RUNNING's commit finds it, so the handler never runs on a record no restart can read.
    During the run: the decision's check, and the next start-next's."""
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        drain_job(store, 0)
        key = ExecutionRef(None, "job-1", 1)
        if when == "before start-next":
            path.unlink()
            with pytest.raises(StoreLost):
                store.begin_taking()
            return
        store.begin_taking()
        store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
        if when == "during start-next":
            path.unlink()
            with pytest.raises(StoreLost):
                store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
            return
        store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
        path.unlink()
        with pytest.raises(StoreLost):
            store.decide(key, JobExecutionStatus.SUCCEEDED, {}, alone=True)
        with pytest.raises(StoreLost):
            store.begin_taking()
    finally:
        store.close()
