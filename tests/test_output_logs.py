"""Per-job output logs are kept within a count and a total size (issue 13.11), oldest first,
through the real agent and emulator; the pruning never touches a log still being written."""

from __future__ import annotations

import os
from pathlib import Path

from jobs_agent.dispatch.output import OutputLogIndex, prune_output_logs
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
