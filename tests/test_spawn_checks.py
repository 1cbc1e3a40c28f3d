"""What the sandbox checks itself before it starts a script through the spawn chain, and what
it leaves to the chain, which checks it later, just before the exec (issue 18).

A script's name is compared with the file that was checked by the chain (`[ SCRIPT -ef
/proc/self/fd/E ]`, as root, the last thing before the exec); its `#!` line was checked with
the job's document. So a script's spawn asks the system nothing more about either: no `stat` of
the script, no `stat` and `access` of its interpreter. What changed in between is still
refused, with the words it had: a script swapped after its check does not run, and an
interpreter gone since the document's check is named as the reason of a failed start. Counts
through seams on the real sandbox, never times.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.dispatch import process
from jobs_agent.dispatch.containment import Containment, containment_for
from jobs_agent.dispatch.launcher import launcher_for
from jobs_agent.dispatch.process import DEFAULT_PATH, ProcessResult, ProcessSpec, Sandbox
from jobs_agent.dispatch.users import own_user


@pytest.fixture
def handlers() -> Iterator[Path]:
    """A directory only root can change (the trust walk's condition), with `noop.sh`."""
    base = Path(os.path.realpath(Path("/tmp") / f"ja-spawn-checks-{os.getpid()}"))
    directory = base / "handlers"
    directory.mkdir(parents=True, mode=0o755)
    script(directory, "#!/bin/sh\nexit 0\n", "noop.sh")
    try:
        yield directory
    finally:
        shutil.rmtree(base)


def script(directory: Path, text: str, name: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


async def run(tmp_path: Path, path: Path, sandbox: Sandbox | None = None) -> ProcessResult:
    assert launcher_for(DEFAULT_PATH) is not None, "bash is needed for the chain"
    sandbox = sandbox or Sandbox(kill_grace=1, state_dir=tmp_path)
    spec = ProcessSpec((str(path),), own_user(), 30, group=f"checks.{path.name}")
    return await sandbox.run(spec, cancelled=asyncio.Event())


def _counted(calls: list[str], function: Callable[..., Any]) -> Callable[..., Any]:
    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else "")
        return function(path, *args, **kwargs)

    return counted


async def test_a_script_s_spawn_asks_nothing_of_the_script_or_its_interpreter_by_name(
    handlers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent made a `stat` of the script (its identity, which the chain checks again
    later) and a `stat` and an `access` of `/bin/sh` (its `#!` line, checked with the
    job's document) at every spawn: 3 calls by name per script job, now none."""
    noop = handlers / "noop.sh"
    stats: list[str] = []
    accesses: list[str] = []
    monkeypatch.setattr(os, "stat", _counted(stats, os.stat))
    monkeypatch.setattr(os, "access", _counted(accesses, os.access))
    result = await run(tmp_path, noop)
    assert result.failure() is None, (result.failure(), result.stderr.text())
    asked = [path for path in stats + accesses if path in (str(noop), "/bin/sh")]
    assert asked == []


@pytest.mark.parametrize(
    ("first_line", "problem"),
    [
        ("#!/bin/shh", "interpreter /bin/shh not found (named by the first line of {path})"),
        ("#!/bin/sh\r", "the first line of {path} ends with a carriage return"),
        ("#!/usr/bin/env nosuchsh", "interpreter nosuchsh not found in PATH"),
    ],
    ids=["missing", "crlf", "env"],
)
async def test_an_interpreter_broken_since_the_document_s_check_is_a_failed_start_named_so(
    handlers: Path, tmp_path: Path, first_line: str, problem: str
) -> None:
    """The document's check (`devicec.prepare`) named these before anything ran; a step
    whose interpreter went since (an earlier step removed it) fails to start with the same
    words, from its `#!` line read through the checked descriptor, not the shell's "cannot
    execute: required file not found"."""
    path = script(handlers, f"{first_line}\necho ran\n", "broken.sh")
    result = await run(tmp_path, path)
    assert result.spawn_error is not None, (result.returncode, result.stderr.text())
    assert result.spawn_error.startswith(f"cannot run {path}: ")
    assert problem.format(path=path) in result.spawn_error
    assert result.failure() == result.spawn_error
    assert result.stdout.text() == ""


@pytest.mark.parametrize("code", [126, 127])
async def test_a_script_that_exits_126_or_127_itself_keeps_its_exit_code(
    handlers: Path, tmp_path: Path, code: int
) -> None:
    path = script(handlers, f"#!/bin/sh\necho ran\nexit {code}\n", f"exits{code}.sh")
    result = await run(tmp_path, path)
    assert result.spawn_error is None
    assert result.exit_code == code
    assert result.failure() == f"exited with code {code}"
    assert result.stdout.text() == "ran\n"


async def test_a_script_swapped_after_the_sandbox_checked_it_does_not_run(
    handlers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swapped between the sandbox's check and the spawn (here: while its group is made,
    which comes between the two), the script is refused by the chain's identity check, as
    root, just before the exec: a failed start, and neither file ran."""
    ran = tmp_path / "ran"
    checked = script(handlers, f"#!/bin/sh\ntouch {ran}.checked\n", "swapped.sh")
    other = script(handlers, f"#!/bin/sh\ntouch {ran}.other\n", "other.sh")
    sandbox = Sandbox(kill_grace=1, state_dir=tmp_path)
    real: Containment = containment_for("auto", tmp_path)

    class Swapping:
        kind = real.kind

        def group(self, name: str) -> Any:
            other.rename(checked)
            return real.group(name)

        def sweep(self, name: str) -> int:
            return real.sweep(name)

        def sweep_all(self) -> int:
            return real.sweep_all()

    monkeypatch.setattr(process, "containment_for", lambda mode, state_dir: Swapping())
    result = await run(tmp_path, checked, sandbox)
    assert result.spawn_error is not None, (result.returncode, result.stderr.text())
    assert "changed after it was checked" in result.spawn_error
    assert not list(tmp_path.glob("ran.*"))


async def test_a_binary_s_spawn_asks_once_whether_proc_is_there(
    handlers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binary is executed through the checked descriptor (`/proc/self/fd/N`) where /proc is
    mounted: the sandbox asked at each look at how the exec goes (`by_name`, `exec_path`), a
    `stat` of /proc/self/fd each, 3 per step; now once per checked executable."""
    binary = handlers / "true"
    shutil.copy("/bin/true", binary)
    binary.chmod(0o755)
    stats: list[str] = []
    monkeypatch.setattr(os, "stat", _counted(stats, os.stat))
    result = await run(tmp_path, binary)
    assert result.failure() is None, (result.failure(), result.stderr.text())
    assert stats.count("/proc/self/fd") == 1
