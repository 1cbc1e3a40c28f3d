"""Python plugins: loading from the config `handlers:` mapping, and how run_handler maps what
a plugin does to an Outcome."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher, run_handler
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.dispatch.plugins import PluginError
from jobs_agent_handlers.api import (
    POINT_OF_NO_RETURN,
    JobContext,
    JobFailed,
    JobRejected,
    Outcome,
)
from tests.helpers.calls import loop_asks

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello-plugin" / "src"


@pytest.fixture
def ctx_factory(tmp_path: Path) -> Any:
    def make(document: Mapping[str, Any]) -> LocalJobContext:
        (tmp_path / "s").mkdir(exist_ok=True)
        return LocalJobContext(document=document, scratch_dir=tmp_path / "s", state_dir=tmp_path)

    return make


def config(tmp_path: Path, handlers: dict[str, str]) -> AgentConfig:
    return AgentConfig(
        thing_name="gw",
        handlers=handlers,
        state_dir=tmp_path,
        jobs=JobsConfig(handler_dir=tmp_path, handler_timeout_seconds=1.0),
    )


async def test_example_plugin_loads_from_config_mapping(
    tmp_path: Path, ctx_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    d = Dispatcher(config(tmp_path, {"hello": "hello_plugin.handler:HelloHandler"}))
    document = {"operation": "hello", "name": "gateway", "count": 2}
    handler = d.resolve(document)
    assert handler.name == "hello" and handler.resumable
    ctx = ctx_factory(document)
    outcome = await d.run(handler, ctx)
    assert outcome == Outcome("SUCCEEDED", {"greeting": "hello, gateway", "count": "2"})
    assert ctx.checkpoints == [{"done": 1}, {"done": 2}]
    assert d.plan(document)[0].executable == "hello_plugin.handler:HelloHandler"
    bad = await d.run(d.resolve({"operation": "hello"}), ctx_factory({"operation": "hello"}))
    assert bad == Outcome.rejected('"name": expected a non-empty string')
    failing = {"operation": "hello", "name": "fail", "count": 1}
    assert await d.run(d.resolve(failing), ctx_factory(failing)) == Outcome(
        "FAILED", {"reason": "asked to fail", "greeted": "1"}
    )
    sys.modules.pop("hello_plugin.handler", None)
    sys.modules.pop("hello_plugin", None)


async def test_broken_plugin_spec_fails_resolution_not_the_agent(tmp_path: Path) -> None:
    d = Dispatcher(config(tmp_path, {"x": "no_such_module_xyz:Handler"}))
    with pytest.raises(PluginError, match="cannot load handler no_such_module_xyz:Handler"):
        d.resolve({"operation": "x"})


class _Returns:
    name = "t"
    resumable = False

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    async def run(self, ctx: JobContext) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


async def test_run_handler_maps_results_and_exceptions(ctx_factory: Any) -> None:
    ctx = ctx_factory({})
    assert await run_handler(_Returns(None), ctx) == Outcome("SUCCEEDED", {})
    assert await run_handler(_Returns({"k": "v"}), ctx) == Outcome("SUCCEEDED", {"k": "v"})
    assert await run_handler(_Returns(error=JobFailed("nope", step="2")), ctx) == Outcome(
        "FAILED", {"reason": "nope", "step": "2"}
    )
    assert await run_handler(_Returns(error=JobRejected("bad doc")), ctx) == Outcome(
        "REJECTED", {"reason": "bad doc"}
    )
    assert await run_handler(_Returns(error=KeyError("url")), ctx) == Outcome(
        "FAILED", {"reason": "KeyError: 'url'"}
    )
    with pytest.raises(asyncio.CancelledError):
        await run_handler(_Returns(error=asyncio.CancelledError()), ctx)


class _Hangs:
    name = "hangs"
    resumable = False

    async def run(self, ctx: JobContext) -> None:
        await asyncio.Event().wait()


async def test_plugin_time_limit(tmp_path: Path, ctx_factory: Any) -> None:
    d = Dispatcher(config(tmp_path, {}))
    outcome = await d.run(_Hangs(), ctx_factory({"timeout": 0.2}))
    assert outcome == Outcome.failed("timed out after 0.2 s")


async def test_the_time_limit_leaves_no_cancel_behind_and_lets_the_jobs_own_cancel_pass(
    tmp_path: Path, ctx_factory: Any
) -> None:
    """The limit cancels the plugin's task and takes that cancel back as the timeout (the task
    can still be cancelled later); a cancel of the job's own, before the limit, passes."""

    d = Dispatcher(config(tmp_path, {}))
    outcome = await d.run(_Hangs(), ctx_factory({"timeout": 0.05}))
    assert outcome == Outcome.failed("timed out after 0.05 s")
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    running = asyncio.ensure_future(d.run(_Hangs(), ctx_factory({"timeout": 60})))
    await asyncio.sleep(0)  # the plugin waits
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


class _Quick:
    name = "quick"
    resumable = False

    async def run(self, ctx: JobContext) -> None:
        return None


async def test_runs_one_after_another_each_meet_their_own_limit(
    tmp_path: Path, ctx_factory: Any
) -> None:
    """The limits share one timer, left armed when a run ends: a later run with a shorter
    limit than the one the timer waits for has it armed earlier, and a run whose limit is
    later than the one the timer was left for is expired once the timer, finding nothing due,
    is armed again for it."""
    d = Dispatcher(config(tmp_path, {}))
    assert await d.run(_Quick(), ctx_factory({"timeout": 60})) == Outcome.succeeded()
    shorter = await d.run(_Hangs(), ctx_factory({"timeout": 0.05}))
    assert shorter == Outcome.failed("timed out after 0.05 s")
    assert await d.run(_Quick(), ctx_factory({"timeout": 0.01})) == Outcome.succeeded()
    later = await d.run(_Hangs(), ctx_factory({"timeout": 0.2}))
    assert later == Outcome.failed("timed out after 0.2 s")


async def test_runs_at_the_same_time_each_meet_their_own_limit(
    tmp_path: Path, ctx_factory: Any
) -> None:
    """Two plugins at once (a deferred job's neighbour): the shorter limit expires its run
    alone; the other runs on until its own limit."""
    d = Dispatcher(config(tmp_path, {}))
    longer = asyncio.ensure_future(d.run(_Hangs(), ctx_factory({"timeout": 0.3})))
    shorter = await d.run(_Hangs(), ctx_factory({"timeout": 0.05}))
    assert shorter == Outcome.failed("timed out after 0.05 s")
    assert not longer.done()
    assert await longer == Outcome.failed("timed out after 0.3 s")


async def test_the_dispatchers_of_one_loop_share_one_timer(
    tmp_path: Path, ctx_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sim fleet` runs a dispatcher per device on one loop: their limits share the loop's
    one timer, so a thousand devices do not keep a thousand live timers in the loop's heap for
    as long as a limit. A run on a second dispatcher arms none."""
    loop = asyncio.get_running_loop()
    first, second = Dispatcher(config(tmp_path, {})), Dispatcher(config(tmp_path, {}))
    assert await first.run(_Quick(), ctx_factory({"timeout": 60})) == Outcome.succeeded()
    armed: list[Any] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        armed.append(callback)
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting)
    assert await second.run(_Quick(), ctx_factory({"timeout": 60})) == Outcome.succeeded()
    monkeypatch.undo()
    assert armed == []


async def test_a_plugin_run_asks_for_the_running_loop_once(
    tmp_path: Path, ctx_factory: Any
) -> None:
    """On Python 3.11 each ask for the running loop is a `getpid` system call: the time limit
    (`asyncio.timeout(None)`, its `current_task`, the timer's loop) asked three times per
    plugin job; now once, its task's loop used for the timer."""

    class Quick:
        name = "quick"
        resumable = False

        async def run(self, ctx: JobContext) -> None:
            return None

    d = Dispatcher(config(tmp_path, {}))
    watched = ("/dispatch/router.py", "/asyncio/timeouts.py", "/asyncio/tasks.py")
    with loop_asks(watched) as asks:
        outcome = await d.run(Quick(), ctx_factory({"operation": "quick"}))
    assert outcome == Outcome.succeeded()
    assert asks == ["tasks.py:current_task"], asks


async def test_a_plugin_past_its_point_of_no_return_is_not_cut_by_the_time_limit(
    tmp_path: Path, ctx_factory: Any
) -> None:
    """An A/B update verifying its new slot must not be stopped halfway by the plugin time
    limit (the slot on trial would be nobody's); before that point the limit applies."""

    class SwitchesThenWorks:
        name = "switches"
        resumable = True

        def __init__(self, switch: bool) -> None:
            self.switch = switch

        async def run(self, ctx: JobContext) -> Mapping[str, Any]:
            if self.switch:
                await ctx.checkpoint({POINT_OF_NO_RETURN: "switched slots"})
            await asyncio.sleep(0.4)  # the work itself, longer than the limit
            return {"done": "yes"}

    d = Dispatcher(config(tmp_path, {}))
    held = await d.run(SwitchesThenWorks(True), ctx_factory({"timeout": 0.1}))
    assert held == Outcome.succeeded(done="yes")
    cut = await d.run(SwitchesThenWorks(False), ctx_factory({"timeout": 0.1}))
    assert cut == Outcome.failed("timed out after 0.1 s")


async def test_builtin_reboot_plugin(tmp_path: Path, ctx_factory: Any) -> None:
    d = Dispatcher(config(tmp_path, {}))
    ctx = ctx_factory({"operation": "reboot"})
    assert (await d.run(d.resolve(ctx.document), ctx)).status == "SUCCEEDED"
    assert ctx.reboot_requested
    ctx.after_reboot()
    outcome = await d.run(d.resolve(ctx.document), ctx)
    assert outcome == Outcome("SUCCEEDED", {"reason": "the device rebooted"})
