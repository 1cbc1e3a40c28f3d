"""Handler resolution against a local attacker: every directory above the handler is checked,
and what runs is the file that was checked.

The race test gives a real throwaway user the parent of the handler directory and lets it swap
that directory for its own (an atomic `renameat2(RENAME_EXCHANGE)` loop in a second process)
while the agent resolves and runs job after job. Whatever the interleaving, the attacker's
script never runs: the parent it owns makes every job REJECTED before anything runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent_handlers.api import JobRejected
from tests.helpers.users import public_dir, run_as, throwaway_user

SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
home, stop = sys.argv[1], sys.argv[2]
a, b = os.path.join(home, "scripts").encode(), os.path.join(home, "evil").encode()
swaps = 0
while not os.path.exists(stop):
    if swaps == 1:
        print("swapping", flush=True)
    # renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE): both names always exist.
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        sys.exit("renameat2 failed: %d" % ctypes.get_errno())
    swaps += 1
print(swaps)
"""


def _dispatcher(handler_dir: Path, state: Path, **jobs: Any) -> Dispatcher:
    return Dispatcher(
        AgentConfig(
            thing_name="gw",
            state_dir=state,
            jobs=JobsConfig(handler_dir=handler_dir, kill_grace_seconds=1.0, **jobs),
        )
    )


def _script(path: Path, body: str, uid: int = 0, gid: int = 0) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    os.chown(path, uid, gid)


async def test_a_handler_below_a_directory_another_user_owns_is_never_run(
    tmp_path: Path,
) -> None:
    with throwaway_user() as attacker:
        base = public_dir("ja-race-")
        try:
            home = base / "home"  # the attacker's, like /home/pi in `/home/pi/scripts`
            home.mkdir(mode=0o755)
            os.chown(home, attacker.pw_uid, attacker.pw_gid)
            legit = home / "scripts"
            legit.mkdir(mode=0o755)  # root's, and so is the handler in it
            _script(legit / "h", "echo legit\n")
            evil = home / "evil"
            evil.mkdir(mode=0o755)
            os.chown(evil, attacker.pw_uid, attacker.pw_gid)
            pwned = base / "pwned"
            _script(evil / "h", f"id -u > {pwned}\n", attacker.pw_uid, attacker.pw_gid)
            stop = base / "stop"

            dispatcher = _dispatcher(legit, tmp_path / "state")
            scratch = tmp_path / "scratch"
            scratch.mkdir()
            swapper = run_as(attacker, SWAPPER, str(home), str(stop))
            outcomes: list[str] = []
            try:
                assert swapper.stdout is not None
                assert swapper.stdout.readline() == b"swapping\n"
                for number in range(60):
                    ctx = LocalJobContext(
                        document={"operation": "h"},
                        scratch_dir=scratch,
                        state_dir=scratch,
                        job_id=f"race-{number}",
                    )
                    try:
                        handler = dispatcher.resolve(ctx.document)
                    except JobRejected as exc:
                        outcomes.append(f"REJECTED: {exc.reason}")
                        continue
                    outcome = await dispatcher.run(handler, ctx)
                    outcomes.append(f"{outcome.status}: {outcome.details.get('reason', '')}")
            finally:
                stop.touch()
                out, err = swapper.communicate(timeout=30)
            assert swapper.returncode == 0, err
            assert int(out) > len(outcomes), "the attacker did not keep swapping"
            assert not pwned.exists(), f"the attacker's script ran as uid {pwned.read_text()}"
            expected = (
                f'REJECTED: step "h": the directory {home} above the handler directory {legit}'
                f" is owned by uid {attacker.pw_uid}, not by root or the agent's user:"
                " whoever can change it can swap the handler"
            )
            assert set(outcomes) == {expected}
        finally:
            shutil.rmtree(base)


def test_every_directory_up_to_the_root_is_checked(tmp_path: Path) -> None:
    base = public_dir("ja-parents-")
    try:
        middle = base / "opt"
        handler_dir = middle / "handlers"
        handler_dir.mkdir(parents=True, mode=0o755)
        handler_dir.chmod(0o755)
        _script(handler_dir / "h", "echo ok\n")
        dispatcher = _dispatcher(handler_dir, tmp_path / "state")
        assert dispatcher.resolve({"operation": "h"}).name == "h"

        middle.chmod(0o775)  # group-writable, no sticky bit: a group member can swap
        with pytest.raises(JobRejected) as info:
            dispatcher.resolve({"operation": "h"})
        assert info.value.reason == (
            f'step "h": the directory {middle} above the handler directory {handler_dir} is'
            " writable by its group (mode 0775): whoever can change it can swap the handler"
        )

        middle.chmod(0o1777)  # sticky, like /tmp: entries owned by root cannot be swapped
        assert dispatcher.resolve({"operation": "h"}).name == "h"
    finally:
        shutil.rmtree(base)
