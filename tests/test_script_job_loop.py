"""What a script job asks of the event loop besides its step, counted (issue 18).

A script job woke the agent about 16 times where a plugin job woke it 9.5 times, and each
wake-up after another process ran pays its caches again: its CPU moved some 20 % with the load
beside it. These tests count, on the real agent and the embedded emulator on one in-process
bus, the tasks a script job makes, the done-callbacks hung on its handler's task and the
thread hand-offs of its end, so that a change which brings a task per event back fails here.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import pathlib
import posixpath
import random
import sys
from collections import Counter
from collections.abc import Coroutine, Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any, cast

import pytest

from jobs_agent.dispatch.output import log_path
from jobs_agent.engine import jobfiles
from jobs_agent.engine.jobdirs import JOB_DIRECTORY_MODE, RECYCLED, RECYCLED_LAYOUT
from jobs_agent.engine.jobfiles import JobFiles
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.vocabulary import ExecutionRef
from tests.harness import wait_until
from tests.helpers.agent_harness import Harness, make_config, make_handler_dir, running_agent
from tests.helpers.calls import timers_armed

DOCUMENT = {
    "version": "1.0",
    "steps": [{"action": {"name": "Ok", "type": "runHandler", "input": {"handler": "ok.sh"}}}],
}
JOBS = 3


async def warm_up(harness: Harness) -> None:
    """One script job first, so that what the first job imports and makes is not counted."""
    engine = harness.agent.engine
    assert engine is not None
    await harness.run_job("warm-up", DOCUMENT)
    await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")


async def script_jobs(harness: Harness) -> None:
    """`JOBS` script jobs after `warm_up`, each succeeded and reported before the next."""
    engine = harness.agent.engine
    assert engine is not None
    for number in range(JOBS):
        execution = await harness.run_job(f"script-{number}", DOCUMENT)
        assert str(execution.status) == "SUCCEEDED", execution.status_details
        await wait_until(lambda n=number + 2: len(engine.outcomes) == n, 15, "the report")


@contextmanager
def tasks_made() -> Iterator[Counter[str]]:
    """The coroutines of the tasks made on the running loop meanwhile, by qualified name."""
    loop = asyncio.get_running_loop()
    made: Counter[str] = Counter()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        made[getattr(coro, "__qualname__", repr(coro))] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield made
    finally:
        loop.set_task_factory(None)


async def test_a_script_job_makes_one_task_its_handlers(tmp_path: Path) -> None:
    """The handler's task and nothing else: before, each script job made four (the handler's,
    the progress reporter's, and two `Event.wait` tasks for the supervisor's `asyncio.wait`:
    the service's end and the agent's stop), each made, stepped, cancelled and stepped again.
    A step that outlives `jobs.progress_interval_seconds` is reported at 0 % (a task that
    sends it): the harness's 0.05 s is shorter than a script's spawn and run on a loaded
    machine, so the longest interval here (an hour): only the job's own tasks are counted."""
    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        with tasks_made() as made:
            await script_jobs(harness)
    assert made == Counter({"watched": JOBS})


async def test_a_script_job_takes_no_turn_to_look_whether_its_handler_ended_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's `sleep(0)`, which lets a plugin that ends within its first step skip its
    reporter and supervising, is skipped for a handler that runs a step's processes (it never
    ends that soon): one task step of the engine fewer per script job."""
    looks: list[float] = []
    sleep = asyncio.sleep

    async def counted(delay: float, result: Any = None) -> Any:
        if sys._getframe(1).f_code.co_filename.endswith(os.path.join("engine", "runner.py")):
            looks.append(delay)
        return await sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", counted)
    make_handler_dir(tmp_path)
    async with running_agent(tmp_path, make_config(tmp_path)) as harness:
        for number in range(JOBS):
            execution = await harness.run_job(f"script-{number}", DOCUMENT)
            assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert looks == []


SCRIPT_PATH = ("jobs_agent.dispatch.", "jobs_agent.engine.jobfiles")
"""The modules a script job runs through that a plugin job does not (the dispatch layer's
step, its output and containment; the end's directory and log)."""


async def test_a_script_job_runs_no_import_statement_of_the_script_path_after_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the script path imports lazily (not at start: issue 18) is imported once, at the
    first job: an import statement costs about 8 k instructions at every run, its module
    loaded or not, and a script job ran five (the step's group kind, the output tail's
    `unicodedata` and the `re` that `Pattern.sub` imports for a template with a backslash,
    the end's `jobdirs` and output log index). What they did still happens: the jobs
    succeed, their directory is recycled, a tail with a control character is cleaned."""
    imports: Counter[str] = Counter()
    counting = False
    real_import = builtins.__import__

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if counting and caller.startswith(SCRIPT_PATH):
            imports[f"{caller}: {name}"] += 1
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", counted)
    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        counting = True
        await script_jobs(harness)
        counting = False
        recycled = config.state_dir / "jobs" / RECYCLED
        await wait_until(recycled.exists, 15, "the last job's directory recycled")
    assert imports == Counter()
    from jobs_agent.dispatch.output import single_line

    assert single_line("a\tb\x07c\r\n") == "a bc"


@contextmanager
def pathlib_asked() -> Iterator[Counter[str]]:
    """Calls into `pathlib` (a `Path` made, joined, turned to text, asked `is_dir`) meanwhile,
    by the function outside pathlib that made them, as "module.function"."""
    made: Counter[str] = Counter()
    library = pathlib.__file__

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename != library or caller is None:
            return
        if caller.f_code.co_filename != library:
            made[f"{caller.f_globals.get('__name__')}.{caller.f_code.co_qualname}"] += 1

    sys.setprofile(profile)
    try:
        yield made
    finally:
        sys.setprofile(None)


async def test_a_script_job_s_spawn_walk_and_log_make_no_path_object(tmp_path: Path) -> None:
    """The handler's name goes from the document to the exec as text: the sandbox made a
    `Path` of it per job, to walk it (`securefs`), turn it back to text for the chain (`spawn`)
    and ask whether the step's directory `is_dir`; the step's log was named by two `Path`
    joins and its directory by `parent` (`output`), and the end made a `Path` of the log's
    name to take it into the index (`jobfiles`). A `Path` made costs more than the rest of
    the walk's Python (issue 18). Their work is still done: the jobs succeed, each one's
    log is written where `log_path` says."""
    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        with pathlib_asked() as made:
            await script_jobs(harness)
    modules = (
        "jobs_agent.securefs.",
        "jobs_agent.dispatch.spawn.",
        "jobs_agent.dispatch.output.",
        "jobs_agent.engine.jobfiles.",
    )
    for number in range(JOBS):
        log = log_path(config.state_dir, f"script-{number}", 1)
        assert "[jobs-agent]" in log.read_text(), log
    sandbox = ("run", "_spawn")
    sandbox_calls = {f"jobs_agent.dispatch.process.Sandbox.{name}" for name in sandbox}
    assert [name for name in made if name.startswith(modules) or name in sandbox_calls] == [], made


async def test_a_script_job_s_dispatch_layer_makes_no_path_object(tmp_path: Path) -> None:
    """The dispatch layer takes the text of the `Path`s it is given (the handler directory,
    the scratch and state directories) and makes none of its own per script job: the
    located handler (`paths`), the step's document file (`scripts`, a join), the step's
    cgroup (`containment`, a join) were `Path`s made per job, and the containment was looked
    up by hashing the state directory's `Path` at each ask. Making a `Path` costs about three
    import statements, some 24 k instructions (issue 18). Their work is still done: the jobs
    succeed."""
    asked: Counter[str] = Counter()
    library = pathlib.__file__

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename != library or caller is None:
            return
        module = str(caller.f_globals.get("__name__"))
        if module.startswith("jobs_agent.dispatch."):
            asked[f"{module}.{caller.f_code.co_qualname} -> {frame.f_code.co_name}"] += 1

    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        sys.setprofile(profile)
        try:
            await script_jobs(harness)
        finally:
            sys.setprofile(None)
    reading = ("__fspath__", "__str__")  # the text of a `Path` given, kept by the `Path`
    assert [call for call in asked if not call.endswith(reading)] == [], asked


async def test_a_script_job_s_recycled_names_are_joined_without_posixpath(tmp_path: Path) -> None:
    """Where a job's directory and its step's document are recycled to (`jobs/.recycled`,
    `jobs/.recycled-document`) was found by two `os.path.dirname`s and an `os.path.join`
    each time, four times a script job: six Python calls each (issue 18). The job directory
    `JobFiles` joins has its last two names cut off in one call now; the jobs still recycle
    their directory."""
    asked: Counter[str] = Counter()
    library = posixpath.dirname.__code__.co_filename  # "<frozen posixpath>", not __file__

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename != library or caller is None:
            return
        if caller.f_globals.get("__name__") == "jobs_agent.engine.jobdirs":
            asked[f"{caller.f_code.co_qualname} -> {frame.f_code.co_name}"] += 1

    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        sys.setprofile(profile)
        try:
            await script_jobs(harness)
        finally:
            sys.setprofile(None)
        recycled = config.state_dir / "jobs" / RECYCLED
        await wait_until(recycled.exists, 15, "the last job's directory recycled")
    assert asked == Counter()


def test_the_recycled_names_are_those_dirname_and_join_give() -> None:
    """The same names as `os.path.join(os.path.dirname(os.path.dirname(base)), name)` for
    any text: 20,000 random ones (fixed seed) of `/`, `a`, `b`, `.`, and the usual forms."""
    from jobs_agent.engine.jobdirs import SPARE_DOCUMENT, recycled_path, spare_document_path

    generator = random.Random(18)
    bases = ["/var/lib/jobs-agent/jobs/default/j1", "/jobs/ns/j", "/a/b", "/a/b/c/", "", "/"]
    bases += ["".join(generator.choices("/ab.", k=generator.randint(0, 10))) for _ in range(20_000)]
    for base in bases:
        above = os.path.dirname(os.path.dirname(base))
        assert recycled_path(base) == os.path.join(above, RECYCLED), base
        assert spare_document_path(base) == os.path.join(above, SPARE_DOCUMENT), base


async def test_a_script_job_s_context_makes_its_directories_without_pathlib_or_posixpath(
    tmp_path: Path,
) -> None:
    """The engine's context made its job's directories by `Path`: the scratch and the state,
    the two again with their parents to compare, about six `Path`s a script job, the largest
    pathlib cost left on the script path, and `spare_document` cut its name by `dirname`. The
    step's files, working directory and environment take the directories as text
    (`scripts.NamesDirectoriesAsText`), and the names are cut by one `rpartition` (issue 18).
    Their work is still done: the jobs succeed, each one's directory is taken from the one
    recycled before it and recycled again, and a step still finds its state directory made."""
    asked: Counter[str] = Counter()
    libraries = {pathlib.__file__, posixpath.dirname.__code__.co_filename}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename not in libraries or caller is None:
            return
        if caller.f_globals.get("__name__") == "jobs_agent.engine.context":
            asked[f"{caller.f_code.co_qualname} -> {frame.f_code.co_name}"] += 1

    handlers = make_handler_dir(tmp_path)
    state = handlers / "state.sh"
    # its state directory made, its document in its working directory (the scratch)
    state.write_text(
        '#!/bin/sh\ntest -d "$JOBS_AGENT_STATE_DIR" && test -f "./${JOBS_AGENT_DOCUMENT##*/}"\n'
    )
    state.chmod(0o755)
    document = {
        "version": "1.0",
        "steps": [
            {"action": {"name": "Ok", "type": "runHandler", "input": {"handler": "state.sh"}}}
        ],
    }
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    inodes: list[int] = []
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await warm_up(harness)
        recycled = config.state_dir / "jobs" / RECYCLED
        for number in range(JOBS):
            await wait_until(recycled.exists, 15, "the last job's directory recycled")
            inodes.append(recycled.stat().st_ino)
            sys.setprofile(profile)
            try:
                execution = await harness.run_job(f"state-{number}", document)
            finally:
                sys.setprofile(None)
            assert str(execution.status) == "SUCCEEDED", execution.status_details
            await wait_until(lambda n=number + 2: len(engine.outcomes) == n, 15, "the report")
        await wait_until(recycled.exists, 15, "the last job's directory recycled")
        inodes.append(recycled.stat().st_ino)
    assert asked == Counter()
    assert len(set(inodes)) == 1, inodes  # one directory, taken and recycled by every job


async def test_a_script_job_s_log_and_cleanup_cut_their_names_without_posixpath(
    tmp_path: Path,
) -> None:
    """The step's log was named by an `os.path.join` and the pruned log it may take by two
    `dirname`s and a join (`output`), and the end asked `basename` of the two directories it
    had joined itself (`jobfiles`): six `posixpath` calls per script job, six Python calls
    each (issue 18). Only the look at the file system is left (`lexists`: is the log new).
    Their work is still done: each job's log is where `log_path` says, the last directory
    recycled, and a pruned log is still taken by the next job (`test_output_logs.py`)."""
    asked: Counter[str] = Counter()
    library = posixpath.dirname.__code__.co_filename
    modules = ("jobs_agent.dispatch.output", "jobs_agent.engine.jobfiles")

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame.f_back
        if event != "call" or frame.f_code.co_filename != library or caller is None:
            return
        if caller.f_globals.get("__name__") in modules and frame.f_code.co_name != "lexists":
            asked[f"{caller.f_code.co_qualname} -> {frame.f_code.co_name}"] += 1

    make_handler_dir(tmp_path)
    config = make_config(tmp_path, progress_interval_seconds=3600.0)
    async with running_agent(tmp_path, config) as harness:
        await warm_up(harness)
        sys.setprofile(profile)
        try:
            await script_jobs(harness)
        finally:
            sys.setprofile(None)
        recycled = config.state_dir / "jobs" / RECYCLED
        await wait_until(recycled.exists, 15, "the last job's directory recycled")
    assert asked == Counter()
    for number in range(JOBS):
        log = log_path(config.state_dir, f"script-{number}", 1)
        assert "[jobs-agent]" in log.read_text(), log


def test_the_log_s_directory_is_the_one_dirname_gives() -> None:
    """`output.directory_of` is `os.path.dirname` for any text: 20,000 random ones (fixed
    seed) of `/`, `a`, `.`, and the usual forms; `log_file` joins as `os.path.join` did."""
    from jobs_agent.dispatch.output import directory_of, log_file

    generator = random.Random(1919)
    texts = ["/var/lib/jobs-agent/logs/j1-1.log", "a", "/a", "//a", "a//b", "a/b/", "", "/"]
    texts += ["".join(generator.choices("/a.", k=generator.randint(0, 10))) for _ in range(20_000)]
    for text in texts:
        assert directory_of(text) == os.path.dirname(text), text
    for state_dir in (Path("/var/lib/jobs-agent"), Path("relative/state"), Path("/")):
        for _ in range(2):  # the second from the kept join
            expected = os.path.join(state_dir, "logs", "j-1_A-2.log")
            assert log_file(state_dir, "j-1_A", 2) == expected


def test_the_context_s_split_is_os_path_split() -> None:
    """The same as `os.path.split` for any text: 20,000 random ones (fixed seed) of `/`,
    `a`, `.`, and the usual forms."""
    from jobs_agent.engine.context import split

    generator = random.Random(19)
    texts = ["/var/lib/jobs-agent/jobs/default/j1/scratch-1", "a", "/a", "//a", "a//b", "", "/"]
    texts += ["".join(generator.choices("/a.", k=generator.randint(0, 10))) for _ in range(20_000)]
    for text in texts:
        assert split(text) == os.path.split(text), text


# -- the progress reporter's timer -----------------------------------------------------------
class Sender:
    """The reporter's sender: records each update; `gate`, when set, holds a send until done."""

    def __init__(self, keep_going: bool = True) -> None:
        self.sent: list[tuple[dict[str, Any] | None, int | None]] = []
        self.keep_going = keep_going
        self.gate: asyncio.Future[None] | None = None
        self.arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __call__(self, details: Mapping[str, Any] | None, step_timeout: int | None) -> bool:
        self.sent.append((None if details is None else dict(details), step_timeout))
        if not self.arrived.done():
            self.arrived.set_result(None)
        if self.gate is not None:
            await self.gate
        return self.keep_going


async def test_the_reporter_arms_a_timer_only_when_an_update_is_due() -> None:
    """Nothing due (no progress, no step timer): no timer and no task; progress arms one at
    its interval, a step timer one at its renewal; a thousand calls send one update."""
    loop = asyncio.get_running_loop()
    sender = Sender()
    with timers_armed() as armed, tasks_made() as made:
        quiet = ProgressReporter(sender, interval=3600, step_timeout_minutes=None)
        quiet.start()
        await asyncio.sleep(0)
        await quiet.close()
    assert armed == [] and not made and sender.sent == []

    reporter = ProgressReporter(sender, interval=3600, step_timeout_minutes=10)
    with timers_armed() as armed:
        reporter.start()
        started = loop.time()
        for percent in range(1000):
            reporter.update(percent / 10, "busy", {"stage": "one"})
    assert len(armed) == 1 and abs(armed[0] - started - 240) < 1  # the renewal: 0.4 x 10 min
    reporter.extend_step_timeout(20)  # sent at once, with the latest progress
    await sender.arrived
    assert sender.sent == [({"percent": "99.9", "message": "busy", "stage": "one"}, 20)]
    await reporter.close()


async def test_a_send_the_service_refused_ends_the_reporter_and_close_ends_a_send() -> None:
    sender = Sender(keep_going=False)
    reporter = ProgressReporter(sender, interval=0, step_timeout_minutes=None)
    reporter.start()
    reporter.update(10, None, {})
    await sender.arrived
    await reporter.close()
    reporter.extend_step_timeout(5)  # the execution is over: nothing more is sent
    await asyncio.sleep(0)
    assert reporter.updates_sent == 1 and len(sender.sent) == 1

    held = Sender()
    held.gate = asyncio.get_running_loop().create_future()
    reporter = ProgressReporter(held, interval=0, step_timeout_minutes=None)
    reporter.start()
    reporter.update(20, None, {})
    await held.arrived
    await reporter.close()  # the update being sent is cancelled, as the reporter's task was
    assert held.gate.cancelled() and reporter.updates_sent == 0


# -- the job directory's recycling -------------------------------------------------------------
async def test_a_script_jobs_end_hands_its_directory_over_without_a_hop_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory is recycled on the loop (fast here): no `asyncio.to_thread` per job (its
    future chained back through the loop's self-pipe, three callbacks and a turn of the loop,
    two pool threads woken), and still recycled."""
    hops: Counter[str] = Counter()
    to_thread = asyncio.to_thread

    async def counted(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops[getattr(function, "__name__", repr(function))] += 1
        return await to_thread(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    make_handler_dir(tmp_path)
    config = make_config(tmp_path)
    recycled = config.state_dir / "jobs" / RECYCLED
    async with running_agent(tmp_path, config) as harness:
        engine = harness.agent.engine
        assert engine is not None
        await harness.run_job("warm-up", DOCUMENT)
        await wait_until(lambda: len(engine.outcomes) == 1, 15, "the warm-up job reported")
        hops.clear()
        for number in range(JOBS):
            execution = await harness.run_job(f"script-{number}", DOCUMENT)
            assert str(execution.status) == "SUCCEEDED", execution.status_details
            await wait_until(lambda n=number + 2: len(engine.outcomes) == n, 15, "the report")
        assert hops["recycle"] == 0, hops
        await wait_until(recycled.exists, 15, "the last job's directory recycled")
    assert not (config.state_dir / "jobs" / "default" / f"script-{JOBS - 1}").exists()


async def test_a_slow_recycling_sends_the_next_ones_to_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the loop while it is fast, done when `cleanup` returns; once one took longer than
    `INLINE_RECYCLE_SECONDS` (here: any), the next ones go to a thread, as every one did
    before, so that a slow flash stalls the loop at most once per cool-down."""
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return await to_thread(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    monkeypatch.setattr(jobfiles, "INLINE_RECYCLE_SECONDS", -1.0, raising=False)
    jobs = tmp_path / "jobs"
    shared = SimpleNamespace(settings=SimpleNamespace(state_dir=tmp_path))
    files = JobFiles(cast(Any, shared), cast(Any, None))
    for number, job in enumerate(("j1", "j2")):
        ref = ExecutionRef(None, job, 1)
        scratch, state = files.dirs(ref)
        for directory in (os.path.dirname(scratch), scratch, state):
            os.makedirs(directory, JOB_DIRECTORY_MODE, exist_ok=True)
        await files.cleanup(ref)
        assert not (jobs / "default" / job).exists()
        assert hops == ["recycle"] * number
    assert sorted(os.listdir(jobs / RECYCLED)) == sorted(RECYCLED_LAYOUT)
