"""How often the store checks that its database is still the file at its path (`Store.verify`:
a `stat` each, about 9 k instructions), and that a file lost at any point of a job is still
found before the next job is taken (issue 18)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs_agent.engine import store as store_module
from jobs_agent.engine.store import ExecutionState, Store, StoreLost
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


@contextmanager
def stats_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The `stat`s of `path` the store makes meanwhile."""
    made: list[str] = []
    real = os.stat

    def counted(target: os.PathLike[str] | str, *args: object, **kwargs: object) -> object:
        if os.fspath(target) == str(path):
            made.append(os.fspath(target))
        return real(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "stat", counted)
    try:
        yield made
    finally:
        monkeypatch.undo()


def drain_job(store: Store, number: int) -> None:
    """One job as the engine drains a queue: the check before start-next, what it gave read
    and recorded, RUNNING (fsynced, with the start record), the decision (fsynced)."""
    key = ExecutionRef(None, f"job-{number}", 1)
    store.begin_taking()
    store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
    store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
    [entry] = store.decide(key, JobExecutionStatus.SUCCEEDED, {}, alone=True)
    store.reported(entry.id, key)


def test_a_drained_job_stats_its_database_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the start-next and before the decision's commit: not again before RUNNING's,
    a round trip after the first (3 a job before); two fsynced commits a job still."""
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        drain_job(store, 0)
        durable = store.durable_commits
        with stats_of(path, monkeypatch) as made:
            for number in range(1, 4):
                drain_job(store, number)
        assert len(made) == 2 * 3
        assert store.durable_commits - durable == 2 * 3
    finally:
        store.close()


def test_every_other_durable_commit_stats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a start record's commit after a check goes without one: a RUNNING of a record
    already written, a start record's with no check since the last durable commit, a
    progress or checkpoint write each stat the file."""
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        key = ExecutionRef(None, "job", 1)
        store.verify()
        store.record_received(key, {"operation": "quick"}, 1, ExecutionState.STARTED)
        other = ExecutionRef(None, "other", 1)
        store.record_taken(other, {"operation": "quick"}, 1, store.taking(other))
        with stats_of(path, monkeypatch) as made:
            # The start record's, with no check since record_received's durable commit.
            store.transition(other, ExecutionState.RUNNING, handler="quick", resumable=False)
            store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
            store.save_progress(key, {"percent": 1})
            store.save_checkpoint(key, {"step": 1})
        assert len(made) == 4
    finally:
        store.close()


@pytest.mark.parametrize("when", ["before start-next", "during start-next", "during the run"])
def test_a_database_lost_at_any_point_of_a_job_is_found_before_the_next_is_taken(
    tmp_path: Path, when: str
) -> None:
    """Lost before the start-next: nothing is taken. Within the start-next's round trip: the
    record is written to the lost file and the marker emptied (a restart on another file
    finds the execution in progress without a record, and never runs it), the decision's check
    finds the loss, and so does the next start-next's. During the run: the decision's."""
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
        if when == "during start-next":
            path.unlink()
        store.record_taken(key, {"operation": "quick"}, 1, store.taking(key))
        store.transition(key, ExecutionState.RUNNING, handler="quick", resumable=False)
        assert not store.was_taking()  # the marker is empty: no restart runs it
        if when == "during the run":
            path.unlink()
        with pytest.raises(StoreLost):
            store.decide(key, JobExecutionStatus.SUCCEEDED, {}, alone=True)
        with pytest.raises(StoreLost):
            store.begin_taking()
    finally:
        store.close()
