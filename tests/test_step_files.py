"""The files the agent makes for a `runAsUser` step, against that (untrusted) user.

The step's account is a real throwaway user; the attacker is a second process running as that
user, racing the agent with unlink + symlink swaps in a loop for as long as the jobs run. What
must hold whatever the interleaving: root never changes a file through a name the user
controls (the victim file keeps its owner), and the step's own use of its directory (a
subdirectory next to its document) neither fails the job nor leaves anything behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from tests.helpers.users import public_dir, run_as, throwaway_user

ATTACKER = r"""
import os, sys
root, victim, stop = sys.argv[1:4]
print("racing", flush=True)
swaps = 0
while not os.path.exists(stop):
    try:
        names = os.listdir(root)
    except OSError:
        continue
    for name in names:
        for candidate in (
            os.path.join(root, name, "document.json"),
            os.path.join(root, name, "step", "document.json"),
        ):
            try:
                os.unlink(candidate)
                os.symlink(victim, candidate)
                swaps += 1
            except OSError:
                pass
print(swaps)
"""


@pytest.fixture
def step_user() -> Iterator[Any]:
    with throwaway_user() as user:
        yield user


@pytest.fixture
def public(step_user: Any) -> Iterator[Path]:
    base = public_dir("ja-steps-")
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _dispatcher(public: Path, state: Path, user: str, body: str) -> Dispatcher:
    handler_dir = public / "handlers"
    handler_dir.mkdir(mode=0o755)
    handler = handler_dir / "h"
    handler.write_text("#!/bin/sh\n" + body)
    handler.chmod(0o755)
    return Dispatcher(
        AgentConfig(
            thing_name="gw",
            state_dir=state,
            jobs=JobsConfig(handler_dir=handler_dir, allowed_users=(user,), kill_grace_seconds=1),
        )
    )


async def test_the_step_user_cannot_make_root_chown_another_file(
    tmp_path: Path, step_user: Any, public: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's temporary directory: sticky and world-writable like /tmp, but only ours, so
    # the attacker finds the step directories at once.
    scratch_root = public / "tmp"
    scratch_root.mkdir()
    scratch_root.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    victim = public / "victim"
    victim.write_text("root's\n")
    victim.chmod(0o644)
    dispatcher = _dispatcher(public, tmp_path / "state", step_user.pw_name, "true\n")
    stop = public / "stop"
    attacker = run_as(step_user, ATTACKER, str(scratch_root), str(victim), str(stop))
    statuses = []
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline() == b"racing\n"
        for number in range(40):
            document = {"operation": "h", "runAsUser": step_user.pw_name}
            ctx = LocalJobContext(
                document=document,
                scratch_dir=tmp_path / "s",
                state_dir=tmp_path,
                job_id=f"chown-{number}",
            )
            outcome = await dispatcher.run(dispatcher.resolve(document), ctx)
            statuses.append(outcome.status)
            if os.stat(victim).st_uid != 0:
                break
    finally:
        stop.touch()
        _swaps, err = attacker.communicate(timeout=30)
    assert attacker.returncode == 0, err
    info = os.stat(victim)
    assert (info.st_uid, info.st_gid) == (0, 0), f"root chowned the victim after {len(statuses)}"
    assert statuses == ["SUCCEEDED"] * 40
    assert os.listdir(scratch_root) == []  # every step directory removed


async def test_a_step_may_use_the_directory_of_its_document(
    tmp_path: Path, step_user: Any, public: Path
) -> None:
    body = (
        'here=$(dirname "$JOBS_AGENT_DOCUMENT")\n'
        'mkdir "$here/sub" && echo work > "$here/sub/file" && ln -s /etc/passwd "$here/link"\n'
        'echo "$here"\n'
    )
    dispatcher = _dispatcher(public, tmp_path / "state", step_user.pw_name, body)
    document = {"operation": "h", "runAsUser": step_user.pw_name, "includeStdOut": True}
    ctx = LocalJobContext(document=document, scratch_dir=tmp_path / "s", state_dir=tmp_path)
    outcome = await dispatcher.run(dispatcher.resolve(document), ctx)
    assert outcome.status == "SUCCEEDED", outcome
    step_dir = Path(outcome.details["stdout"])
    assert not step_dir.exists()
    assert not step_dir.parent.exists()
    assert Path("/etc/passwd").exists()
