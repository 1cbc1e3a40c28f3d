"""The state store's hand-offs to its worker thread (issue 18): a job's calls that never fsync run
on the event loop when the worker has nothing of this store, and never overtake a call still on
the worker. A real SQLite file and the real worker thread; no timing."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jobs_agent.engine.async_store import (
    INLINE_COMMIT_SECONDS,
    SLOW_COOL_DOWN_SECONDS,
    AsyncStore,
)
from jobs_agent.engine.store import ExecutionState, Store, StoreError, TransitionRefused
from jobs_agent.vocabulary import ExecutionRef, JobExecutionStatus


class Clock:
    """`AsyncStore`'s clock, moved by the test: each reading is `step` seconds after the last,
    so every durable commit looks that long (a slow flash, without one)."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def run_jobs(store: AsyncStore, first: int, count: int) -> ExecutionRef:
    """The calls of plugin jobs in the engine's order: the start-next marker, the start record,
    the check that start-next passed nothing over, RUNNING, the decision, REPORTED."""
    ref = ExecutionRef(None, "none", 1)
    for number in range(first, first + count):
        ref = ExecutionRef(None, f"job-{number}", 1)
        await store.call(Store.begin_taking)
        record, created = await store.call(Store.record_taken, ref, {"operation": "x"}, 1)
        assert created and record.state is ExecutionState.STARTED
        assert await store.call(Store.active, ref) == []
        await store.call(Store.transition, ref, ExecutionState.RUNNING, handler="x")
        queued = await store.call(Store.decide, ref, JobExecutionStatus.SUCCEEDED, {})
        await store.call(Store.reported, queued[0].id, ref)
    return ref


async def test_a_job_hands_only_its_two_fsynced_commits_to_the_worker(tmp_path: Path) -> None:
    """With durable commits slow (each looks 1 s long here), only RUNNING and DECIDED (the two
    fsyncs) go to the worker; before round 4, all five calls did."""
    store = AsyncStore(tmp_path / "state.db", clock=Clock(1.0))
    try:
        await run_jobs(store, 0, 1)  # its first durable commit, on the loop, was slow
        before = store.handoffs
        ref = await run_jobs(store, 1, 3)
        assert store.handoffs - before == 2 * 3
        assert store.target.durable_commits == 2 * 4
        # The start record and the previous job's REPORTED go with RUNNING: two commits a job,
        # where there were four (three before round 16's REPORTED waited for the next one).
        assert store.target.commits == 2 * 4
        final = await store.call(Store.get, ref)
        assert final is not None and final.state is ExecutionState.REPORTED
    finally:
        await store.close()


async def test_a_job_on_a_fast_store_hands_nothing_to_the_worker(tmp_path: Path) -> None:
    """With durable commits fast, RUNNING and DECIDED run on the loop too: a job's path to its
    handler has no thread switch (issue 18). They are as durable: two fsynced commits a job,
    and the start record goes with RUNNING (the check between them does not write it)."""
    store = AsyncStore(tmp_path / "state.db", clock=Clock(0.0))
    try:
        ref = await run_jobs(store, 0, 3)
        assert store.handoffs == 0
        assert store.target.durable_commits == 2 * 3
        assert store.target.commits == 2 * 3  # REPORTED goes with the next job's RUNNING
        final = await store.call(Store.get, ref)
        assert final is not None and final.state is ExecutionState.REPORTED
    finally:
        await store.close()


async def test_the_start_up_inventory_report_starts_no_worker(tmp_path: Path) -> None:
    """The inventory report every start makes reads the packages still to report and the
    recorded ones (`PackageReports._report`, `RecordedSource.read`): reads, run on the loop as
    the store's other reads, so an idle agent has not started the store's worker thread (it
    was one of the four threads after start-up, issue 18)."""
    store = AsyncStore(tmp_path / "state.db", clock=Clock(0.0))
    try:
        assert await store.call(Store.packages, pending=True) == []
        assert await store.call(Store.packages) == []
        assert store.handoffs == 0
    finally:
        await store.close()


async def test_a_slow_commit_sends_the_durable_commits_to_the_worker_for_a_while(
    tmp_path: Path,
) -> None:
    """A durable commit slower than `INLINE_COMMIT_SECONDS` (a worn SD card) must not stall
    the loop again: the next ones go to the worker until `SLOW_COOL_DOWN_SECONDS` passed
    without a slow one, then back to the loop."""
    clock = Clock(0.0)
    store = AsyncStore(tmp_path / "state.db", clock=clock)
    try:
        await run_jobs(store, 0, 1)
        assert store.handoffs == 0
        clock.step = INLINE_COMMIT_SECONDS * 2  # slow from here on
        await run_jobs(store, 1, 1)
        assert store.handoffs == 1, "RUNNING was slow on the loop; DECIDED went to the worker"
        clock.step = 0.0  # fast again, but within the cool-down
        await run_jobs(store, 2, 1)
        assert store.handoffs == 3
        clock.now += SLOW_COOL_DOWN_SECONDS
        await run_jobs(store, 3, 2)
        assert store.handoffs == 3
        assert store.target.durable_commits == 2 * 5
    finally:
        await store.close()


def test_a_shared_worker_keeps_every_durable_commit(tmp_path: Path) -> None:
    """`sim fleet` shares one worker among its stores: their durable commits stay on it, so
    the loop serves the other devices meanwhile."""

    async def main(executor: ThreadPoolExecutor) -> int:
        store = AsyncStore(tmp_path / "state.db", executor, clock=Clock(0.0))
        try:
            await run_jobs(store, 0, 2)
            return store.handoffs
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1) as executor:
        assert asyncio.run(main(executor)) == 2 * 2


def test_the_check_for_passed_over_records_does_not_write_the_start_record(
    tmp_path: Path,
) -> None:
    """`active(besides=taken)` reads without committing the pending start record (it is
    left out anyway), other executions still in the result; any other read writes it first."""
    store = Store(tmp_path / "state.db")
    try:
        older = ExecutionRef(None, "older", 1)
        store.record_taken(older, {"operation": "x"}, 1)
        store.transition(older, ExecutionState.RUNNING, handler="x")
        ref = ExecutionRef(None, "job", 1)
        store.record_taken(ref, {"operation": "x"}, 1)
        commits = store.commits
        assert [r.key for r in store.active(ref)] == [older]
        assert store.commits == commits
        assert [r.key for r in store.active(older)] == [ref]
        assert store.commits == commits + 1, "another execution left out: written first"
    finally:
        store.close()


def test_what_start_next_s_answer_is_checked_against_is_read_in_one_statement(
    tmp_path: Path,
) -> None:
    """`taking(key)`: the active records but `key`'s (the check for records start-next passed
    over) and `key`'s own record in any state (a re-delivery), read by one statement, which
    `record_taken` then takes instead of reading it again (issue 18: a statement and a read
    transaction less per job)."""
    store = Store(tmp_path / "state.db")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        running, done = ExecutionRef(None, "running", 1), ExecutionRef(None, "done", 1)
        for key in (running, done):
            store.record_taken(key, {"operation": "x"}, 1)
            store.transition(key, ExecutionState.RUNNING, handler="x")
        [entry] = store.decide(done, JobExecutionStatus.SUCCEEDED, {}, alone=True)
        store.reported(entry.id, done)
        store.settle()  # as an idle agent does: a REPORTED of the key read would be written

        statements.clear()
        again = store.taking(done)  # a finished one handed back: its record, in any state
        assert [r.key for r in again.others] == [running]
        assert again.record is not None and again.record.state is ExecutionState.REPORTED
        assert store.record_taken(done, {"operation": "x"}, 1, again) == (again.record, False)
        assert len(statements) == 1

        new = ExecutionRef(None, "new", 1)
        taking = store.taking(new)
        assert ([r.key for r in taking.others], taking.record) == ([running], None)
        record, created = store.record_taken(new, {"operation": "x"}, 1, taking)
        assert created and record.state is ExecutionState.STARTED
        assert len(statements) == 2, statements
        assert [r.key for r in store.taking(new).others] == [running], "pending: not read"
        assert len(statements) == 3, "the pending start record of the key is not written"
        assert [r.key for r in store.taking(done).others] == [running, new]
    finally:
        store.close()


async def test_a_call_never_overtakes_one_still_on_the_worker(tmp_path: Path) -> None:
    """With RUNNING queued behind a busy worker, a read made next must see it: it waits its
    turn on the worker instead of running on the loop at once."""
    store = AsyncStore(tmp_path / "state.db")
    ref = ExecutionRef(None, "job", 1)
    try:
        await store.call(Store.record_taken, ref, {"operation": "x"}, 1)
        busy = threading.Event()
        store._executor.submit(busy.wait)  # the worker is busy until the loop runs again
        running = asyncio.ensure_future(
            store.call(Store.transition, ref, ExecutionState.RUNNING, handler="x")
        )
        await asyncio.sleep(0)  # the transition is queued on the worker now
        asyncio.get_running_loop().call_soon(busy.set)
        record = await store.call(Store.get, ref)
        assert record is not None and record.state is ExecutionState.RUNNING
        await running
        # Once the worker has caught up, the next read is the loop's again.
        handoffs = store.handoffs
        await store.call(Store.get, ref)
        assert store.handoffs == handoffs
    finally:
        await store.close()


async def test_a_cancelled_call_still_queued_does_not_send_every_later_call_to_the_worker(
    tmp_path: Path,
) -> None:
    """A caller cancelled while its call waits on the worker: the call never runs, and is
    counted as finished, so reads run on the loop again afterwards."""
    store = AsyncStore(tmp_path / "state.db")
    ref = ExecutionRef(None, "job", 1)
    try:
        await store.call(Store.record_taken, ref, {"operation": "x"}, 1)
        busy = threading.Event()
        blocker = store._executor.submit(busy.wait)
        waiting = asyncio.ensure_future(store.call(Store.probe))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        busy.set()
        await asyncio.wrap_future(blocker)
        handoffs = store.handoffs
        assert await store.call(Store.get, ref) is not None
        assert store.handoffs == handoffs
    finally:
        await store.close()


def test_the_start_next_marker_is_one_file_written_and_emptied(tmp_path: Path) -> None:
    """The marker is made once, then written before each start-next and emptied once the
    record is on disk: no file created and unlinked per job, and `was_taking` reads the same."""
    store = Store(tmp_path / "state.db")
    marker = tmp_path / "state.db.taking"
    try:
        store.begin_taking()
        first = os.open(marker, os.O_RDONLY)
        for number in range(3):
            ref = ExecutionRef(None, f"job-{number}", 1)
            if number:
                store.begin_taking()
            assert store.was_taking()
            store.record_taken(ref, {"operation": "x"}, 1)
            store.taken()
            assert store.was_taking(), "kept until the record is fsynced"
            store.transition(ref, ExecutionState.RUNNING, handler="x")
            assert not store.was_taking()
        # The file opened before the first job is still the marker (never unlinked).
        assert os.fstat(first).st_nlink == 1
        os.close(first)
    finally:
        store.close()


def test_an_earlier_agents_marker_is_removed_once_nothing_is_pending(tmp_path: Path) -> None:
    (tmp_path / "state.db.taking").write_text("another database's id")
    store = Store(tmp_path / "state.db")
    try:
        store.taken()
        assert not (tmp_path / "state.db.taking").exists()
    finally:
        store.close()


def test_a_new_record_is_returned_as_the_database_reads_it_back(tmp_path: Path) -> None:
    """`record_taken` and `record_received` build the record they wrote instead of reading it
    back: it must equal what `get` reads, the redacted document included."""
    store = Store(tmp_path / "state.db")
    document = {"operation": "x", "url": "https://h/f?X-Amz-Signature=secret&a=1", "n": [1, 2]}
    try:
        taken, _ = store.record_taken(ExecutionRef(None, "job", 1), document, 3)
        assert taken == store.get(taken.key)
        received = store.record_received(ExecutionRef("ns", "job", 2), document, None)
        assert received == store.get(received.key)
        assert "secret" not in str(received.document)
    finally:
        store.close()


def test_a_transition_returns_the_record_as_the_database_reads_it_back(tmp_path: Path) -> None:
    """`transition` takes the record from its UPDATE (`RETURNING`), not from a read after the
    commit: it must equal what `get` reads, the fields it set and the pending start record it
    wrote first included; a missing execution is still an error."""
    store = Store(tmp_path / "state.db")
    ref = ExecutionRef(None, "job", 1)
    try:
        store.record_taken(ref, {"operation": "x"}, 3)
        running = store.transition(ref, ExecutionState.RUNNING, handler="x", resumable=True)
        assert running.state is ExecutionState.RUNNING and running.handler == "x"
        assert running.resumable and running == store.get(ref)
        with pytest.raises(StoreError, match="not in the state database"):
            store.transition(ExecutionRef(None, "other", 1), ExecutionState.RUNNING)
    finally:
        store.close()


def test_a_taken_record_is_written_with_the_next_transaction_and_seen_by_every_read(
    tmp_path: Path,
) -> None:
    """`record_taken` writes nothing of its own: the record goes first in the next transaction
    (here the DECIDED of a refused document, STARTED -> DECIDED checked after it), a read
    writes it before reading, and a transaction that fails keeps it for the next one."""
    store = Store(tmp_path / "state.db")
    try:
        first = ExecutionRef(None, "refused", 1)
        store.record_taken(first, {"operation": "x"}, 1)
        assert store.commits == 0
        store.decide(first, JobExecutionStatus.REJECTED, {"reason": "no handler"})
        assert store.commits == 1
        decided = store.get(first)
        assert decided is not None and decided.state is ExecutionState.DECIDED

        second = ExecutionRef(None, "read", 1)
        store.record_taken(second, {"operation": "x"}, 1)
        assert [r.key for r in store.active()] == [second]  # the read wrote it first
        assert store.commits == 2

        third = ExecutionRef(None, "kept", 1)
        store.record_taken(third, {"operation": "x"}, 1)
        with pytest.raises(TransitionRefused):
            store.transition(third, ExecutionState.REPORTED)  # not a transition from STARTED
        assert store.commits == 2
        store.transition(third, ExecutionState.RUNNING, handler="x")
        running = store.get(third)
        assert running is not None and running.state is ExecutionState.RUNNING
        assert store.commits == 3
    finally:
        store.close()


def test_a_taken_record_still_pending_at_close_is_written(tmp_path: Path) -> None:
    """A stop between the take and RUNNING (the job runs after the restart) keeps the record;
    the start-next marker stays too, the record not being fsynced."""
    store = Store(tmp_path / "state.db")
    ref = ExecutionRef(None, "job", 1)
    store.begin_taking()
    store.record_taken(ref, {"operation": "x"}, 1)
    store.close()
    reopened = Store(tmp_path / "state.db")
    try:
        record = reopened.get(ref)
        assert record is not None and record.state is ExecutionState.STARTED
        assert reopened.was_taking()
    finally:
        reopened.close()


def test_the_read_of_the_active_records_builds_no_statement(tmp_path: Path) -> None:
    """`active` is read once per job (the check that start-next passed nothing over): its
    statement and parameters are made once, not per call from the lifecycle's states (issue
    18: 16 Python calls per read of an empty table before, 3 now). Counted with the profiler
    hook, builtins left out."""
    from jobs_agent import vocabulary
    from jobs_agent.engine import lifecycle, records
    from jobs_agent.engine import store as store_module
    from tests.helpers.calls import Calls

    store = Store(tmp_path / "state.db")
    files = (store_module.__file__, lifecycle.__file__, records.__file__, vocabulary.__file__)
    calls = Calls(files)
    besides = ExecutionRef(None, "job", 1)
    try:
        with calls.counting():
            for _ in range(10):
                assert store.active(besides) == []
    finally:
        store.close()
    python = sum(n for (file, _), n in calls.by_name.items() if file != "builtin")
    assert python == 3 * 10, calls.by_name.most_common()
