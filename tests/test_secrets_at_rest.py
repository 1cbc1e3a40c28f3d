"""Secrets at rest and in the process list: the state directory, the job logs, the stored job
documents and the argv of handlers, checked on the real agent (in-process, against the emulator)
and against a real second account."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs_agent.daemon import Agent
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.helpers.agent_harness import make_config, make_handler_dir, running_agent, write_script
from tests.helpers.users import public_dir, throwaway_user

PRESIGNED = "${aws:iot:s3-presigned-url:https://firmware.s3.amazonaws.com/image.bin}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_agent_makes_its_state_directory_private(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    fresh = tmp_path / "fresh" / "state"
    async with running_agent(tmp_path, make_config(tmp_path, state_dir=fresh)) as harness:
        done = await harness.run_job("j1", {"operation": "ok.sh", "args": ["secret-output"]})
        assert str(done.status) == "SUCCEEDED"
    assert mode(fresh) == 0o700
    assert mode(fresh / "logs") == 0o700
    (log,) = (fresh / "logs").iterdir()
    assert mode(log) == 0o600

    old = tmp_path / "old-state"
    old.mkdir(mode=0o755)
    old.chmod(0o755)  # as an earlier version (or a plain mkdir) left it
    async with running_agent(tmp_path, make_config(tmp_path, state_dir=old)):
        pass
    assert mode(old) == 0o700


async def test_a_state_directory_another_account_controls_is_refused(tmp_path: Path) -> None:
    with throwaway_user() as user:
        base = public_dir("ja-state-")
        try:
            theirs = base / "theirs"
            theirs.mkdir(mode=0o755)
            os.chown(theirs, user.pw_uid, user.pw_gid)
            config = make_config(tmp_path, state_dir=theirs / "state")
            agent = Agent(config, transport=LocalTransport(LocalBus(), config.client_id))
            assert await agent.run() == 1
            assert not (theirs / "state" / "state.db").exists()
        finally:
            shutil.rmtree(base)


async def test_documents_are_stored_without_presigned_credentials(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    document = {"operation": "ok.sh", "url": PRESIGNED}
    async with running_agent(tmp_path) as harness:
        done = await harness.run_job("doc", document)
        assert str(done.status) == "SUCCEEDED"
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        (stored,) = db.execute("SELECT document FROM executions WHERE job_id = 'doc'").fetchone()
    url = json.loads(stored)["url"]
    assert url.startswith("https://firmware.s3.amazonaws.com/image.bin?")
    # The service delivered a signed URL (the parameters are there) whose secrets were not kept.
    assert "X-Amz-Signature=REDACTED" in url
    assert "X-Amz-Credential=REDACTED" in url


async def test_presigned_urls_reach_handlers_in_the_environment_not_in_argv(
    tmp_path: Path,
) -> None:
    make_handler_dir(tmp_path)
    write_script(
        tmp_path / "handlers",
        "args.sh",
        "tr '\\0' ' ' < /proc/$$/cmdline; echo\n"
        'case "$2" in env:*) printenv "${2#env:}";; esac\n',
    )
    run_command = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "curl",
                    "type": "runCommand",
                    "input": {"command": f"curl,-o,/tmp/x,{PRESIGNED}"},
                }
            }
        ],
    }
    async with running_agent(tmp_path) as harness:
        done = await harness.run_job(
            "argv", {"operation": "args.sh", "args": [PRESIGNED, "plain"], "includeStdOut": True}
        )
        refused = await harness.run_job("cmd", run_command)
    assert str(done.status) == "SUCCEEDED"
    argv, url = done.status_details["stdout"].split("\\n")
    assert argv.endswith("  env:JOBS_AGENT_URL_1 plain ")  # [handler, runAsUser "", args]
    assert "X-Amz-Signature" not in argv
    assert url.startswith("https://firmware.s3.amazonaws.com/image.bin?")
    assert "X-Amz-Signature=REDACTED" in url  # status details are redacted; the handler had it
    assert str(refused.status) == "REJECTED"
    assert refused.status_details["reason"] == (
        'step "curl": the command holds a presigned URL (or another URL credential), which'
        " would be visible to every local user in the process list: use a runHandler step,"
        " which gets it in the environment, or the download-file handler"
    )


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    """The modes above must come from the agent, not from a strict umask (0022 is usual)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)
