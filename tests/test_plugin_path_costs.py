"""What a plugin job's path builds that it does not need, counted through seams (issue 18).

The real agent and the embedded emulator on one in-process bus, at log level `warning` (the
level the benchmarks and most gateways run at). A plugin job that logs nothing and never asks
for its directories used to build a structlog logger bound to the job (counted in
test_engine_quick_plugin), two `pathlib.Path`s for its directories and one for its output log,
and a JSON encoder per request. These tests count
those constructions (never time them), and check that what they served still works: a plugin's
`ctx.log` lines carry the job's fields, and a plugin that asks for its directories gets them.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import pathlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.engine import context as engine_context
from jobs_agent.engine import engine as engine_engine
from jobs_agent.engine import jobfiles as engine_jobfiles
from jobs_agent.engine import wakes as engine_wakes
from jobs_agent.jobs import client as jobs_client
from jobs_agent.jobs import events as jobs_events
from jobs_agent.jobs import topics as jobs_topics
from jobs_agent.jobs.events import NOTIFY_LIST_LIMIT
from jobs_agent.transport import local as bus_local
from jobs_agent.transport.topics import levels_match
from tests.helpers.agent_harness import (
    THING,
    captured_logs,
    hold_heartbeat_off,
    make_config,
    make_handler_dir,
    running_agent,
)

PLUGIN = """
import os


class Quiet:
    async def run(self, ctx):
        return None


class Talks:
    async def run(self, ctx):
        ctx.log.warning("plugin says", detail="x")
        ctx.log.critical("plugin shouts")  # beyond the handlers' Logger protocol: still works


class UsesDirs:
    async def run(self, ctx):
        (ctx.scratch_dir / "tmp.txt").write_text("scratch")
        (ctx.state_dir / "kept.txt").write_text("state")
        return {"scratch": str(ctx.scratch_dir), "isdir": str(os.path.isdir(ctx.state_dir))}
"""


@pytest.fixture(autouse=True)
def _no_heartbeat_in_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat's poll is a timer, not a job's path: held off, so that a test stretched
    past its 5 s by the machine's load counts the same as on a quiet one."""
    hold_heartbeat_off(monkeypatch)


@pytest.fixture
def plugin_module(tmp_path: Path) -> Iterator[Any]:
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "costs_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(package))
    try:
        import costs_plugin  # type: ignore[import-not-found]

        yield costs_plugin
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("costs_plugin", None)


class Spy:
    """Calls of one callable, counted while the test patches it in."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.function(*args, **kwargs)


def _config(tmp_path: Path) -> Any:
    make_handler_dir(tmp_path)
    plugins = {
        "quiet": "costs_plugin:Quiet",
        "talks": "costs_plugin:Talks",
        "dirs": "costs_plugin:UsesDirs",
    }
    return dataclasses.replace(make_config(tmp_path), handlers=plugins)


async def _three_quiet_jobs(
    tmp_path: Path, profile: Any, warmed_up: Callable[[], None] = lambda: None
) -> None:
    """Three quiet plugin jobs on a real agent (after one to warm up, then `warmed_up`),
    `profile` watching them (sys.setprofile)."""
    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            warmed_up()
            sys.setprofile(profile)
            try:
                for number in range(3):
                    execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                    assert str(execution.status) == "SUCCEEDED", execution.status_details
            finally:
                sys.setprofile(None)
            harness.assert_alive()


async def test_a_quiet_plugin_job_builds_no_directory_paths(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's directories are strings until the handler asks for one; the output log is
    looked for by a string too (no log for a plugin). The loggers the job does not build are
    counted in test_engine_quick_plugin. `jobfiles` names no `Path` since round 17 (a script
    job's log goes to its index as text too), so what it asks of `pathlib` is counted by a
    profile of the calls it makes there."""
    context_paths = Spy(engine_context.Path)
    monkeypatch.setattr(engine_context, "Path", context_paths)
    from_jobfiles: list[str] = []
    library = pathlib.__file__

    def profile(frame: Any, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename != library or caller is None:
            return
        if caller.f_globals.get("__name__") == engine_jobfiles.__name__:
            from_jobfiles.append(frame.f_code.co_name)

    def warmed_up() -> None:
        context_paths.calls = 0

    await _three_quiet_jobs(tmp_path, profile, warmed_up)
    assert context_paths.calls == 0
    assert from_jobfiles == []


async def test_a_plugins_log_lines_still_carry_the_job(tmp_path: Path, plugin_module: Any) -> None:
    """The job's logger is built at the first line the level lets through, with the job's
    fields; a method beyond the handlers' `Logger` protocol reaches the bound logger too."""
    with captured_logs("warning") as logs:
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            execution = await harness.run_job("talks-1", {"operation": "talks"})
            assert str(execution.status) == "SUCCEEDED"
            said = logs.matching(lambda r: r.get("event") in {"plugin says", "plugin shouts"})
    assert [(r["event"], r["job_id"], r["execution_number"]) for r in said] == [
        ("plugin says", "talks-1", 1),
        ("plugin shouts", "talks-1", 1),
    ]
    assert said[0]["detail"] == "x" and said[1]["level"] == "critical"


async def test_a_plugin_that_asks_for_its_directories_gets_them_and_they_go_after(
    tmp_path: Path, plugin_module: Any
) -> None:
    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            execution = await harness.run_job("dirs-1", {"operation": "dirs"})
            assert str(execution.status) == "SUCCEEDED", execution.status_details
            scratch = Path(execution.status_details["scratch"])
            assert execution.status_details["isdir"] == "True"
            assert scratch == tmp_path / "state" / "jobs" / "default" / "dirs-1" / "scratch-1"
            # The job's directory goes once the outcome is reported (the job ended).
            await harness.service.wait_for(lambda: not scratch.parent.exists(), timeout=15)


async def test_only_the_run_that_made_nothing_skips_the_look_for_its_files(
    tmp_path: Path, plugin_module: Any
) -> None:
    """`JobFiles.made_nothing` covers the one execution the runner named (a first run of a
    plugin that never asked for its directories; a resumed run, after a restart, a reboot or a
    deferral, is never named): any other execution's cleanup still finds and removes what an
    earlier run left, and the named one is looked for again once its cleanup has passed."""
    from jobs_agent.vocabulary import ExecutionRef

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            engine = harness.agent.engine
            assert engine is not None
            files = engine._files
            named, other = ExecutionRef(None, "named", 1), ExecutionRef(None, "left", 1)
            jobs = tmp_path / "state" / "jobs" / "default"
            for job in ("named", "left"):
                (jobs / job / "scratch-1").mkdir(parents=True)
                (jobs / job / "state").mkdir()
            files.made_nothing(named)
            await files.cleanup(other)
            assert not (jobs / "left").exists()
            await files.cleanup(named)
            assert (jobs / "named").exists()  # as told: nothing was looked for
            await files.cleanup(named)
            assert not (jobs / "named").exists()
            harness.assert_alive()


async def test_a_plugin_job_builds_no_json_encoder_of_the_agents(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`json.dumps` with any argument but the defaults builds an encoder per call: the
    requests and the document's size check use encoders built once. Encoders built by the
    emulator, in the same process here, are not the agent's and are not counted."""
    built_by: list[str] = []
    original = json.JSONEncoder.__init__

    def counted(self: json.JSONEncoder, *args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1)
        if caller.f_code.co_name == "dumps":  # json.dumps: who called it
            caller = caller.f_back or caller
        built_by.append(str(caller.f_globals.get("__name__")))
        original(self, *args, **kwargs)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            monkeypatch.setattr(json.JSONEncoder, "__init__", counted)
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            monkeypatch.undo()
    agents = [m for m in built_by if m.startswith("jobs_agent") and ".emulator" not in m]
    assert agents == []


async def test_a_plugin_job_runs_no_import_statement_of_the_agents(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import statement costs about 8 k instructions at every run, its module loaded or
    not: a plugin job ran six after the first job (round 18), the runner's two of the
    recovery decision, the package check's two of `inventory.model` and the gate's two of
    the consent and window readers. What they serve still runs: each job passes the gate and
    the package check and SUCCEEDS. The emulator on the bus is not the agent's."""
    imports: Counter[str] = Counter()
    real_import = builtins.__import__

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        caller = str(sys._getframe(1).f_globals.get("__name__"))
        if caller.startswith("jobs_agent") and not caller.startswith("jobs_agent.emulator"):
            imports[f"{caller}: {name}"] += 1
        return real_import(name, *args, **kwargs)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            with monkeypatch.context() as patch:
                patch.setattr(builtins, "__import__", counted)
                for number in range(3):
                    execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                    assert str(execution.status) == "SUCCEEDED", execution.status_details
            harness.assert_alive()
    assert imports == Counter()


async def test_the_topics_of_every_job_are_parsed_and_built_once(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's start-next request, its reply and the events come on the same topics every
    time: the Jobs client checks them once. Only the topics that name the job (its update and
    the update's reply) are built and parsed for it."""
    parsed: list[str] = []
    built: list[tuple[Any, ...]] = []
    parse, build = jobs_topics.parse_topic, jobs_topics.request_topic

    def counted_parse(topic: str) -> Any:
        parsed.append(topic)
        return parse(topic)

    def counted_build(*args: Any, **kwargs: Any) -> str:
        built.append((*args, kwargs.get("job_id")))
        return build(*args, **kwargs)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            await harness.run_job("warm-up-2", {"operation": "quiet"})
            monkeypatch.setattr(jobs_topics, "parse_topic", counted_parse)
            monkeypatch.setattr(jobs_topics, "request_topic", counted_build)
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            monkeypatch.undo()
    agents = [topic for topic in parsed if "/update/" in topic or "start-next" in topic]
    assert sorted(agents) == [
        f"$aws/things/{THING}/jobs/quiet-{n}/update/accepted" for n in range(3)
    ]
    assert [job for *_, job in built] == [f"quiet-{n}" for n in range(3)]


async def test_the_bus_matches_filters_only_for_the_topics_that_name_the_job(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local bus keeps each topic's route: notify, notify-next, start-next and its reply
    come on the same topics every job and are not matched against the wildcard filters again
    (15 level matches a job before, issue 18). Only a job's update and the update's reply are."""
    matched: list[str] = []

    def counted(filter_levels: list[str], topic_levels: list[str]) -> bool:
        matched.append("/".join(topic_levels))
        return levels_match(filter_levels, topic_levels)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            monkeypatch.setattr(bus_local, "levels_match", counted)
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            monkeypatch.undo()
    jobs = f"$aws/things/{THING}/jobs"
    assert set(matched) == {
        f"{jobs}/quiet-{n}/{kind}" for n in range(3) for kind in ("update", "update/accepted")
    }
    assert len(matched) <= 3 * 6  # each of those two topics against the three wildcard filters


async def test_a_job_asks_no_abstract_class_about_plain_json_in_redact_codec_or_windows(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job document and the service's replies are plain JSON: `isinstance(x, Mapping)` on a
    dict goes through `ABCMeta.__instancecheck__`, a Python frame per value. The document's
    redaction at rest, the protocol codec's object check and the maintenance window's look at
    the document ask `dict` (and `list`) first and the ABC only for anything else (issue 18).
    Round 10 made 14 such calls here: 7 in `redact` for the two jobs' documents, 6 in the
    script document's `document_windows` and 1 in reading a window."""
    import collections.abc

    from jobs_agent.schedule.maintenance import window_from_document

    watched = ("jobs_agent.redact", "jobs_agent.jobs.codec", "jobs_agent.schedule")
    callers: list[str] = []
    meta = type(collections.abc.Mapping)
    check = meta.__instancecheck__

    def counted(cls: type, instance: object) -> bool:
        name = str(sys._getframe(1).f_globals.get("__name__"))
        if name.startswith(watched):
            callers.append(f"{name}:{sys._getframe(1).f_code.co_name}:{type(instance).__name__}")
        return check(cls, instance)

    script = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "ok",
                    "type": "runHandler",
                    "input": {"handler": "ok.sh", "args": ["a=1"]},
                }
            }
        ],
    }
    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            monkeypatch.setattr(meta, "__instancecheck__", counted)
            execution = await harness.run_job("quiet-1", {"operation": "quiet"})
            assert str(execution.status) == "SUCCEEDED"
            execution = await harness.run_job("script-1", script)
            assert str(execution.status) == "SUCCEEDED", execution.status_details
            monkeypatch.undo()
            harness.assert_alive()
    # A window is read at the same edge (a job open all day would wait out 23:50-24:00 here).
    monkeypatch.setattr(meta, "__instancecheck__", counted)
    window_from_document({"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 60})
    monkeypatch.undo()
    assert sorted(callers) == []


async def test_a_plugin_jobs_lookup_and_files_make_no_library_calls(
    tmp_path: Path, plugin_module: Any
) -> None:
    """Per plugin job, the registry asked `inspect` whether the target is a class and whether
    the fresh instance's `run` is a coroutine function (five Python calls for a method of a
    plain `async def`), and `JobFiles` turned the state directory into a string and joined
    paths with `os.path.join` twice. Now `run`'s code flags answer for a plain method and the
    state directory's folders are strings kept while it is the same object: Python calls from
    `jobs_agent.dispatch.plugins` and `jobs_agent.engine.jobfiles` into the standard library,
    for three plugin jobs, 24 -> 6, and -> 0 once the engine tells `JobFiles` that a first run
    made neither directory nor log (`made_nothing`: the two `os.path.exists` looks per job,
    failed `stat`s, go; a resumed run still looks, see
    test_only_the_run_that_made_nothing_skips_the_look_for_its_files)."""
    callees: list[str] = []
    watched = {"jobs_agent.dispatch.plugins", "jobs_agent.engine.jobfiles"}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or frame.f_back is None:
            return
        caller = frame.f_back.f_globals.get("__name__")
        callee = str(frame.f_globals.get("__name__"))
        if caller in watched and not callee.startswith(("jobs_agent", "costs_plugin")):
            callees.append(f"{callee}.{frame.f_code.co_name}")

    await _three_quiet_jobs(tmp_path, profile)
    assert sorted(callees) == []


async def test_a_plugin_job_asks_no_abstract_class_about_plain_json(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's events and replies, the job document and the handler's statusDetails are
    plain dicts: `isinstance(x, Mapping)` on one is a Python frame
    (`ABCMeta.__instancecheck__`). The agent's own modules (the emulator on the bus aside) ask
    `dict` first. Round 10 left 5 such checks per plugin job over MQTT (3 in
    `events.check_jobs_shape`, 1 in `runner._resolve`, 1 in `validate_status_details`)."""
    import collections.abc

    callers: list[str] = []
    meta = type(collections.abc.Mapping)
    check = meta.__instancecheck__

    def counted(cls: type, instance: object) -> bool:
        name = str(sys._getframe(1).f_globals.get("__name__"))
        if name.startswith("jobs_agent") and not name.startswith("jobs_agent.emulator"):
            callers.append(f"{name}:{sys._getframe(1).f_code.co_name}:{type(instance).__name__}")
        return check(cls, instance)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            monkeypatch.setattr(meta, "__instancecheck__", counted)
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            monkeypatch.undo()
            harness.assert_alive()
    assert sorted(callers) == []


async def test_a_plugin_job_asks_for_the_running_loop_few_times(
    tmp_path: Path, plugin_module: Any
) -> None:
    """On Python 3.11 every ask for the running loop (`get_running_loop`, an `asyncio.Event`'s
    wait, `current_task()` or `create_task` without a loop) is a `getpid` system call: 17 per
    plugin job in round 10. Counted here by the agent's own code that asks (directly or through
    asyncio), the emulator on the bus and the test aside: 10 per job before the Jobs client's
    event wait and request deadline went through loops they hold (a wait on an
    `asyncio.Event` and `get_running_loop().time()` twice each), 5 after, 4 once the engine's
    loop takes a free turn without asking for it (the exchange's request twice, the handler's
    task and its time limit)."""
    asks: list[str] = []

    def asker(frame: Any) -> str | None:
        while frame is not None and (
            "/asyncio/" in frame.f_code.co_filename
            or frame.f_globals.get("__name__") == "jobs_agent.aio"  # the test's waits use it
        ):
            frame = frame.f_back
        if frame is None:
            return None
        module = str(frame.f_globals.get("__name__"))
        if not module.startswith("jobs_agent") or module.startswith("jobs_agent.emulator"):
            return None
        return f"{module}:{frame.f_code.co_name}"

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") in (
            "get_running_loop",
            "_get_running_loop",
        ):
            who = asker(frame)
            if who is not None:
                asks.append(who)

    await _three_quiet_jobs(tmp_path, profile)
    assert len(asks) <= 3 * 4, sorted(asks)


async def test_a_round_with_nothing_deferred_takes_the_turn_without_asking(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's loop holds the one turn while it takes and runs a job. With nothing
    deferred (most gateways, always) it is free: taken at once (`Turns.take_free`), without
    the request, its future and the async context manager of `Turns.turn` (one per round,
    15 Python calls and an ask for the running loop). Deferred executions still queue for it
    (tests/test_run_others_while_deferred.py)."""
    from jobs_agent.engine.turns import Turns

    asked = Spy(Turns.ask)

    def ask(self: Turns, wake: float) -> Any:
        return asked(self, wake)

    monkeypatch.setattr(Turns, "ask", ask)
    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            asked.calls = 0
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            harness.assert_alive()
    assert asked.calls == 0


async def test_a_plugin_job_arms_no_timer_of_its_own_for_its_time_limit(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin's time limit (an hour by default) was a timer of its own, armed and cancelled
    per job, and the cancelled one stayed in the loop's heap of timers (until its hour or the
    loop's sweep), which every other timer was then pushed through and popped from, a Python
    `__lt__` per comparison. The limits share one timer left armed (jobs_agent.dispatch.
    time_limit): armed at the first job, none for the later ones, and none left cancelled."""
    import asyncio

    loop = asyncio.get_running_loop()
    armed: list[str] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        owner = getattr(callback, "__self__", callback)
        armed.append(f"{type(owner).__module__}.{getattr(callback, '__qualname__', '?')}")
        return call_at(when, callback, *args, **kwargs)

    def time_limits(handles: Any) -> list[Any]:
        return [
            h
            for h in handles
            if ".dispatch." in type(getattr(h._callback, "__self__", h)).__module__
        ]

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            monkeypatch.setattr(loop, "call_at", counting)
            for number in range(3):
                execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                assert str(execution.status) == "SUCCEEDED"
            monkeypatch.undo()
            left = time_limits(loop._scheduled)  # type: ignore[attr-defined]
            harness.assert_alive()
    assert [a for a in armed if ".dispatch." in a] == []
    assert [h for h in left if h.cancelled()] == []


async def test_a_plugin_job_looks_up_its_statuses_without_the_enum_s_calls(
    tmp_path: Path, plugin_module: Any
) -> None:
    """`JobExecutionStatus(value)` is two Python calls of `enum` (`EnumType.__call__`,
    `Enum.__new__`), and so is `.value` (the enum's property, through its descriptor): a plugin
    job made 10 such lookups and reads (its reply models' statuses 3, the request's operation
    for its log fields 2, the record read back, the decision in the outbox and the store, the
    update's status and its wire value, one each; round 12). The agent's own modules (the
    emulator on the bus aside) look a status and a state up in a dict and read a StrEnum's
    value as the string it is."""
    enum_file = sys.modules["enum"].__file__
    callers: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code.co_filename != enum_file or frame.f_back is None:
            return
        caller = str(frame.f_back.f_globals.get("__name__"))
        if caller.startswith("jobs_agent") and not caller.startswith("jobs_agent.emulator"):
            callers.append(f"{caller}:{frame.f_back.f_code.co_name}")

    await _three_quiet_jobs(tmp_path, profile)
    assert sorted(callers) == []


async def test_a_plugin_job_reads_no_enum_member_off_its_class(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 `EnumType` has a `__getattr__`, so every read off an enum class
    (`ReplyKind.EVENT`, `ExecutionState.RUNNING`) goes through the type's slow attribute hook,
    about 900 instructions, and no profile shows it. A plugin job made 43 such reads (round
    18); the Jobs client, its topics, the runner, acquisition and the outbox read the members
    as module globals, and since round 19 the store and the recovery decision too (11 reads a
    job before). The emulator on the bus is not the agent's."""
    import enum

    left = ("jobs_agent.emulator",)
    reads: Counter[str] = Counter()

    def read(cls: type, name: str) -> Any:
        caller = str(sys._getframe(1).f_globals.get("__name__"))
        if caller.startswith("jobs_agent") and not caller.startswith(left):
            reads[f"{caller}: {type.__getattribute__(cls, '__name__')}.{name}"] += 1
        return type.__getattribute__(cls, name)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            with monkeypatch.context() as patch:
                patch.setattr(enum.EnumType, "__getattribute__", read)
                for number in range(3):
                    execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                    assert str(execution.status) == "SUCCEEDED", execution.status_details
            harness.assert_alive()
    assert reads == Counter()


async def test_a_notify_as_long_as_the_limit_builds_no_execution_references(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `notify` listing `NOTIFY_LIST_LIMIT` executions or more may be cut, so it asks for a
    look whatever it names (engine/wakes.py): its summaries are counted, not built into
    `ExecutionRef`s to be thrown away. A deep queue sends every event this long (30 and 40
    references per plugin job over a 500-job drain before). A short list is still read."""
    long_events = short_events = 0
    built_for_long = built_for_short = 0
    references = Spy(engine_wakes.ExecutionRef)
    monkeypatch.setattr(engine_wakes, "ExecutionRef", references)
    named = engine_wakes.named

    def counted(event: Any) -> Any:
        nonlocal long_events, short_events, built_for_long, built_for_short
        before = references.calls
        refs = named(event)
        if getattr(event, "cut", False):  # left undecoded (test_a_deep_queue_s_notify_...)
            long_events += 1
            built_for_long += references.calls - before
            return refs
        listed = getattr(event, "body", {}).get("jobs")
        if isinstance(listed, dict):
            if sum(len(summaries) for summaries in listed.values()) >= NOTIFY_LIST_LIMIT:
                long_events += 1
                built_for_long += references.calls - before
            else:
                short_events += 1
                built_for_short += references.calls - before
        return refs

    monkeypatch.setattr(engine_engine, "named", counted)
    await _drain_a_deep_queue(tmp_path)
    assert long_events > 0
    assert built_for_long == 0
    assert short_events > 0 and built_for_short > 0


async def test_a_deep_queue_s_notify_is_not_decoded(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `NOTIFY_LIST_LIMIT` executions or more pending, every `notify` lists that many and
    wakes a look whatever it names: its payload is left undecoded (`UnreadBody`; a notify of
    15 summaries was about 160,000 instructions to decode, two a plugin job). A short one is
    still decoded when it arrives."""
    decoded: list[bytes] = []
    decode = jobs_events.decode_object

    def counted(payload: bytes) -> Any:
        decoded.append(payload)
        return decode(payload)

    monkeypatch.setattr(jobs_events, "decode_object", counted)  # events, and `UnreadBody`'s
    monkeypatch.setattr(jobs_client, "decode_object", counted)  # replies
    stats = await _drain_a_deep_queue(tmp_path)
    notifies = [p for p in decoded if p.startswith(b'{"jobs"')]
    assert [p for p in notifies if p.count(b'"jobId"') >= NOTIFY_LIST_LIMIT] == []
    assert notifies  # the short ones, once the queue is shallow
    assert stats.events_dropped == 0


async def _drain_a_deep_queue(tmp_path: Path) -> Any:
    """`NOTIFY_LIST_LIMIT` + 5 plugin jobs queued in one go on a real agent, each SUCCEEDED;
    the Jobs client's stats after."""
    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            jobs = [f"deep-{number}" for number in range(NOTIFY_LIST_LIMIT + 5)]
            for job_id in jobs:  # queued in one go: the agent reads nothing in between
                harness.service.create_job(job_id, [THING], {"operation": "quiet"})
            for job_id in jobs:
                execution = await harness.wait_terminal(job_id)
                assert str(execution.status) == "SUCCEEDED", execution.status_details
            harness.assert_alive()
            return harness.agent.engine.client.stats  # type: ignore[union-attr]


async def test_a_job_without_packages_or_windows_reads_neither(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document that names no package (`installs`, `destinationPackageVersions`) and no
    window of its own (`maintenanceWindow`, `steps`) is not read for them: the package check,
    the rows of its SUCCEEDED and the window gate knew their answers without it (a plugin job
    read its packages twice and its windows once, round 18). Jobs that name them are read as
    before (test_inventory_engine.py, test_deferral.py, test_schedule_windows.py). The
    router's check of the document is not the engine's and is not counted."""
    from jobs_agent.engine import deferral as engine_deferral
    from jobs_agent.engine import packages as engine_packages

    read: Counter[str] = Counter()
    model = engine_packages._model()
    real_windows = engine_deferral.document_windows

    def job_packages(document: Any) -> Any:
        read["packages"] += 1
        return model.job_packages(document)

    def windows(document: Any) -> Any:
        read["windows"] += 1
        return real_windows(document)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            with monkeypatch.context() as patch:
                counted = model._replace(job_packages=job_packages)
                patch.setattr(engine_packages, "_model", lambda: counted)
                patch.setattr(engine_deferral, "document_windows", windows)
                for number in range(3):
                    execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                    assert str(execution.status) == "SUCCEEDED", execution.status_details
            harness.assert_alive()
    assert read == Counter()


async def test_a_plugin_job_builds_no_c_json_encoder_of_the_agents(
    tmp_path: Path, plugin_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`json.dumps` and `JSONEncoder.encode` build a C encoder (`_json.make_encoder`) at
    every call, about 17 k instructions of a payload's 25 k: the requests and the store's
    records are written by `jobs_agent.jsontext`'s encoders, built once (four a plugin job
    before: its two requests, its start record and its decision), and so is the router's size
    check of the document (one a job, `ensure_ascii=False`, before round 20). Counted for the
    engine, the Jobs client and the dispatch; the emulator's, in the same process here, are
    not the agent's."""
    import json.encoder

    built_by: Counter[str] = Counter()
    real = json.encoder.c_make_encoder

    def counted(*args: Any) -> Any:
        frame: Any = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith("json"):
            frame = frame.f_back
        caller = "?" if frame is None else str(frame.f_globals.get("__name__"))
        if caller.startswith(("jobs_agent.engine", "jobs_agent.jobs", "jobs_agent.dispatch")):
            built_by[caller] += 1
        return real(*args)

    with captured_logs("warning"):
        async with running_agent(tmp_path, _config(tmp_path)) as harness:
            await harness.run_job("warm-up", {"operation": "quiet"})
            with monkeypatch.context() as patch:
                patch.setattr(json.encoder, "c_make_encoder", counted)
                for number in range(3):
                    execution = await harness.run_job(f"quiet-{number}", {"operation": "quiet"})
                    assert str(execution.status) == "SUCCEEDED", execution.status_details
            harness.assert_alive()
    assert built_by == Counter()


async def test_a_plugin_job_builds_no_recovery_bounds_or_decision_of_its_own(
    tmp_path: Path, plugin_module: Any
) -> None:
    """Recovery's bounds (`Limits`) are made again only when a reload changes them, and a
    record no handler ran for is run from the start by one shared `Run` (frozen): a plugin
    job built one of each (round 18), about 5 k instructions."""
    from jobs_agent.engine import recovery

    built: Counter[str] = Counter()
    watched = {recovery.Limits, recovery.Run}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "__init__":
            made = type(frame.f_locals.get("self"))
            if made in watched:
                built[made.__name__] += 1

    await _three_quiet_jobs(tmp_path, profile)
    assert built == Counter()


async def test_a_plugin_job_s_notifications_wake_no_task(
    tmp_path: Path, plugin_module: Any
) -> None:
    """The engine hears a notification inside the client's delivery of it
    (`JobsClient.listen`): a notification queued for `events()` cost a future, a loop callback,
    a step of the engine's events' task and of the generator, two per plugin job before
    (issue 18). Counted by the generator's steps (a resumed generator is a profiled call) and
    the notifications the engine handled."""
    steps: Counter[str] = Counter()
    client_file, engine_file = jobs_client.__file__, engine_engine.__file__

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename == client_file and code.co_name == "events":
            steps["events() step"] += 1
        elif code.co_filename == engine_file and code.co_name == "_heard":
            steps["heard"] += 1

    await _three_quiet_jobs(tmp_path, profile)
    assert steps["events() step"] == 0, steps
    assert steps["heard"] >= 3, steps  # every job's notifications still reach the engine
