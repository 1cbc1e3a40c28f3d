"""What a script job's path asks of the system, counted through seams (issue 18).

A script job used to cost the agent about twice a plugin job, much of it in small repeated
work: the job's scratch directory made again at every read of `scratch_dir`, the handler's
path resolved three times and its `#!` line read twice more by name, a `fstat` and a
`geteuid` per directory of every trust walk. These tests count the calls (never time them), so
that a change which brings the repeats back fails here, and check that what the repeats did
still happens where it matters (a removed scratch directory is made again for the next step).
"""

from __future__ import annotations

import asyncio
import builtins
import collections.abc
import json
import os
import pathlib
import shutil
import subprocess
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent import securefs
from jobs_agent.dispatch import shebang
from jobs_agent.dispatch.containment import containment_for
from jobs_agent.dispatch.output import OutputLog, OutputLogIndex
from jobs_agent.dispatch.paths import locate_handler, resolved_directory
from jobs_agent.dispatch.pipes import ExitWatch
from jobs_agent.dispatch.scripts import StepFiles
from jobs_agent.dispatch.users import own_user
from tests.harness import wait_until
from tests.helpers.engine_context import engine_context


class Counter:
    """Calls of one function, counted while the test patches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(args)
            return function(*args, **kwargs)

        return counted


@pytest.fixture
def handler_tree() -> Iterator[Path]:
    """A handler directory only root can change (the trust walk refuses pytest's tmp_path
    below a world-writable /tmp only if it is not sticky; a directory of our own is clearer)."""
    base = Path(os.path.realpath(Path("/tmp") / f"ja-costs-{os.getpid()}"))
    handlers = base / "handlers"
    handlers.mkdir(parents=True, mode=0o755)
    script = handlers / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    try:
        yield handlers
    finally:
        shutil.rmtree(base)


def test_the_job_directories_are_made_once_per_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mkdirs = Counter()
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdirs.wrap(pathlib.Path.mkdir))
    ctx = engine_context(tmp_path / "jobs")
    assert ctx.scratch_dir.is_dir() and ctx.state_dir.is_dir()  # made at the first ask
    assert mkdirs.calls
    mkdirs.calls.clear()
    for _ in range(3):  # a script step reads scratch_dir several times
        assert ctx.scratch_dir.is_dir()
        assert ctx.state_dir.is_dir()
    assert mkdirs.calls == []


def test_a_context_builds_no_path_for_directories_never_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine gives the directories as strings (`JobFiles.dirs`): most plugins never ask
    for them, and two `Path`s built per job were a third of the engine's work between the
    durable RUNNING and the handler's start (issue 18)."""
    job = f"{tmp_path}/jobs/default/j1"
    built = Counter()
    monkeypatch.setattr(pathlib.Path, "__new__", built.wrap(pathlib.Path.__new__))
    ctx = engine_context(f"{tmp_path}/jobs")
    assert built.calls == []
    assert ctx.state_dir == Path(job, "state") and ctx.state_dir.is_dir()
    assert not Path(job, "scratch-1").exists()
    ctx.scratch_dir = Path(job, "other")  # set (a test's context, the dispatch layer): made at
    assert ctx.scratch_dir.is_dir()  # the next ask


def test_a_step_makes_the_scratch_directory_again_if_an_earlier_step_removed_it(
    tmp_path: Path,
) -> None:
    ctx = engine_context(tmp_path / "jobs")
    shutil.rmtree(ctx.scratch_dir)  # what a step may do to its own scratch space
    files = StepFiles(ctx, own_user())
    try:
        written = files.write_json("document.json", {"a": 1})
        assert written == ctx.scratch_dir / "document.json"
        assert written.read_text() == '{"a": 1}'
    finally:
        files.close()


def test_the_trust_walk_checks_each_directory_once(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `fstat` per component (and `/`), one `geteuid` per walk: the executable's own
    checks (regular file, execute bit, identity) reuse the walk's `fstat` of it."""
    script = handler_tree / "noop.sh"
    fstats, euids = Counter(), Counter()
    monkeypatch.setattr(os, "fstat", fstats.wrap(os.fstat))
    monkeypatch.setattr(os, "geteuid", euids.wrap(os.geteuid))
    executable = securefs.open_executable(script, what="handler")
    executable.close()
    assert len(fstats.calls) == len(script.parts)  # "/" and each name below it
    assert len(euids.calls) == 1
    assert executable.is_script and executable.head == b"#!/bin/sh\nexit 0\n"


def test_the_trust_walk_describes_only_a_component_others_could_write(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each component is checked by its `fstat` (owner, mode) as before, and described
    (`describe_owner_problem`, a call and its mode arithmetic) only when it is not plainly
    fine: here the sticky, world-writable /tmp alone, which it still accepts; before, every
    component of both walks of a script job was (issue 18). A group-writable directory on
    the way is still refused with its words."""
    script = handler_tree / "noop.sh"
    described = Counter()
    monkeypatch.setattr(
        securefs, "describe_owner_problem", described.wrap(securefs.describe_owner_problem)
    )
    prefixes = [Path("/"), *script.parents[:-1][::-1], script]
    writable = [p for p in prefixes if os.stat(p).st_mode & 0o022]
    securefs.open_executable(script, what="handler").close()
    assert len(described.calls) == len(writable) == 1  # /tmp
    handler_tree.chmod(0o775)
    try:
        with pytest.raises(securefs.UntrustedPath) as caught:
            securefs.open_executable(script, what="handler")
    finally:
        handler_tree.chmod(0o755)
    assert caught.value.reason == f"handler: {handler_tree} is writable by its group (mode 0775)"


def test_a_walk_still_names_the_offending_directory(handler_tree: Path) -> None:
    handler_tree.chmod(0o777)
    try:
        with pytest.raises(securefs.UntrustedPath) as caught:
            securefs.open_executable(handler_tree / "noop.sh", what="handler")
    finally:
        handler_tree.chmod(0o755)
    assert caught.value.component == handler_tree
    assert caught.value.is_dir
    assert f"handler: {handler_tree} is writable by others (mode 0777)" == caught.value.reason


def test_locating_a_handler_resolves_its_directory_once_and_reads_it_by_descriptor(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler right in the handler directory, named as the directory is written, is found
    by the trusted walk alone (no `lstat` per component, as by name before round 5; since
    round 9 neither the directory's resolution through `/proc/self/fd`, an open, a `readlink`
    and a close, nor an `lstat` of the handler: the walk follows no symlink, so its success
    says the same); its `#!` line comes from the checked descriptor, never from opening it
    again by name."""
    lstats, opens, readlinks = Counter(), Counter(), Counter()
    monkeypatch.setattr(os, "lstat", lstats.wrap(os.lstat))
    monkeypatch.setattr(os, "readlink", readlinks.wrap(os.readlink))
    monkeypatch.setattr(shebang, "open", opens.wrap(builtins.open), raising=False)
    located = locate_handler(handler_tree, "noop.sh")
    assert located.path == handler_tree / "noop.sh"
    assert located.head is not None and located.head.startswith(b"#!/bin/sh\n")
    assert shebang.interpreter_problem(located.path, "/usr/bin:/bin", located.head) is None
    assert opens.calls == []
    assert lstats.calls == [] and readlinks.calls == [], (lstats.calls, readlinks.calls)


@pytest.mark.parametrize("how", ["as it is", "through a symlink", "with ..", "relative"])
def test_the_handler_directory_resolves_as_by_name(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The kernel's answer is the one resolving by name gives, and a directory that does not
    exist is still resolved by name (its handlers are then not found, as before)."""
    given = {
        "as it is": handler_tree,
        "through a symlink": handler_tree.parent / "via",
        "with ..": handler_tree / ".." / "handlers",
        "relative": Path("handlers"),
    }[how]
    (handler_tree.parent / "via").symlink_to(handler_tree)
    monkeypatch.chdir(handler_tree.parent)
    assert resolved_directory(given) == given.resolve() == handler_tree
    assert locate_handler(given, "noop.sh").path == handler_tree / "noop.sh"
    missing = given / "missing"
    assert resolved_directory(missing) == missing.resolve()


def test_a_symlinked_handler_is_still_resolved_and_kept_inside(handler_tree: Path) -> None:
    (handler_tree / "link.sh").symlink_to("noop.sh")
    assert locate_handler(handler_tree, "link.sh").path == handler_tree / "noop.sh"
    outside = handler_tree.parent / "outside.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    (handler_tree / "out.sh").symlink_to(outside)
    from jobs_agent_handlers.api import JobRejected

    with pytest.raises(JobRejected, match="outside the handler directory"):
        locate_handler(handler_tree, "out.sh")


def test_output_logs_make_their_directory_only_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mkdirs = Counter()
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdirs.wrap(pathlib.Path.mkdir))
    logs = tmp_path / "state" / "logs"
    for number in range(3):
        log = OutputLog(logs / f"job-{number}.log", 1000)
        log.note("started")
        log.close()
        if number == 0:
            assert mkdirs.calls  # the first log made the directory
            mkdirs.calls.clear()
    assert mkdirs.calls == []
    assert (logs.stat().st_mode & 0o777) == 0o700
    assert (logs / "job-2.log").read_text() == "[jobs-agent] started\n"


def test_below_the_log_limit_a_new_log_tries_no_pruned_log_after_the_first_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below `jobs.output_logs_max_count` no log is pruned, so none is kept to reuse: every
    script job's log looked at its own name (`lstat`) and tried to rename the pruned one into
    its place (refused, an `OSError` made and caught), about 15 k instructions (issue 18).
    Now only the first does; once a prune keeps one, the next log is that file again, and a
    log that exists already is still appended to."""
    (tmp_path / "state" / "jobs").mkdir(parents=True)
    logs = tmp_path / "state" / "logs"
    logs.mkdir(mode=0o700)
    renames, lstats = Counter(), Counter()
    monkeypatch.setattr(os, "rename", renames.wrap(os.rename))
    monkeypatch.setattr(os, "lstat", lstats.wrap(os.lstat))
    for number in range(4):
        log = OutputLog(str(logs / f"job-{number}.log"), 1000)
        log.note(f"job {number}")
        log.close()
        os.utime(logs / f"job-{number}.log", (1000 + number, 1000 + number))
        if number == 0:
            assert (len(renames.calls), len(lstats.calls)) == (1, 1)  # none kept: refused
            renames.calls.clear()
            lstats.calls.clear()
    assert (renames.calls, lstats.calls) == ([], [])
    again = OutputLog(str(logs / "job-3.log"), 1000)  # a continuing execution's log
    again.note("again")
    again.close()
    assert (logs / "job-3.log").read_text() == "[jobs-agent] job 3\n[jobs-agent] again\n"
    index = OutputLogIndex(logs)
    index.load()
    inode = (logs / "job-0.log").stat().st_ino
    assert index.prune(max_count=3, max_total_bytes=10**6) == [logs / "job-0.log"]
    renames.calls.clear()
    log = OutputLog(str(logs / "job-4.log"), 1000)
    log.close()
    assert len(renames.calls) == 1  # the pruned log's file, taken
    assert (logs / "job-4.log").stat().st_ino == inode


def test_a_new_output_log_asks_no_fstat_and_a_continued_one_keeps_its_size_and_privacy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's new log is made exclusively (or is the pruned one taken, checked by
    descriptor): it is known to be empty and mode 0600, so its `fstat` (an `os.stat_result`,
    about 5 k instructions) is not asked, where every script job asked one (issue 18). A log
    that is there (a continuing execution's) is still asked: its size counts toward the cap
    and a mode an older version left is tightened. A symlink at the log's name is refused."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    fstats = Counter()
    monkeypatch.setattr(os, "fstat", fstats.wrap(os.fstat))
    log = OutputLog(logs / "new.log", 30)
    log.write(b"0123456789")
    log.close()
    assert fstats.calls == []
    assert ((logs / "new.log").stat().st_mode & 0o777) == 0o600
    continued = OutputLog(logs / "new.log", 30)  # 10 bytes of the cap's 30 used already
    continued.write(b"x" * 25)
    continued.close()
    assert len(fstats.calls) == 1
    assert (logs / "new.log").read_bytes().startswith(b"0123456789" + b"x" * 20 + b"\n")
    old = logs / "old.log"
    old.write_text("")
    old.chmod(0o644)
    OutputLog(old, 30).close()
    assert (old.stat().st_mode & 0o777) == 0o600
    (logs / "link.log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        OutputLog(logs / "link.log", 30)
    assert not (tmp_path / "elsewhere").exists()


def test_step_files_are_written_without_unlinking_first_and_replace_what_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh document costs no unlink; one left by an earlier run of the step (or a symlink
    planted there) is unlinked, never followed, and the file is written anew."""
    ctx = engine_context(tmp_path / "jobs")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    unlinks = Counter()
    monkeypatch.setattr(os, "unlink", unlinks.wrap(os.unlink))
    files = StepFiles(ctx, own_user())
    try:
        files.write_json("document.json", {"step": "é"})
        assert unlinks.calls == []
        (ctx.scratch_dir / "checkpoint.json").symlink_to(victim)
        written = files.write_json("checkpoint.json", [1, 2])
        assert len(unlinks.calls) == 1
    finally:
        files.close()
    assert victim.read_text() == "keep"
    assert not written.is_symlink() and written.read_text() == "[1, 2]"
    assert (written.stat().st_mode & 0o777) == 0o600
    assert (ctx.scratch_dir / "document.json").read_text(encoding="utf-8") == '{"step": "é"}'


def test_step_files_are_encoded_without_an_encoder_built_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`json.dumps(value, ensure_ascii=False)` built a `JSONEncoder` and its C encoder for
    every file a step is given, about 17 k instructions per script job (issue 18): the
    encoder is built once. The files' text is `json.dumps`'s, byte for byte."""
    document = {"version": "1.0", "steps": [{"action": {"name": "é", "n": 1.5, "t": None}}]}
    checkpoint = ["ü", {"a": [1, 2.25, True, False]}, "line\nbreak"]
    built = Counter()
    monkeypatch.setattr(json.JSONEncoder, "__init__", built.wrap(json.JSONEncoder.__init__))
    ctx = engine_context(tmp_path / "jobs")
    files = StepFiles(ctx, own_user())
    try:
        for _ in range(3):  # three steps' files
            written = [files.write("document.json", document)]
            written.append(files.write("checkpoint.json", checkpoint))
            written.append(files.write("text.json", "plain é"))
    finally:
        files.close()
    assert built.calls == []
    monkeypatch.undo()
    expected = [json.dumps(value, ensure_ascii=False) for value in (document, checkpoint)]
    expected.append(json.dumps("plain é", ensure_ascii=False))
    assert [Path(name).read_text(encoding="utf-8") for name in written] == expected


def test_step_files_ask_the_context_for_its_spare_document_without_a_protocol_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`isinstance` of a runtime-checkable protocol walks its members in Python: more CPU per
    step than the document file it lets the step reuse (`KeepsSpareDocument`, issue 18)."""
    checks = Counter()
    meta = type(typing.Protocol)
    monkeypatch.setattr(meta, "__instancecheck__", checks.wrap(meta.__instancecheck__))
    ctx = engine_context(tmp_path / "jobs")
    files = StepFiles(ctx, own_user())
    try:
        files.write_json("document.json", {})
    finally:
        files.close()
    assert checks.calls == []


def test_a_cgroup_left_by_an_earlier_run_of_the_step_is_emptied_before_reuse(
    tmp_path: Path,
) -> None:
    """The group's `mkdir` finding the directory there is how a leftover is noticed (no
    `stat` first): whatever still runs in it is killed before the step joins it."""
    import signal
    import subprocess

    from jobs_agent.dispatch.containment import CgroupContainment, ContainmentError

    try:
        containment = containment_for("cgroup", tmp_path)
    except ContainmentError as exc:
        pytest.skip(f"no writable cgroup v2 hierarchy here: {exc}")
    assert isinstance(containment, CgroupContainment)
    name = f"default.leftover-{os.getpid()}.1"
    first = containment.group(name)
    assert first.join_fd is not None
    os.close(first.join_fd)
    first.join_fd = None
    path = containment.base / name
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (path / "cgroup.procs").write_text(str(sleeper.pid))
        second = containment.group(name)  # the agent died; the step runs again
        try:
            assert sleeper.wait(timeout=10) == -signal.SIGKILL
            assert second.empty()
        finally:
            assert second.close_if_empty()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_the_sandbox_walk_resolves_a_path_only_when_it_has_a_symlink(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's path as `locate_handler` gives it (resolved) is walked as it is, with no
    `lstat` per component; a path through a symlink, or not in normal form, is resolved and
    walked as before, with the same checks and refusals."""
    lstats = Counter()
    monkeypatch.setattr(os, "lstat", lstats.wrap(os.lstat))
    script = handler_tree / "noop.sh"
    securefs.open_executable(script, what="handler").close()
    assert lstats.calls == []
    (handler_tree.parent / "via").symlink_to(handler_tree)
    for indirect in (
        handler_tree.parent / "via" / "noop.sh",
        handler_tree / ".." / "handlers" / "noop.sh",
    ):
        executable = securefs.open_executable(indirect, what="handler")
        executable.close()
        assert executable.path == indirect  # what the sandbox executes (for a script)
        assert (executable.device, executable.inode) == (script.stat().st_dev, script.stat().st_ino)
    assert lstats.calls
    handler_tree.chmod(0o777)
    try:
        for path in (script, handler_tree.parent / "via" / "noop.sh"):
            with pytest.raises(securefs.UntrustedPath, match="is writable by others"):
                securefs.open_executable(path, what="handler")
    finally:
        handler_tree.chmod(0o755)


# -- the exit of a step's process ---------------------------------------------------------------
@pytest.mark.parametrize("exited_before", [False, True])
async def test_the_exit_is_learnt_from_the_pidfd_with_one_waitpid(
    monkeypatch: pytest.MonkeyPatch, exited_before: bool
) -> None:
    """Reaping asks `waitpid` once, when the pidfd says the process has exited; a process
    that exited before it was watched (a zombie) is still seen at once through its pidfd."""
    polls = Counter()
    process = subprocess.Popen(["/bin/sh", "-c", "read line; exit 7"], stdin=subprocess.PIPE)
    monkeypatch.setattr(process, "poll", polls.wrap(process.poll))
    assert process.stdin is not None
    if exited_before:
        process.stdin.close()
        await wait_until(lambda: _zombie(process.pid), 15, "the process to exit, unreaped")
    watch = ExitWatch(process)
    try:
        if not exited_before:
            assert not watch.status.done()
            process.stdin.close()
        assert await asyncio.wait_for(watch.status, 15) == 7
    finally:
        watch.close()
    assert len(polls.calls) == 1


def _zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


# -- waiting for a step's end or its cancellation ------------------------------------------------
async def _tasks_made_by_a_step(
    handler_tree: Path, tmp_path: Path, on_message: Any = None
) -> tuple[int, Any]:
    """Tasks made on the loop while the real sandbox runs `noop.sh` for a job context of the
    engine's (a task factory counts them: a count, not a time); and the step's result."""
    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    ctx = engine_context(tmp_path / "jobs")
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    spec = ProcessSpec((str(handler_tree / "noop.sh"),), own_user(), 30, group="costs.tasks")
    loop = asyncio.get_running_loop()
    made = 0

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        result = await sandbox.run(spec, cancelled=ctx.cancelled, on_message=on_message)
    finally:
        loop.set_task_factory(None)
    return made, result


async def _waits_of_a_step(handler_tree: Path, tmp_path: Path) -> int:
    """`asyncio.wait` calls the step's own wait (`Sandbox._run_in_group`) makes while the
    real sandbox runs `noop.sh` (`sys.setprofile`: a count, not a time)."""
    import sys
    from types import FrameType

    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    ctx = engine_context(tmp_path / "jobs")
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    spec = ProcessSpec((str(handler_tree / "noop.sh"),), own_user(), 30, group="costs.waits")
    waits = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal waits
        code, caller = frame.f_code, frame.f_back
        if event == "call" and code.co_name == "wait" and code.co_filename.endswith("tasks.py"):
            waits += caller is not None and caller.f_code.co_name == "_run_in_group"

    sys.setprofile(profile)
    try:
        result = await sandbox.run(spec, cancelled=ctx.cancelled)
    finally:
        sys.setprofile(None)
    assert result.failure() is None, (result.failure(), result.stderr.text())
    return waits


async def test_a_step_waits_for_its_end_or_cancellation_without_a_task(
    handler_tree: Path, tmp_path: Path
) -> None:
    """The job's cancellation (`Cancellation`, the engine's `ctx.cancelled`) hands the sandbox
    a plain future: no task per step to wait on the Event (round 8 made one, stepped it,
    cancelled it and stepped it again: two turns of the loop per script step)."""
    made, result = await _tasks_made_by_a_step(handler_tree, tmp_path)
    assert result.failure() is None, (result.failure(), result.stderr.text())
    assert made == 0


async def test_a_step_waits_for_its_end_in_one_await(handler_tree: Path, tmp_path: Path) -> None:
    """The step's exit completes the future its job's cancellation would (`ExitWatch` sets
    it directly), so the step's wait is one `await`: no `asyncio.wait` with its waiter and
    callbacks, and no turn of the loop between the exit and the wake-up (round 8: one
    `asyncio.wait` per step, counted twice: started and resumed)."""
    assert await _waits_of_a_step(handler_tree, tmp_path) == 0


async def test_a_step_is_still_stopped_when_its_job_is_cancelled(
    handler_tree: Path, tmp_path: Path
) -> None:
    """Cancelled while it runs (the engine sets `ctx.cancelled` when the service cancels the
    job): the step is stopped and its result says so; cancelled before it starts, it is
    stopped at once."""
    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    (handler_tree / "wait.sh").write_text(
        "#!/bin/sh\necho '{\"progress\": 5}' >&3\nexec sleep 60\n"
    )
    (handler_tree / "wait.sh").chmod(0o755)
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    for before in (False, True):
        ctx = engine_context(tmp_path / "jobs")
        if before:
            ctx.cancelled.set()

        async def cancel(message: Any, ctx: Any = ctx) -> None:
            ctx.cancelled.set()  # the step has started and spoken

        spec = ProcessSpec((str(handler_tree / "wait.sh"),), own_user(), 60, group="costs.cancel")
        result = await asyncio.wait_for(
            sandbox.run(spec, cancelled=ctx.cancelled, on_message=cancel), 30
        )
        assert result.cancelled and not result.timed_out, before
        assert result.failure() is not None


async def test_a_step_arms_no_timer_of_its_own_for_its_time_limit(
    handler_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's time limit was an `asyncio.timeout` of its own: a timer armed and cancelled
    per step, and the cancelled one stayed in the loop's heap of timers for the limit's length
    (an hour by default), which every other timer was then pushed through and popped from, a
    Python `__lt__` per comparison. The steps' limits share the loop's one timer with the
    plugins' (`time_limit.StepLimit`): after a first step, three steps arm none and leave none
    cancelled; a step past its limit is still stopped, as timed out."""
    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    (handler_tree / "wait.sh").write_text("#!/bin/sh\nexec sleep 60\n")
    (handler_tree / "wait.sh").chmod(0o755)
    loop = asyncio.get_running_loop()
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    ctx = engine_context(tmp_path / "jobs")
    spec = ProcessSpec((str(handler_tree / "noop.sh"),), own_user(), 3600, group="costs.limit")
    assert (await sandbox.run(spec, cancelled=ctx.cancelled)).failure() is None
    before = set(loop._scheduled)  # type: ignore[attr-defined]
    armed = Counter()
    monkeypatch.setattr(loop, "call_at", armed.wrap(loop.call_at))
    for _ in range(3):
        result = await sandbox.run(spec, cancelled=ctx.cancelled)
        assert result.failure() is None, (result.failure(), result.stderr.text())
    monkeypatch.undo()
    left = [h for h in loop._scheduled if h not in before]  # type: ignore[attr-defined]

    def limits(callbacks: list[Any]) -> list[str]:
        owners = [type(getattr(callback, "__self__", callback)) for callback in callbacks]
        names = [f"{owner.__module__}.{owner.__qualname__}" for owner in owners]
        return [name for name in names if ".dispatch." in name or name.startswith("asyncio.t")]

    assert limits([call[1] for call in armed.calls]) == []
    assert limits([handle._callback for handle in left if handle.cancelled()]) == []
    spec = ProcessSpec((str(handler_tree / "wait.sh"),), own_user(), 0.5, group="costs.limit")
    result = await asyncio.wait_for(sandbox.run(spec, cancelled=ctx.cancelled), 30)
    assert result.timed_out and not result.cancelled
    assert result.failure() == "timed out after 0.5 s"


# -- the step's descriptors on the event loop ---------------------------------------------------
async def test_steps_pipes_and_exits_take_one_registration_with_the_loop_for_all_steps(
    handler_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps' stdout, stderr, progress pipe and pidfd are watched in an epoll of their
    own (`StepPoll`), one per loop and kept: the loop gets one `add_reader` for all the steps
    it runs and no `remove_reader`, where round 14's step made four of each (about 26 k
    instructions each, issue 18) and round 15's one of each per step. What each step wrote
    still arrives, each stream where it belongs, and its progress line is handled; nothing a
    step ended stays watched, and no step gets the epoll's descriptor (only 0-3)."""
    from jobs_agent.dispatch.pipes import step_poll
    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    (handler_tree / "speaks.sh").write_text(
        "#!/bin/sh\necho out\necho err >&2\necho '{\"progress\": 50}' >&3\n"
        "ls /proc/self/fd >&2\nexit 3\n"
    )
    (handler_tree / "speaks.sh").chmod(0o755)
    loop = asyncio.get_running_loop()
    added, removed = Counter(), Counter()
    monkeypatch.setattr(loop, "add_reader", added.wrap(loop.add_reader))
    monkeypatch.setattr(loop, "remove_reader", removed.wrap(loop.remove_reader))
    messages: list[Any] = []

    async def on_message(message: Any) -> None:
        messages.append(message)

    ctx = engine_context(tmp_path / "jobs")
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    for step in range(3):
        spec = ProcessSpec(
            (str(handler_tree / "speaks.sh"),), own_user(), 30, group=f"costs.poll.{step}"
        )
        result = await sandbox.run(spec, cancelled=ctx.cancelled, on_message=on_message)
        assert result.spawn_error is None and result.returncode == 3
        out, err = result.stdout.text(), result.stderr.text()
        # `ls` lists its own descriptor of the directory too (the highest one).
        assert out == "out\n" and err.split("\n")[0] == "err", (out, err)
        assert sorted(int(fd) for fd in err.split()[1:])[:-1] == [0, 1, 2, 3], err
        assert not step_poll(loop)._callbacks  # every descriptor unwatched before its close
    monkeypatch.undo()
    assert messages == [{"progress": 50}] * 3
    assert (len(added.calls), len(removed.calls)) == (1, 0)


async def test_a_step_s_progress_pipe_paused_and_resumed_through_its_poll_loses_nothing(
    handler_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that writes progress lines faster than they are handled: past 128 KiB queued
    the progress pipe stops being watched (the step then blocks on its next write) and is
    watched again as the lines are handled, through the step's own epoll now. Every line
    arrives, in order, and the step ends as it would."""
    from jobs_agent.dispatch import pipes
    from jobs_agent.dispatch.process import ProcessSpec, Sandbox

    lines = 3000  # about 360 kB: well past the pause threshold and the pipe's 64 KiB
    script = (
        "#!/bin/bash\n"
        "pad=$(printf '%0100d' 0)\n"
        f"for ((i = 0; i < {lines}; i++)); do\n"
        """  printf '{"n": %d, "pad": "%s"}\\n' "$i" "$pad" >&3\n"""
        "done\n"
    )
    (handler_tree / "chatty.sh").write_text(script)
    (handler_tree / "chatty.sh").chmod(0o755)
    watched, unwatched = Counter(), Counter()
    monkeypatch.setattr(pipes.StepPoll, "add_reader", watched.wrap(pipes.StepPoll.add_reader))
    monkeypatch.setattr(
        pipes.StepPoll, "remove_reader", unwatched.wrap(pipes.StepPoll.remove_reader)
    )
    gate = asyncio.Event()
    received: list[int] = []

    async def on_message(message: Any) -> None:
        if not received:
            await gate.wait()  # the first line is held until the pipe has been paused
        received.append(message["n"])

    async def open_gate() -> None:
        # Nothing ends before the pause (the step cannot finish its writes): the first
        # descriptor the step's poll stops watching is the paused progress pipe.
        await wait_until(lambda: bool(unwatched.calls), 30, "the progress pipe to be paused")
        gate.set()

    ctx = engine_context(tmp_path / "jobs")
    spec = ProcessSpec((str(handler_tree / "chatty.sh"),), own_user(), 60, group="costs.pause")
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    opener = asyncio.ensure_future(open_gate())
    result = await sandbox.run(spec, cancelled=ctx.cancelled, on_message=on_message)
    await opener
    assert result.failure() is None, (result.failure(), result.stderr.text())
    assert received == list(range(lines))
    progress_fd = unwatched.calls[0][1]
    assert [call[1] for call in watched.calls].count(progress_fd) >= 2  # watched again


async def test_a_step_poll_skips_a_descriptor_a_callback_stopped_watching() -> None:
    """Two pipes ready in one wake-up, and whichever callback comes first stops watching both
    (as a reader's close stops watching its own pipe): the other's callback is not called for
    a descriptor it no longer owns. Closing twice is harmless."""
    from jobs_agent.dispatch.pipes import StepPoll

    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    poll = StepPoll()
    pipes = [os.pipe(), os.pipe()]
    calls: list[int] = []

    def callback(index: int) -> Callable[[], None]:
        def called() -> None:
            calls.append(index)
            for read_end, _write_end in pipes:
                poll.remove_reader(read_end)

        return called

    for index, (read_end, _write_end) in enumerate(pipes):
        poll.add_reader(read_end, callback(index))
    try:
        for _read_end, write_end in pipes:
            os.write(write_end, b"x")  # both ready before the loop looks
        await wait_until(lambda: bool(calls), 15, "the poll's callback")
        await asyncio.sleep(0)
        assert len(calls) == 1 and errors == []
        assert poll.remove_reader(pipes[0][0]) is False
    finally:
        asyncio.get_running_loop().set_exception_handler(None)
        poll.close()
        poll.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def test_checking_a_script_document_asks_no_abstract_class_about_plain_json(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job document is plain JSON (dicts, lists, strings): `isinstance(x, Mapping)` on one
    goes through `ABCMeta.__instancecheck__`, a Python frame per value; the dispatch layer's
    document check asks `str`, `dict` and `list` first and the ABC only for anything else
    (issue 18). Round 9's check of a one-step `runHandler` document made 13 such calls in
    `jobs_agent.dispatch` (the maintenance window's look at the document is not counted)."""
    import sys

    from jobs_agent.dispatch.router import Dispatcher
    from jobs_agent.dispatch.settings import DispatchSettings

    dispatcher = Dispatcher(DispatchSettings(handler_dir=handler_tree, state_dir=handler_tree))
    document = {
        "version": "1.0",
        "steps": [
            {"action": {"name": "noop", "type": "runHandler", "input": {"handler": "noop.sh"}}}
        ],
    }
    callers: list[str] = []
    meta = type(collections.abc.Mapping)
    check = meta.__instancecheck__

    def counted(cls: type, instance: object) -> bool:
        callers.append(sys._getframe(1).f_globals["__name__"])
        return check(cls, instance)

    monkeypatch.setattr(meta, "__instancecheck__", counted)
    handler = dispatcher.resolve(document, job_id="job-1")
    monkeypatch.undo()
    assert handler.name == "device-client"
    assert [name for name in callers if name.startswith("jobs_agent.dispatch")] == []


def test_a_document_s_check_looks_for_a_script_s_interpreter_once_and_a_missing_one_always(
    handler_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every script job's document check looked for the `#!` line's interpreter again (a
    `stat` and an `access` of `/bin/sh`, about 19 k instructions; a PATH search for `env`):
    one found is remembered (`shebang.interpreter_problem(remember=True)`), one missing is
    looked for at every job and REJECTS it, and the sandbox still looks at a failed start
    (tests/test_spawn_checks.py)."""
    from jobs_agent.dispatch.router import Dispatcher
    from jobs_agent.dispatch.settings import DispatchSettings
    from jobs_agent_handlers.api import JobRejected

    monkeypatch.setattr(shebang, "_found", set(), raising=False)  # what earlier tests remembered
    broken = handler_tree / "broken.sh"
    broken.write_text("#!/bin/no-such-sh\nexit 0\n")
    broken.chmod(0o755)
    dispatcher = Dispatcher(DispatchSettings(handler_dir=handler_tree, state_dir=handler_tree))

    def document(handler: str) -> dict[str, Any]:
        action = {"name": "s", "type": "runHandler", "input": {"handler": handler}}
        return {"version": "1.0", "steps": [{"action": action}]}

    accesses = Counter()
    monkeypatch.setattr(os, "access", accesses.wrap(os.access))
    for _ in range(3):
        dispatcher.resolve(document("noop.sh"), job_id="job-1")
    assert [call[0] for call in accesses.calls] == ["/bin/sh"]
    stats = Counter()
    monkeypatch.setattr(os, "stat", stats.wrap(os.stat))
    for _ in range(2):
        with pytest.raises(JobRejected, match="interpreter /bin/no-such-sh not found"):
            dispatcher.resolve(document("broken.sh"), job_id="job-2")
    assert [call[0] for call in stats.calls].count("/bin/no-such-sh") == 2
