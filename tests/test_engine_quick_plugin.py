"""A Python plugin that ends within its first step (most do) costs the engine no progress task
and no supervising waiters (issue 18), and loses nothing: what it reported goes with its
outcome. The real agent and the embedded emulator on one in-process bus; the tasks the agent
creates are seen through the event loop's task factory."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import sys
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from jobs_agent.engine import async_store
from jobs_agent.engine.records import RECORD_COLUMNS
from jobs_agent.engine.store import ExecutionState, Store
from tests.harness import wait_until
from tests.helpers.agent_harness import (
    THING,
    captured_logs,
    make_config,
    make_handler_dir,
    running_agent,
)
from tests.helpers.cycles import cyclic_garbage

PLUGIN = """
import asyncio

GATE = None


class Quick:
    async def run(self, ctx):
        ctx.progress(40, "verified", stage="two")


class Gated:
    async def run(self, ctx):
        ctx.progress(10, "waiting")
        await GATE.wait()
"""


@pytest.fixture
def plugin_module(tmp_path: Path) -> Iterator[Any]:
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "quick_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(package))
    try:
        import quick_plugin  # type: ignore[import-not-found]

        yield quick_plugin
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("quick_plugin", None)


def record_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    loop = asyncio.get_running_loop()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        tasks.append(task)  # named after the factory returns
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]


async def test_a_plugin_that_ends_at_once_runs_without_a_progress_task(
    tmp_path: Path, plugin_module: Any
) -> None:
    make_handler_dir(tmp_path)
    plugins = {"quick": "quick_plugin:Quick", "gated": "quick_plugin:Gated"}
    config = dataclasses.replace(make_config(tmp_path), handlers=plugins)
    tasks: list[asyncio.Task[Any]] = []
    plugin_module.GATE = asyncio.Event()
    record_tasks(tasks)

    def named(prefix: str) -> list[str]:
        return [t.get_name() for t in tasks if t.get_name().startswith(prefix)]

    try:
        async with running_agent(tmp_path, config) as harness:
            execution = await harness.run_job("quick-1", {"operation": "quick"})
            assert str(execution.status) == "SUCCEEDED"
            assert execution.status_details["message"] == "verified"
            assert execution.status_details["stage"] == "two"
            assert named("job-")
            assert not named("progress-")
            # A plugin that waits gets its progress reported while it runs, as before (by the
            # reporter's timer: no task of its own, for any job, since issue 18's round 12).
            harness.service.create_job("gated-1", [THING], {"operation": "gated"})

            def reported_waiting() -> bool:
                details = harness.service.execution("gated-1", THING).status_details
                return str(details.get("message")) == "waiting"

            await harness.service.wait_for(reported_waiting, timeout=15)
            assert not named("progress-")
            plugin_module.GATE.set()
            execution = await harness.wait_terminal("gated-1")
            assert str(execution.status) == "SUCCEEDED"
            assert harness.terminal_reports("quick-1") == {1: 1}
    finally:
        asyncio.get_running_loop().set_task_factory(None)


async def test_a_plugin_job_hands_two_store_calls_to_the_worker(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's own sequence, counted on the real agent, with every durable commit slow
    (over a budget below zero): of a plugin job's store calls only the two fsynced commits
    (RUNNING, DECIDED) go to the store's worker thread; the marker, the start record, REPORTED
    and the reads run on the loop (issue 18: five hand-offs before)."""
    monkeypatch.setattr(async_store, "INLINE_COMMIT_SECONDS", -1.0)
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        before = engine.store.handoffs
        for number in range(3):
            execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
            assert str(execution.status) == "SUCCEEDED"
            await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
        assert engine.store.handoffs - before == 2 * 3


async def test_a_plugin_job_on_a_fast_store_has_no_thread_switch_and_three_commits(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's own sequence on the real agent, durable commits counted as fast whatever
    the disk does meanwhile: no store call leaves the loop, and a job makes three commits, two
    of them fsynced (its start record goes with RUNNING; the check that start-next passed
    nothing over had made it a commit of its own: four before)."""
    monkeypatch.setattr(async_store, "INLINE_COMMIT_SECONDS", 3600.0)
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        store = engine.store.target
        before = (engine.store.handoffs, store.commits, store.durable_commits)
        for number in range(3):
            execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
            assert str(execution.status) == "SUCCEEDED"
            await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
        after = (engine.store.handoffs, store.commits, store.durable_commits)
        assert [a - b for a, b in zip(after, before, strict=True)] == [0, 3 * 3, 2 * 3]


async def test_a_plugin_that_ends_at_once_sends_systemd_no_status_of_its_own(
    tmp_path: Path, plugin_module: Any
) -> None:
    """`STATUS=running X` then `STATUS=idle` for a plugin that ended within one loop turn were
    two datagrams per job that nobody could read in time (issue 18): such jobs send none, and
    the idle status with the count is sent once the queue is empty. A plugin that waits is
    announced as before. The statuses are read through the daemon's notifier."""
    make_handler_dir(tmp_path)
    plugins = {"quick": "quick_plugin:Quick", "gated": "quick_plugin:Gated"}
    config = dataclasses.replace(make_config(tmp_path), handlers=plugins)
    plugin_module.GATE = asyncio.Event()
    statuses: list[str] = []
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        harness.agent.notifier.status = lambda text: statuses.append(text) or True  # type: ignore[method-assign]
        for number in range(3):
            harness.service.create_job(f"quick-{number}", [THING], {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 3, 15, "three reports")
        await wait_until(lambda: "idle; 3 jobs done" in statuses, 15, "the idle status")
        assert not [s for s in statuses if s.startswith("running")]
        harness.service.create_job("gated-1", [THING], {"operation": "gated"})
        await wait_until(lambda: "running gated-1#1" in statuses, 15, "the running status")
        plugin_module.GATE.set()
        await wait_until(lambda: "idle; 4 jobs done" in statuses, 15, "the idle status")


async def test_a_plugin_job_builds_no_logger_at_the_warning_level(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """structlog builds a new logger for every `bind` and every call on a module's logger, even
    for a line the level drops. At `log.level: warning` a plugin job that logs nothing builds
    none: the job's own (its handler's `ctx.log`), the requests' and the info lines' are built
    only when a line is written (issue 18: five before round 4, one before round 5). Counted on
    structlog's logger proxy, for the agent's loggers.

    The durable commits are kept on the loop (the fast storage's path): on a loaded machine a
    commit may take over `INLINE_COMMIT_SECONDS`, and the store's info line about the cool-down
    that follows builds the engine's logger during the count (a timing, not a job's cost)."""
    built: list[str] = []
    original = structlog._config.BoundLoggerLazyProxy.bind

    def counting(self: Any, **values: Any) -> Any:
        name = str(self._logger_factory_args[0]) if self._logger_factory_args else ""
        if name.startswith("jobs_agent.") and not name.startswith("jobs_agent.emulator"):
            built.append(name)
        return original(self, **values)

    monkeypatch.setattr(async_store, "INLINE_COMMIT_SECONDS", math.inf)
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    with captured_logs("warning") as logs:
        async with running_agent(tmp_path, config) as harness:
            engine = harness.agent.engine
            assert engine is not None
            await harness.run_job("warm-up", {"operation": "quick"})
            await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
            monkeypatch.setattr(structlog._config.BoundLoggerLazyProxy, "bind", counting)
            for number in range(3):
                harness.service.create_job(f"quick-{number}", [THING], {"operation": "quick"})
            await wait_until(lambda: len(engine.outcomes) == 4, 15, "three reports")
            monkeypatch.undo()
    assert built == []
    assert not [r for r in logs.records if r.get("level") in ("warning", "error")]


async def test_a_plugin_job_reads_neither_the_user_database_nor_the_import_system(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's own account and the plugin's class are looked up once, not for every job
    (issue 18: a `getpwuid`, which opens and parses the user database, and importlib's import
    machinery per job). Counted over three jobs after a first one."""
    import importlib
    import pwd

    from jobs_agent.dispatch import plugins, users

    lookups: list[str] = []
    getpwuid, import_module = pwd.getpwuid, importlib.import_module

    def counting_getpwuid(uid: int) -> Any:
        lookups.append("getpwuid")
        return getpwuid(uid)

    def counting_import(name: str, package: str | None = None) -> Any:
        lookups.append(f"import {name}")
        return import_module(name, package)

    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        monkeypatch.setattr(users.pwd, "getpwuid", counting_getpwuid)
        monkeypatch.setattr(plugins.importlib, "import_module", counting_import)
        for number in range(3):
            execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
            assert str(execution.status) == "SUCCEEDED"
        await wait_until(lambda: len(engine.outcomes) == 4, 15, "three reports")
        monkeypatch.undo()
    assert lookups == []


async def test_a_plugin_job_leaves_nothing_for_the_cyclic_collector(
    tmp_path: Path, plugin_module: Any
) -> None:
    """A plugin job's objects are freed as it ends, by their reference counts: none is left
    in a cycle for the collector (22 per job were: `Running` -> its context -> the progress
    reporter -> its sender -> `Running`, with the job's logger and record; a young collection
    every ten jobs or so, issue 18). Counted with the collector off, for a plugin that ends at
    once and one that waits (with its progress task); the garbage is kept to say what it was."""
    make_handler_dir(tmp_path)
    plugins = {"quick": "quick_plugin:Quick", "gated": "quick_plugin:Gated"}
    config = dataclasses.replace(make_config(tmp_path), handlers=plugins)
    plugin_module.GATE = asyncio.Event()
    plugin_module.GATE.set()
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        with cyclic_garbage() as left:
            for number in range(6):
                operation = "gated" if number % 2 else "quick"
                execution = await harness.run_job(f"job-{number}", {"operation": operation})
                assert str(execution.status) == "SUCCEEDED"
                await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
    assert left == []


async def test_running_s_commit_never_checkpoints_the_wal(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit before the handler (RUNNING) is fsynced, but a WAL checkpoint (the WAL and
    the database file fsynced once more, about one job in 80) is left to the next durable one,
    off the path from the notification to the handler (issue 18's tail). In WAL mode only a
    checkpoint writes the database file itself: its size and time are read around every
    commit of 250 plugin jobs. Checkpoints still come (the WAL stays bounded), never in
    RUNNING's."""
    changed: list[ExecutionState | None] = []
    commit = Store._commit

    def watched(self: Store, statements: Any, transition: Any, checked_after: int = 0) -> None:
        def seen() -> tuple[int, int]:
            stat = os.stat(self.path)
            return stat.st_mtime_ns, stat.st_size

        before = seen()
        commit(self, statements, transition, checked_after)
        if seen() != before:
            changed.append(None if transition is None else transition[1])

    monkeypatch.setattr(Store, "_commit", watched)
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        for number in range(250):
            harness.service.create_job(f"quick-{number}", [THING], {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 250, 60, "250 reports")
    assert changed, "no checkpoint at all: the WAL would grow without bound"
    assert ExecutionState.RUNNING not in changed


async def test_a_plugin_job_reads_no_state_it_has_just_written(
    tmp_path: Path, plugin_module: Any
) -> None:
    """Every statement a plugin job sends SQLite, counted by SQLite's own trace on the real
    agent's connection over three jobs after a first one (issue 18). RUNNING's record comes
    back from its UPDATE (`RETURNING`) instead of a SELECT after the commit, and each state
    change (RUNNING, DECIDED, REPORTED) is checked by its UPDATE's own condition instead of a
    SELECT of the state before it: 24 statements per job here before, 20 after, 19 now that
    a decision made while the outbox is known empty gets its entry back from its INSERT
    (`RETURNING`) instead of reading the outbox, 18 now that the check for records start-next
    passed over and the look for the taken execution's own record (a re-delivery?) are one
    statement (`Store.taking`), not two; 17 now that the job's own events ask for no second
    start-next, which found the queue empty after each job and read the active records
    (engine/wakes.py); 15 now that SQLite's automatic checkpoints are off for the connection's
    life instead of toggled around each job's commits (store.CHECKPOINT_COMMITS); 14 now that
    a new job's start record and its RUNNING are one INSERT (`Store.transition`)."""
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    statements: list[str] = []
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        database = engine.store.target._db
        database.set_trace_callback(statements.append)
        try:
            for number in range(3):
                execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
                assert str(execution.status) == "SUCCEEDED"
                await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
        finally:
            database.set_trace_callback(None)
    assert len(statements) == 14 * 3, "\n".join(statements)
    assert not [s for s in statements if s.startswith("SELECT id, namespace")]  # the outbox
    assert not [s for s in statements if s.startswith("SELECT state FROM")]
    by_key = f"SELECT {RECORD_COLUMNS} FROM executions WHERE namespace"
    assert not [s for s in statements if s.startswith(by_key)]  # read with the active ones
    assert sum(s.startswith("SELECT 0, ") for s in statements) == 3  # `Store.taking`'s


async def test_a_plugin_job_decodes_its_replies_in_few_calls(
    tmp_path: Path, plugin_module: Any
) -> None:
    """The Jobs payloads of a plugin job (start-next's reply, notify-next's execution, the
    update's reply; the emulator's reading of the requests) are decoded field by field by the
    codec's readers: a decode asks no ABC whether a dict is a mapping, looks its fields up
    without a call, writes a field kept as it is without one, and reads a timestamp in one
    call (issue 18: 160 Python calls per job in the codec, the models and `abc` before, 109
    then; 343 and 270 with the builtins they call). Round 18: each class's decoder (counted
    with the codec) calls its readers, and a reader of plain JSON's text or integer calls no
    other: 85 -> 67 per job. Counted over three jobs after a first one, on the real agent and
    emulator."""
    from jobs_agent.jobs import codec, models
    from tests.helpers.calls import Calls

    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    calls = Calls((codec.__file__, models.__file__, "<frozen abc>", codec.DECODER_FILE))
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        with calls.counting():
            for number in range(3):
                execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
                assert str(execution.status) == "SUCCEEDED"
                await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
    python = sum(n for (file, _), n in calls.by_name.items() if file != "builtin")
    assert python <= 70 * 3, calls.by_name.most_common()


async def test_the_database_file_is_checked_before_each_durable_commit_and_start_next(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Store.verify` (a `stat` of the database's path against the file the agent opened)
    runs before each start-next and each fsynced commit (RUNNING's, the decision's), not
    before REPORTED's commit, which is not fsynced and so promises nothing a lost file would
    break: a database lost by then is found by the next start-next's check, before any job is
    taken (tests/test_state_loss.py). 5 -> 4 per job here (one is the round after each job,
    which checks it as its start-next that found the queue empty did: a drain does not have
    it, 4 -> 3 there; the job's own events ask for no start-next any more, engine/wakes.py)."""
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"quick": "quick_plugin:Quick"})
    checks: list[int] = []
    verify = Store.verify

    def counted(self: Store) -> None:
        checks.append(1)
        verify(self)

    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", {"operation": "quick"})
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        monkeypatch.setattr(Store, "verify", counted)
        for number in range(3):
            execution = await harness.run_job(f"quick-{number}", {"operation": "quick"})
            assert str(execution.status) == "SUCCEEDED"
            await wait_until(lambda n=2 + number: len(engine.outcomes) == n, 15, "the report")
        monkeypatch.undo()
    assert len(checks) == 3 * 4
