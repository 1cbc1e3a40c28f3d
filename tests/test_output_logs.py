"""Per-job output logs are kept within a count and a total size (issue 13.11), oldest first,
through the real agent and emulator; the pruning never touches a log still being written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from jobs_agent.dispatch.output import (
    RECYCLED_LOG,
    OutputLog,
    OutputLogIndex,
    prune_output_logs,
)
from tests.helpers.agent_harness import make_config, make_handler_dir, running_agent, write_script


def command(text: str) -> dict[str, object]:
    return {
        "version": "1.0",
        "steps": [{"action": {"name": "s", "type": "runCommand", "input": {"command": text}}}],
    }


async def test_logs_beyond_the_count_are_deleted_oldest_first(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    config = make_config(tmp_path, output_logs_max_count=3)
    async with running_agent(tmp_path, config) as harness:
        for index in range(6):
            await harness.run_job(f"job-{index}", command(f"echo,run {index}"))
    logs = sorted(p.name for p in (tmp_path / "state" / "logs").iterdir())
    assert logs == ["job-3-1.log", "job-4-1.log", "job-5-1.log"]


async def test_logs_beyond_the_total_size_are_deleted(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    write_script(tmp_path / "handlers", "big.sh", "head -c 1500 /dev/zero | tr '\\0' x\n")
    config = make_config(tmp_path, output_logs_max_total_bytes=4096)
    async with running_agent(tmp_path, config) as harness:
        for index in range(6):
            await harness.run_job(f"big-{index}", {"operation": "big.sh"})
    logs = list((tmp_path / "state" / "logs").iterdir())
    assert sum(p.stat().st_size for p in logs) <= 4096
    assert "big-5-1.log" in {p.name for p in logs}
    assert "big-0-1.log" not in {p.name for p in logs}


def test_logs_of_active_executions_and_the_newest_are_kept(tmp_path: Path) -> None:
    for index, name in enumerate(["a.log", "active.log", "c.log", "newest.log"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + index, 1000 + index))
    (tmp_path / "notes.txt").write_text("not a job log")
    deleted = prune_output_logs(
        tmp_path, max_count=1, max_total_bytes=10, keep=[tmp_path / "active.log"]
    )
    assert sorted(p.name for p in deleted) == ["a.log", "c.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active.log", "newest.log", "notes.txt"]


def test_the_index_prunes_by_the_same_rules_and_counts_a_log_written_again_once(
    tmp_path: Path,
) -> None:
    """The agent keeps the logs in memory after one listing (`OutputLogIndex`); what it deletes
    is what `prune_output_logs` would: oldest first, never an active one nor the newest. A
    re-run execution's log, written again, counts once at its new size; a log someone else
    removed is simply gone."""
    for index, name in enumerate(["a.log", "active.log", "b.log", "c.log"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + index, 1000 + index))
    index = OutputLogIndex(tmp_path)
    index.load()
    assert index.excess(max_count=4, max_total_bytes=400) == 0

    (tmp_path / "c.log").write_bytes(b"x" * 150)  # the same execution, run again
    os.utime(tmp_path / "c.log", (1500, 1500))
    index.add(tmp_path / "c.log")
    assert index.excess(max_count=4, max_total_bytes=449) == 1  # over the size only
    assert index.excess(max_count=4, max_total_bytes=450) == 0

    (tmp_path / "b.log").unlink()  # an operator tidied up
    newest = tmp_path / "newest.log"
    newest.write_bytes(b"x" * 100)
    os.utime(newest, (2000, 2000))
    index.add(newest)
    assert index.excess(max_count=2, max_total_bytes=10_000) == 3
    deleted = index.prune(max_count=2, max_total_bytes=10_000, keep=[tmp_path / "active.log"])
    assert sorted(p.name for p in deleted) == ["a.log", "c.log"]  # b.log was gone already
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active.log", "newest.log"]
    assert index.excess(max_count=2, max_total_bytes=10_000) == 0


def _logs_dir(tmp_path: Path) -> Path:
    """`state_dir/logs`, beside `state_dir/jobs` where the pruned log is kept."""
    (tmp_path / "state" / "jobs").mkdir(parents=True)
    logs = tmp_path / "state" / "logs"
    logs.mkdir(mode=0o700)
    return logs


def _log(path: Path, data: bytes, mtime: float) -> None:
    log = OutputLog(path, 10_000)
    log.write(data)
    log.close()
    os.utime(path, (mtime, mtime))


def test_a_pruned_log_is_emptied_and_becomes_the_next_jobs_log(tmp_path: Path) -> None:
    """At the count limit every job's end prunes one log and the next job makes one: the
    pruned one's file is emptied (nothing of its output is left) and kept, then renamed to the
    next log, where a file created per job cost an inode table search on ext4 (issue 18)."""
    logs = _logs_dir(tmp_path)
    _log(logs / "old-1.log", b"the old job's output\n", 1000)
    _log(logs / "new-1.log", b"new\n", 2000)
    inode = (logs / "old-1.log").stat().st_ino
    index = OutputLogIndex(logs)
    index.load()
    assert index.prune(max_count=1, max_total_bytes=10**6) == [logs / "old-1.log"]
    assert sorted(os.listdir(logs)) == ["new-1.log"]
    spare = tmp_path / "state" / "jobs" / RECYCLED_LOG
    assert spare.stat().st_ino == inode and spare.stat().st_size == 0
    _log(logs / "next-1.log", b"mine\n", 3000)
    made = logs / "next-1.log"
    assert made.read_bytes() == b"mine\n" and made.stat().st_ino == inode
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and not spare.exists()


def test_a_continuing_executions_log_is_appended_to_never_replaced(tmp_path: Path) -> None:
    logs = _logs_dir(tmp_path)
    _log(logs / "old-1.log", b"old\n", 1000)
    _log(logs / "j-1.log", b"before the reboot\n", 2000)
    index = OutputLogIndex(logs)
    index.load()
    index.prune(max_count=1, max_total_bytes=10**6)
    _log(logs / "j-1.log", b"after it\n", 3000)
    assert (logs / "j-1.log").read_bytes() == b"before the reboot\nafter it\n"
    assert (tmp_path / "state" / "jobs" / RECYCLED_LOG).exists()


@pytest.mark.parametrize("where", ["the pruned log", "the kept file"])
def test_a_log_file_replaced_by_a_hard_link_is_unlinked_never_emptied(
    tmp_path: Path, where: str
) -> None:
    """Whatever took the place of a log or of the kept file (a hard link to another file
    has two names): the other file is neither emptied nor written, and a new log is made."""
    logs = _logs_dir(tmp_path)
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    precious.chmod(0o600)
    _log(logs / "old-1.log", b"old\n", 1000)
    _log(logs / "new-1.log", b"new\n", 2000)
    spare = tmp_path / "state" / "jobs" / RECYCLED_LOG
    if where == "the pruned log":
        (logs / "old-1.log").unlink()
        os.link(precious, logs / "old-1.log")
        os.utime(logs / "old-1.log", (1000, 1000))  # still the oldest
    index = OutputLogIndex(logs)
    index.load()
    index.prune(max_count=1, max_total_bytes=10**6)
    if where == "the kept file":
        spare.unlink()
        os.link(precious, spare)
    else:
        assert not spare.exists()
    _log(logs / "next-1.log", b"mine\n", 3000)
    assert precious.read_text() == "keep me" and precious.stat().st_nlink == 1
    made = logs / "next-1.log"
    assert made.read_bytes() == b"mine\n" and made.stat().st_nlink == 1


def _lines_of_a_prune_at_the_limit(logs: Path, kept: int) -> int:
    """Lines of `dispatch/output.py` run by the prune of one job's end at the count limit,
    with `kept` logs already there (`sys.settrace`: a count, not a time)."""
    import sys
    from types import FrameType
    from typing import Any

    for number in range(kept):
        _log(logs / f"job{number:05d}-1.log", b"out\n", 1000 + number)
    index = OutputLogIndex(logs)
    index.load()
    _log(logs / "new-1.log", b"new\n", 1000 + kept)
    index.add(logs / "new-1.log")
    lines = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if not frame.f_code.co_filename.endswith("dispatch/output.py"):
            return None
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        deleted = index.prune(max_count=kept, max_total_bytes=10**9, keep=[logs / "new-1.log"])
    finally:
        sys.settrace(None)
    assert deleted == [logs / "job00000-1.log"]
    return lines


def test_a_prune_at_the_limit_looks_at_the_oldest_logs_only(tmp_path: Path) -> None:
    """A gateway at `jobs.output_logs_max_count` prunes one log at every job's end: the work
    is the same with 10 logs kept as with 400 (round 8's index listed and sorted every log it
    held, per job: 34 lines run with 10 logs, 424 with 400; now 28 with either)."""
    small = _lines_of_a_prune_at_the_limit(_logs_dir(tmp_path / "small"), 10)
    large = _lines_of_a_prune_at_the_limit(_logs_dir(tmp_path / "large"), 400)
    assert large == small


def test_a_log_added_out_of_order_is_still_pruned_oldest_first(tmp_path: Path) -> None:
    """A clock set back gives a finished log an older mtime than logs already indexed: the
    index sorts itself again before it prunes, so the order is still the listing's."""
    logs = _logs_dir(tmp_path)
    _log(logs / "a-1.log", b"a\n", 2000)
    _log(logs / "b-1.log", b"b\n", 3000)
    index = OutputLogIndex(logs)
    index.load()
    _log(logs / "back-1.log", b"c\n", 1000)  # written after the clock went back
    index.add(logs / "back-1.log")
    assert index.prune(max_count=2, max_total_bytes=10**6) == [logs / "back-1.log"]
    assert prune_output_logs(logs, max_count=1, max_total_bytes=10**6) == [logs / "a-1.log"]
