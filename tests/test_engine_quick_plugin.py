"""A Python plugin that ends within its first step (most do) costs the engine no progress task
and no supervising waiters (issue 18), and loses nothing: what it reported goes with its
outcome. The real agent and the embedded emulator on one in-process bus; the tasks the agent
creates are seen through the event loop's task factory."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until
from tests.helpers.agent_harness import THING, make_config, make_handler_dir, running_agent

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
            # A plugin that waits gets its progress task, as before.
            harness.service.create_job("gated-1", [THING], {"operation": "gated"})
            await harness.service.wait_for(lambda: bool(named("progress-")), timeout=15)
            plugin_module.GATE.set()
            execution = await harness.wait_terminal("gated-1")
            assert str(execution.status) == "SUCCEEDED"
            assert harness.terminal_reports("quick-1") == {1: 1}
    finally:
        asyncio.get_running_loop().set_task_factory(None)


async def test_a_plugin_job_hands_two_store_calls_to_the_worker(
    tmp_path: Path, plugin_module: Any
) -> None:
    """The engine's own sequence, counted on the real agent: of a plugin job's store calls only
    the two fsynced commits (RUNNING, DECIDED) go to the store's worker thread; the marker, the
    start record, REPORTED and the reads run on the loop (issue 18: five hand-offs before)."""
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
