"""What a script job makes and removes on the file system, counted by strace on a real agent.

A script job's cost to the agent was a third kernel time, much of it ext4 and cgroupfs making
inodes right after removing others (issue 18). Per job, the agent's own threads (never the
step's processes) are traced while real jobs run a real script through the real spawn chain
in a real cgroup: every directory made or removed, every file created or unlinked, and the
calls a buffered log file made. Counts, never times.

Per script job, what is left (each documented):
* the job's directory, its `scratch-<n>` (the step's working directory, holding
  `document.json`) and its `state` (`JOBS_AGENT_STATE_DIR`): taken from the last job that
  ended (`state_dir/jobs/.recycled`, emptied) and recycled once the outcome is reported;
* `document.json`: the last step's, emptied and kept as `state_dir/jobs/.recycled-document`,
  renamed in and written (`scripts.StepFiles`), renamed back out emptied at the job's end;
* the step's cgroup (containment): made, and removed when the step ends; the agent's base
  cgroup above it stays between steps;
* the output log (`<state_dir>/logs/<jobId>-<n>.log`), kept within `jobs.output_logs_max_*`:
  at the count limit, made of the oldest one's file (emptied, `state_dir/jobs/.recycled-log`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from jobs_agent.dispatch.containment import ContainmentError, containment_for
from jobs_agent.dispatch.output import DOCUMENT_FILE
from jobs_agent.dispatch.scripts import StepFiles
from jobs_agent.dispatch.users import own_user
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.context import EngineJobContext
from jobs_agent.engine.jobdirs import (
    JOB_DIRECTORY_MODE,
    RECYCLED,
    RECYCLED_LAYOUT,
    SPARE_DOCUMENT,
    recycle,
)
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_until,
    write_handler,
)
from tests.helpers.engine_context import engine_context
from tests.helpers.strace import strace_attached

THING = f"gw-files-{os.getpid()}"
TRACED = (
    "mkdir,mkdirat,rmdir,unlink,unlinkat,open,openat,creat,rename,renameat,renameat2,"
    "execve,fchmod,lseek"
)
OWN_FILES = ("agent.json", "state.db")
"""The agent's own state files (status, database): not the job's, and written by their own
rules (a status change, a commit), which the fsync test of test_engine_kill.py counts."""


def _agent(tmp_path: Path, mosquitto: Mosquitto, max_logs: int | None = None) -> AgentProcess:
    try:
        containment_for("cgroup", tmp_path / "state")
    except ContainmentError as exc:
        pytest.skip(f"no writable cgroup v2 hierarchy here: {exc}")
    write_handler(tmp_path / "handlers", "noop.sh", "#!/bin/sh\nexit 0\n")
    # The default progress interval: a step that outlives a short one is reported at 0 %.
    config = agent_config(
        tmp_path, mosquitto.port, thing=THING, containment="cgroup", progress_interval_seconds=5.0
    )
    text = config_yaml(config)
    if max_logs is not None:
        text = text.replace("\njobs:\n", f"\njobs:\n  output_logs_max_count: {max_logs}\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return AgentProcess(config_path=path, workdir=tmp_path)


async def _run_jobs(
    tmp_path: Path, emulator: Emulator, first: int, count: int, max_logs: int | None = None
) -> None:
    """Run `count` script jobs one after the other (a job's directory is recycled when its
    outcome is reported: queued together, the next job may start before). With `max_logs`, a
    job is over once the logs are back within the limit: the prune comes after the recycling,
    and a trace stopped before it missed its `rename`."""
    database = tmp_path / "state" / "state.db"
    jobs = tmp_path / "state" / "jobs" / "default"
    logs = tmp_path / "state" / "logs"
    for number in range(first, first + count):
        emulator.service.create_job(f"files-{number}", [THING], {"operation": "noop.sh"})

        def done(ended: int = number + 1) -> bool:
            with contextlib.closing(sqlite3.connect(database)) as db:
                rows = db.execute("SELECT state FROM executions").fetchall()
            cleaned = not jobs.exists() or not any(jobs.iterdir())
            pruned = max_logs is None or not logs.exists() or len(os.listdir(logs)) <= max_logs
            return rows == [("reported",)] * ended and cleaned and pruned

        await wait_until(done, 60, f"job {number} reported and its directory recycled")


def _agent_calls(trace: Path) -> collections.Counter[str]:
    """The traced calls of the agent's own threads, by kind: a process that executes anything
    (the spawn chain, its script) is a step's, not the agent's."""
    lines = [line.split(None, 1) for line in trace.read_text().splitlines() if line[:1].isdigit()]
    children = {pid for pid, text in lines if text.startswith("execve(")}
    calls: collections.Counter[str] = collections.Counter()
    for pid, text in lines:
        match = re.match(r"(\w+)\(", text)
        if pid in children or match is None or any(name in text for name in OWN_FILES):
            continue
        name = match.group(1)
        if name in ("open", "openat", "creat"):
            name = "create" if name == "creat" or "O_CREAT" in text else "open"
        elif name == "unlinkat":
            name = "rmdir" if "AT_REMOVEDIR" in text else "unlink"
        elif name.startswith("rename"):
            name = "rename"
        elif name in ("lseek", "fchmod") and ".log>" in text:
            name = f"{name} of the log"
        calls[name.removesuffix("at") if name == "mkdirat" else name] += 1
    return calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize(
    ("max_logs", "expected"),
    [
        (None, {"mkdir": 1, "rmdir": 1, "rename": 4, "create": 1, "unlink": 0}),
        (1, {"mkdir": 1, "rmdir": 1, "rename": 6, "create": 0, "unlink": 0}),
    ],
    ids=["below the log count limit", "at the log count limit"],
)
async def test_a_script_job_makes_and_removes_only_what_its_protocol_needs(
    tmp_path: Path,
    mosquitto: Mosquitto,
    emulator: Emulator,
    max_logs: int | None,
    expected: dict[str, int],
) -> None:
    """Per job: one directory made and removed (the step's cgroup), two taken and given back
    by `rename` (the job's directory, from and to `.recycled`; `document.json`, from and to
    `.recycled-document`), the log written through its descriptor (no `lseek`, no `fchmod` of
    a log that is already private), nothing unlinked. Below `jobs.output_logs_max_count` the
    log is created (a `rename` of a pruned log's file into its place, refused as none is kept,
    was tried for every job: now only until the first refusal, as no prune kept one since);
    at the limit, the oldest log is emptied and kept as `.recycled-log` instead of
    unlinked, and the next job's log is that file renamed: no file created at all.
    Round 7's agent created and unlinked `document.json` for every job, and created the log
    and unlinked the oldest at the limit (2 created, 1 or 2 unlinked); the one before made
    and removed the job's directory, its scratch and its state for every job (with a refused
    `mkdir` first: no parent yet, and `shutil.rmtree`'s `lseek`s), the agent's base cgroup
    around every step, and opened the log as a buffered file (three `lseek`, an `fchmod`): 6
    mkdir and 5 rmdir per job."""
    agent = _agent(tmp_path, mosquitto, max_logs)
    trace = tmp_path / "files.trace"
    jobs = 3
    try:
        agent.start()
        await agent.wait_ready()
        assert agent.process is not None
        # The first jobs make what every later one finds (the logs and jobs directories,
        # the agent's base cgroup after the start's sweep, at the limit a pruned log): outside
        # the count.
        await _run_jobs(tmp_path, emulator, 0, 2, max_logs)
        async with strace_attached(agent.process.pid, trace, TRACED):
            await _run_jobs(tmp_path, emulator, 2, jobs, max_logs)
        calls = _agent_calls(trace)
        kinds = ("mkdir", "rmdir", "rename", "create", "unlink")
        per_job = {name: calls[name] / jobs for name in kinds}
        assert per_job == expected, calls
        assert calls["lseek of the log"] == 0 and calls["fchmod of the log"] == 0, calls
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def _agent_opens(trace: Path) -> collections.Counter[str]:
    """The files the agent's own threads opened (`_agent_calls` tells them from a step's)."""
    lines = [line.split(None, 1) for line in trace.read_text().splitlines() if line[:1].isdigit()]
    children = {pid for pid, text in lines if text.startswith("execve(")}
    opened: collections.Counter[str] = collections.Counter()
    for pid, text in lines:
        match = re.match(r'open(?:at)?\((?:[^,]+, )?"([^"]*)"', text)
        if pid not in children and match is not None:
            opened[os.path.basename(match.group(1))] += 1
    return opened


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_a_script_job_opens_neither_dev_null_nor_the_cgroups_events(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The step's stdin is the agent's one `/dev/null` descriptor (CPython's `DEVNULL` opened
    and closed it for every spawn), and the step's cgroup, once its handler has exited, is
    found empty by its `rmdir` succeeding (which also removes it) instead of by reading
    `populated` from `cgroup.events` first: two opens (and a read, two closes) fewer per
    script job. Round 8's agent opened both once per job."""
    agent = _agent(tmp_path, mosquitto)
    trace = tmp_path / "opens.trace"
    jobs = 3
    try:
        agent.start()
        await agent.wait_ready()
        assert agent.process is not None
        await _run_jobs(tmp_path, emulator, 0, 2)  # the first `/dev/null` is opened here
        async with strace_attached(agent.process.pid, trace, "execve,open,openat"):
            await _run_jobs(tmp_path, emulator, 2, jobs)
        opened = _agent_opens(trace)
        assert opened["noop.sh"] >= jobs, opened  # the trace saw the jobs' handler checks
        assert (opened["null"], opened["cgroup.events"]) == (0, 0), opened
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def _end(ctx: EngineJobContext) -> None:
    """What `JobFiles.cleanup` does once the outcome is reported."""
    recycle(str(ctx.scratch_dir.parent), ctx.scratch_dir.name, ctx.state_dir.name)


def test_the_next_job_takes_the_last_ones_directory_empty_and_private(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    first = engine_context(jobs, "j1")
    (first.scratch_dir / DOCUMENT_FILE).write_text("{}")
    assert first.state_dir.is_dir()
    made = first.scratch_dir.parent.stat().st_ino
    _end(first)
    assert not first.scratch_dir.parent.exists()
    assert sorted(os.listdir(jobs / RECYCLED)) == sorted(RECYCLED_LAYOUT)
    second = engine_context(jobs, "j2", execution_number=3)  # another job, another execution number
    assert second.scratch_dir.parent.stat().st_ino == made  # renamed, not made
    assert not (jobs / RECYCLED).exists()
    for directory in (second.scratch_dir.parent, second.scratch_dir, second.state_dir):
        info = directory.stat()
        assert stat.S_IMODE(info.st_mode) == JOB_DIRECTORY_MODE and info.st_uid == os.geteuid()
    assert sorted(os.listdir(second.scratch_dir.parent)) == ["scratch-3", "state"]
    assert os.listdir(second.scratch_dir) == [] and os.listdir(second.state_dir) == []


@pytest.mark.parametrize(
    "left",
    ["a file in scratch", "a file in state", "a file beside them", "scratch opened to others"],
)
def test_a_directory_left_otherwise_than_found_is_removed_not_recycled(
    tmp_path: Path, left: str
) -> None:
    """Nothing of a job reaches the next one: what a step wrote, or a mode it changed."""
    jobs = tmp_path / "jobs"
    ctx = engine_context(jobs, "j1")
    (ctx.scratch_dir / DOCUMENT_FILE).write_text("{}")
    if left == "a file in scratch":
        (ctx.scratch_dir / "download.bin").write_bytes(b"x")
    elif left == "a file in state":
        (ctx.state_dir / "progress").write_text("3")
    elif left == "a file beside them":
        (ctx.state_dir.parent / "note").write_text("x")
    else:
        ctx.scratch_dir.chmod(0o777)
    _end(ctx)
    assert not ctx.state_dir.parent.exists()
    assert not (jobs / RECYCLED).exists()


def test_a_resumed_jobs_directory_is_kept_and_the_recycled_one_left_for_another(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs"
    _end(engine_context(jobs, "done"))
    resumed = jobs / "default" / "j1" / "state"
    resumed.mkdir(parents=True)
    (resumed / "progress").write_text("3")
    ctx = engine_context(jobs, "j1")
    assert (ctx.state_dir / "progress").read_text() == "3" and ctx.scratch_dir.is_dir()
    assert (jobs / RECYCLED).is_dir()


def _write_document(ctx: EngineJobContext, document: dict[str, str]) -> Path:
    files = StepFiles(ctx, own_user())
    try:
        return files.write_json(DOCUMENT_FILE, document)
    finally:
        files.close()


def test_the_next_step_writes_its_document_into_the_last_ones_file_emptied(
    tmp_path: Path,
) -> None:
    """The document file is not created and unlinked per job (an inode search on ext4, issue
    18): the last one, emptied at its job's end (nothing of its document is left), is kept
    beside the recycled directory and renamed in for the next step's document."""
    jobs = tmp_path / "jobs"
    first = engine_context(jobs, "j1")
    written = _write_document(first, {"secret": "first job's"})
    inode = written.stat().st_ino
    _end(first)
    spare = jobs / SPARE_DOCUMENT
    assert spare.stat().st_ino == inode and spare.stat().st_size == 0
    assert sorted(os.listdir(jobs / RECYCLED)) == sorted(RECYCLED_LAYOUT)
    second = engine_context(jobs, "j2")
    written = _write_document(second, {"b": "2"})
    assert written.stat().st_ino == inode and json.loads(written.read_text()) == {"b": "2"}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and not spare.exists()
    assert os.listdir(second.scratch_dir) == [DOCUMENT_FILE]


def test_a_plugin_job_taking_the_recycled_directory_never_sees_the_spare(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    first = engine_context(jobs, "j1")
    _write_document(first, {"a": "1"})
    _end(first)
    plugin = engine_context(jobs, "j2")
    assert os.listdir(plugin.scratch_dir) == [] and os.listdir(plugin.state_dir) == []
    assert sorted(os.listdir(plugin.scratch_dir.parent)) == ["scratch-1", "state"]


@pytest.mark.parametrize("planted", ["a hard link", "a symlink", "a file opened to others"])
def test_a_document_file_a_step_replaced_is_unlinked_never_emptied_or_written(
    tmp_path: Path, planted: str
) -> None:
    """A step (running as the agent's user) may put a link to another file in the place of
    its `document.json`, at its end or as the spare: the file it names is neither truncated
    nor written, whichever way, and the link goes."""
    jobs = tmp_path / "jobs"
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    precious.chmod(0o600)

    def plant(at: Path) -> None:
        at.unlink()
        if planted == "a hard link":
            os.link(precious, at)
        elif planted == "a symlink":
            at.symlink_to(precious)
        else:
            at.write_text("{}")
            at.chmod(0o644)

    first = engine_context(jobs, "j1")
    plant(_write_document(first, {"a": "1"}))
    _end(first)
    assert precious.read_text() == "keep me" and not (jobs / SPARE_DOCUMENT).exists()
    second = engine_context(jobs, "j2")
    _write_document(second, {"a": "2"})
    _end(second)
    plant(jobs / SPARE_DOCUMENT)
    third = engine_context(jobs, "j3")
    written = _write_document(third, {"c": "3"})
    assert precious.read_text() == "keep me" and precious.stat().st_nlink == 1
    assert json.loads(written.read_text()) == {"c": "3"} and not written.is_symlink()
    assert written.stat().st_nlink == 1 and stat.S_IMODE(written.stat().st_mode) == 0o600
