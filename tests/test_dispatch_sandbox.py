"""The process sandbox with real processes and signals: time limits, cancellation, output
volume, privilege drop. Process-group checks read /proc directly."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.dispatch.process import _group_members
from jobs_agent_handlers.api import Outcome


def setup(
    tmp_path: Path, body: str, handler_base: Path | None = None, **jobs: Any
) -> tuple[Dispatcher, LocalJobContext]:
    handler_dir = (handler_base or tmp_path) / "handlers"
    handler_dir.mkdir(mode=0o755)
    handler_dir.chmod(0o755)
    handler = handler_dir / "h.sh"
    handler.write_text("#!/bin/sh\n" + body)
    handler.chmod(0o755)
    jobs.setdefault("kill_grace_seconds", 1.0)
    config = AgentConfig(
        thing_name="gw",
        state_dir=tmp_path / "state",
        jobs=JobsConfig(handler_dir=handler_dir, **jobs),
    )
    (tmp_path / "scratch").mkdir()
    (tmp_path / "jobstate").mkdir()
    ctx = LocalJobContext(
        document={"operation": "h.sh", "includeStdOut": True},
        scratch_dir=tmp_path / "scratch",
        state_dir=tmp_path / "jobstate",
        job_id="job-7",
        execution_number=2,
    )
    return Dispatcher(config), ctx


async def run(dispatcher: Dispatcher, ctx: LocalJobContext) -> Outcome:
    return await dispatcher.run(dispatcher.resolve(ctx.document), ctx)


async def test_hung_handler_times_out_and_its_whole_group_dies(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    dispatcher, ctx = setup(
        tmp_path,
        # A grandchild that ignores SIGTERM, and a child that waits for it.
        f"sh -c 'trap \"\" TERM; echo $$ >> {pids}; while :; do sleep 1; done' &\n"
        f"echo $$ >> {pids}\nwait\n",
        handler_timeout_seconds=1.0,
    )
    outcome = await run(dispatcher, ctx)
    assert outcome.status == "FAILED"
    assert outcome.details["reason"] == 'step 1 "h.sh": timed out after 1 s'
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 2
    pgid = recorded[1]
    assert _group_members(pgid) == []


async def test_background_leftovers_are_reaped_after_a_normal_exit(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    dispatcher, ctx = setup(tmp_path, f"sleep 300 &\necho $$ > {pids}\necho done\n")
    outcome = await asyncio.wait_for(run(dispatcher, ctx), timeout=10)
    assert outcome.status == "SUCCEEDED"
    assert outcome.details["stdout"] == "done"
    assert _group_members(int(pids.read_text())) == []


async def test_cancellation_kills_the_process_group(tmp_path: Path) -> None:
    started = tmp_path / "started"
    dispatcher, ctx = setup(
        tmp_path, f"sleep 300 &\necho $$ > {started}.tmp; mv {started}.tmp {started}\nwait\n"
    )
    task = asyncio.create_task(run(dispatcher, ctx))
    async with asyncio.timeout(10):
        while not started.exists():  # the handler signals readiness through the file
            await asyncio.sleep(0.02)
    ctx.cancelled.set()
    outcome = await asyncio.wait_for(task, timeout=10)
    assert outcome.status == "FAILED"
    assert outcome.details["reason"] == "cancelled"
    assert _group_members(int(started.read_text())) == []


@pytest.mark.timeout(60)
async def test_fifty_megabytes_of_output_complete_with_tail_and_capped_log(
    tmp_path: Path,
) -> None:
    dispatcher, ctx = setup(
        tmp_path,
        "head -c 52428800 /dev/zero | tr '\\0' 'x' | fold -w 99\n"
        "head -c 10485760 /dev/zero | tr '\\0' 'e' >&2\necho THE-END\n",
        output_log_max_bytes=1024 * 1024,
    )
    outcome = await run(dispatcher, ctx)
    assert outcome.status == "SUCCEEDED"
    assert outcome.details["stdout"].endswith("xxxTHE-END")  # fold adds no final newline
    assert "x\\nx" in outcome.details["stdout"]
    assert len(outcome.details["stdout"]) == 1024
    assert len(outcome.details["stderr"]) == 1024
    log = tmp_path / "state" / "logs" / "job-7-2.log"
    size = log.stat().st_size
    assert 1024 * 1024 <= size < 1024 * 1024 + 4096
    assert b"output truncated" in log.read_bytes()[-4096:]


async def test_privileges_are_dropped_to_an_allowed_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    # pytest's tmp_path is private to root; the handler must be reachable for nobody.
    public = Path(tempfile.mkdtemp(prefix="jobs-agent-test-"))
    public.chmod(0o755)
    try:
        dispatcher, ctx = setup(
            tmp_path, "id -u; id -g; echo HOME=$HOME\n", public, allowed_users=("nobody",)
        )
        ctx.document = {"operation": "h.sh", "runAsUser": "nobody", "includeStdOut": True}
        outcome = await run(dispatcher, ctx)
    finally:
        shutil.rmtree(public)
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert outcome.status == "SUCCEEDED", outcome
    assert outcome.details["stdout"] == f"{nobody.pw_uid}\\n{nobody.pw_gid}\\nHOME={nobody.pw_dir}"
