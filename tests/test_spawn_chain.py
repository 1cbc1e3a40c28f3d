"""Scripts start through the constant bash chain (`dispatch.launcher`), not `preexec_fn`.

Real parts only: the real sandbox, real cgroups, a throwaway user and group made with
useradd/groupadd, the real bash and setpriv. Where a test must stop the chain at a point of
its own, it puts a `setpriv` of its own (a root-owned script that records what it holds and
then executes the real one) first in the handler search path: the seam the agent uses to find
setpriv, so nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.dispatch.containment import containment_for
from jobs_agent.dispatch.launcher import CHAIN_CONSTANTS, EXIT_LAUNCH_FAILED, launcher_for
from jobs_agent.dispatch.pipes import ReplyPipe
from jobs_agent.dispatch.process import DEFAULT_PATH, ProcessResult, ProcessSpec, Sandbox
from jobs_agent.dispatch.scripts import EXIT_DEFER, EXIT_REBOOT, EXIT_REJECTED
from jobs_agent.dispatch.spawn import PROGRESS_FD
from jobs_agent.dispatch.users import RunAs, own_user
from jobs_agent.securefs import open_executable
from tests.helpers.strace import strace_attached
from tests.helpers.users import public_dir, throwaway_user

REPORT = """#!/usr/bin/python3
import os
fds = []
for fd in range(1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds.append(str(fd))
print("fds", " ".join(fds))
print(open("/proc/self/cgroup").read(), end="")
for line in open("/proc/self/status"):
    if line.split(":")[0] in ("Uid", "Gid", "Groups"):
        print(line, end="")
"""
"""What the handler has: its descriptors, its cgroup, its ids (the system Python: every
account can run it)."""


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or launcher_for(DEFAULT_PATH) is None,
    reason="needs root, cgroups and bash",
)


@pytest.fixture
def public() -> Iterator[Path]:
    path = public_dir("jobs-agent-spawn-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def throwaway_group(member: pwd.struct_passwd) -> Iterator[grp.struct_group]:
    name = f"jag{secrets.token_hex(4)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        subprocess.run(["usermod", "-aG", name, member.pw_name], check=True, capture_output=True)
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def script(directory: Path, text: str, name: str = "report.sh") -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


async def run(
    sandbox: Sandbox, path: Path, user: RunAs, replies: ReplyPipe | None = None
) -> ProcessResult:
    spec = ProcessSpec((str(path),), user, timeout=30, group="spawn.test")
    return await sandbox.run(spec, cancelled=asyncio.Event(), replies=replies)


def report(result: ProcessResult) -> dict[str, str]:
    assert result.failure() is None, (result.failure(), result.stderr.text())
    lines = result.stdout.text().splitlines()
    found = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if ":" in line}
    found["fds"] = next(line for line in lines if line.startswith("fds ")).split(None, 1)[1]
    found["cgroup"] = next(line[3:] for line in lines if line.startswith("0::"))
    return found


def step_cgroup(sandbox: Sandbox) -> str:
    """The end of the step's cgroup path (/proc/PID/cgroup is relative to the v2 mount)."""
    base = containment_for("cgroup", sandbox.state_dir).base  # type: ignore[attr-defined]
    return f"/{base.name}/spawn.test"


async def test_a_script_runs_in_its_steps_cgroup_with_only_the_protocol_descriptors(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=tmp_path)
    assert sandbox.launcher is not None and sandbox.launcher.serves(own_user(), True)
    handler = script(tmp_path, REPORT)

    plain = report(await run(sandbox, handler, own_user()))
    assert plain["fds"].split() == ["0", "1", "2", "3"]
    assert plain["cgroup"].endswith(step_cgroup(sandbox))

    replies = ReplyPipe()
    with_reply = report(await run(sandbox, handler, own_user(), replies))
    assert with_reply["fds"].split() == ["0", "1", "2", "3", "4"]


async def test_the_user_switch_is_complete_and_no_process_of_the_user_held_root_descriptors(
    public: Path,
) -> None:
    """The switch happens in setpriv, the chain's last link. The test's own setpriv (first in
    the search path) records, as the root process about to switch, every descriptor it holds;
    setpriv opens nothing before it switches, so that is everything a process of the step's
    user could ever hold from the chain: no cgroup.procs (which would let it move any process
    into the step's group) and no descriptor of the script."""
    bin_dir = public / "bin"
    bin_dir.mkdir(mode=0o755)
    held = public / "held"
    script(
        bin_dir,
        f'#!/bin/sh\n{{ id -u; ls -l /proc/$$/fd; }} > {held}\nexec /usr/bin/setpriv "$@"\n',
        "setpriv",
    )
    sandbox = Sandbox(
        kill_grace=1,
        containment="cgroup",
        state_dir=public,
        search_path=f"{bin_dir}:{DEFAULT_PATH}",
    )
    handler = script(public, REPORT)
    with throwaway_user("jas") as entry, throwaway_group(entry) as extra:
        user = RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, "/", (extra.gr_gid,), True)
        assert sandbox.launcher is not None and sandbox.launcher.serves(user, True)
        found = report(await run(sandbox, handler, user))

    uid, gid = str(entry.pw_uid), str(entry.pw_gid)
    assert found["Uid"].split() == [uid] * 4  # real, effective, saved, file system
    assert found["Gid"].split() == [gid] * 4
    assert found["Groups"].split() == [str(extra.gr_gid)]
    assert found["fds"].split() == ["0", "1", "2", "3"]
    assert found["cgroup"].endswith(step_cgroup(sandbox))

    root_link = held.read_text()
    assert root_link.splitlines()[0] == "0"  # the test's setpriv ran, as root, in the chain
    assert "cgroup.procs" not in root_link
    assert str(handler) not in root_link


async def test_without_setpriv_a_step_as_another_user_takes_the_preexec_path(
    public: Path,
) -> None:
    """A search path without setpriv (the seam the agent looks it up in): steps as the agent's
    user still take the chain, steps as another user the `preexec_fn` path, switched as
    completely."""
    empty = public / "empty"
    empty.mkdir(mode=0o755)
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=public, search_path=str(empty))
    handler = script(public, REPORT)
    launcher = sandbox.launcher
    assert launcher is not None and launcher.setpriv is None
    assert launcher.serves(own_user(), True)
    with throwaway_user("jas") as entry:
        user = RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, "/", (), True)
        assert not launcher.serves(user, True)
        found = report(await run(sandbox, handler, user))
    assert found["Uid"].split() == [str(entry.pw_uid)] * 4
    assert found["Gid"].split() == [str(entry.pw_gid)] * 4
    assert found["Groups"] == ""
    assert found["fds"].split() == ["0", "1", "2", "3"]
    assert found["cgroup"].endswith(step_cgroup(sandbox))


def test_the_chain_refuses_a_script_swapped_after_the_check(tmp_path: Path) -> None:
    """The sandbox checks the name right before it spawns; the chain checks it again right
    before it executes, against the descriptor of the file that was checked. Here the swap
    happens between the two (a rename over the checked name), and the chain refuses."""
    ran = tmp_path / "ran"
    checked = script(tmp_path, f"#!/bin/sh\ntouch {ran}.checked\n")
    executable = open_executable(checked, what="handler")
    script(tmp_path, f"#!/bin/sh\ntouch {ran}.swapped\n", "other.sh").rename(checked)
    launcher = launcher_for(DEFAULT_PATH)
    assert launcher is not None
    progress_read, progress = os.pipe()
    passed = [os.dup(progress), os.dup(executable.fd)]
    try:
        argv = launcher.argv(
            [str(checked)],
            own_user(),
            join_fd=None,
            progress_fd=passed[0],
            reply_fd=None,
            checked_fd=passed[1],
            script=str(checked),
        )
        done = subprocess.run(argv, pass_fds=passed, capture_output=True, env={}, timeout=30)
    finally:
        for fd in (progress_read, progress, *passed):
            os.close(fd)
        executable.close()
    assert done.returncode == EXIT_LAUNCH_FAILED
    assert done.stderr == b"jobs-agent-spawn: the executable changed after it was checked\n"
    assert not list(tmp_path.glob("ran.*"))


async def test_a_step_cancelled_before_the_chain_joined_its_cgroup_still_ends(
    tmp_path: Path,
) -> None:
    """Popen returns once bash runs, before it has joined the step's cgroup: a cancellation
    that comes at once finds the group empty. The leader (the chain itself, the only process
    before the join) is signalled too, so the step ends instead of running to its end."""
    sandbox = Sandbox(kill_grace=60, containment="cgroup", state_dir=tmp_path)
    handler = script(tmp_path, "#!/bin/sh\nexec sleep 60\n")
    cancelled = asyncio.Event()
    cancelled.set()
    spec = ProcessSpec((str(handler),), own_user(), timeout=60, group="spawn.test")
    result = await asyncio.wait_for(sandbox.run(spec, cancelled=cancelled), timeout=30)
    assert result.cancelled
    assert result.signal == signal.SIGTERM  # not SIGKILL after the grace


async def test_descriptors_the_agent_let_leak_never_reach_the_script(tmp_path: Path) -> None:
    """An inheritable descriptor of the agent (as awscrt's sockets are), low or high, never
    reaches a script started through the chain, and the script runs in its working directory
    with the environment the agent gave (no `OLDPWD` made up; one the agent passed, naming a
    directory, kept). The guard for any other way of starting the chain: round 10 tried
    `os.posix_spawn`, where the chain itself must close what `Popen(close_fds=True)` closes
    in the child and enter the directory Popen enters (docs/architecture.md, issue 18)."""
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=tmp_path)
    handler = script(
        tmp_path,
        REPORT + "print('cwd:', os.getcwd())\nprint('oldpwd:', os.environ.get('OLDPWD'))\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    leaked = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    leaked.append(os.dup2(leaked[0], 700))
    for fd in leaked:
        os.set_inheritable(fd, True)
    try:
        spec = ProcessSpec((str(handler),), own_user(), timeout=30, group="spawn.test", cwd=work)
        found = report(await sandbox.run(spec, cancelled=asyncio.Event()))
        spec = dataclasses.replace(spec, env={"OLDPWD": "/usr"})
        kept = report(await sandbox.run(spec, cancelled=asyncio.Event()))
    finally:
        for fd in leaked:
            os.close(fd)
    assert found["fds"].split() == ["0", "1", "2", "3"]
    assert found["cwd"] == str(work)
    assert (found["oldpwd"], kept["oldpwd"]) == ("None", "/usr")


LOCALE_REPORT = (
    '#!/bin/sh\necho "LANG: $LANG"\necho "LC_ALL: ${LC_ALL-unset}"\necho "SHELL: ${SHELL-unset}"\n'
)
"""What a script sees of the chain's own variables (dash, which reads no locale file and
sets no `SHELL` itself)."""


async def test_the_chain_loads_no_locale_and_the_script_gets_the_steps_environment(
    tmp_path: Path,
) -> None:
    """bash, started with the handlers' `LANG=C.UTF-8`, loaded that locale (about 25 opens
    under /usr/lib/locale) for a program that needs none, and read the password database to
    set `SHELL`: 185 -> 92 system calls per spawn of chain and script. It now runs with an
    `LC_ALL=C` and a `SHELL` of its own that it un-exports before the exec, so the script's
    environment is the step's: `LANG` as given, no `LC_ALL`, no `SHELL`, and the ones the
    step was given (the site's `handler_environment`) reach it as they were."""
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=tmp_path)
    handler = script(tmp_path, LOCALE_REPORT)
    spec = ProcessSpec((str(handler),), own_user(), timeout=30, group="spawn.test")
    trace = tmp_path / "trace"
    async with strace_attached(os.getpid(), trace, "open,openat"):
        plain = await sandbox.run(spec, cancelled=asyncio.Event())
    assert plain.failure() is None, plain.stderr.text()
    assert plain.stdout.text().splitlines() == [
        "LANG: C.UTF-8",
        "LC_ALL: unset",
        "SHELL: unset",
    ]
    lines = trace.read_text().splitlines()
    assert [line for line in lines if "/locale" in line] == []
    assert [line for line in lines if "/etc/passwd" in line or "nsswitch" in line] == []

    spec = dataclasses.replace(spec, env={"LC_ALL": "C.UTF-8", "SHELL": "/bin/sh"})
    site = await sandbox.run(spec, cancelled=asyncio.Event())
    assert site.stdout.text().splitlines() == [
        "LANG: C.UTF-8",
        "LC_ALL: C.UTF-8",
        "SHELL: /bin/sh",
    ]


async def test_the_chain_s_own_words_never_overwrite_a_variable_of_the_step(
    tmp_path: Path,
) -> None:
    """The chain checked its descriptors and its variables in `for` loops whose variables,
    `fd` and `name`, are variables of the step too when the site's `handler_environment`
    names them: the script got `fd` as the number of the checked script's descriptor and
    `name` as `-`. The chain now keeps no variable of its own, so a step's `fd` and `name`
    reach the script as they were given, and stay unset when they were not."""
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=tmp_path)
    handler = script(tmp_path, '#!/bin/sh\necho "fd: ${fd-unset}"\necho "name: ${name-unset}"\n')
    spec = ProcessSpec((str(handler),), own_user(), timeout=30, group="spawn.test")
    plain = await sandbox.run(spec, cancelled=asyncio.Event())
    assert plain.failure() is None, plain.stderr.text()
    assert plain.stdout.text().splitlines() == ["fd: unset", "name: unset"]

    for given in (
        {"fd": "site fd", "name": "site name"},  # the chain adds LC_ALL and SHELL
        {"fd": "1", "name": "x y", "SHELL": "/bin/sh"},  # it adds LC_ALL only
    ):
        site = await sandbox.run(dataclasses.replace(spec, env=given), cancelled=asyncio.Event())
        assert site.failure() is None, site.stderr.text()
        assert site.stdout.text().splitlines() == [f"fd: {given['fd']}", f"name: {given['name']}"]


async def test_the_chain_exports_the_protocol_s_constants_so_bash_is_started_with_fewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Popen` encodes a child's environment variable by variable in Python (about 6.6 k
    instructions each): the four that every script step has with the same values (the
    progress descriptor and the protocol's three exit codes) are exported by the chain itself,
    so bash is started with four variables fewer; the script gets the same ones as before.
    A step whose environment has one of them with another value gets its own, untouched."""
    sandbox = Sandbox(kill_grace=1, containment="cgroup", state_dir=tmp_path)
    handler = script(tmp_path, "#!/bin/sh\nenv\n", "env.sh")
    given: list[dict[str, str]] = []
    real_init = subprocess.Popen.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        given.append(dict(kwargs["env"]))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording)
    protocol = {"JOBS_AGENT_EXIT_REJECTED": "90", "JOBS_AGENT_EXIT_REBOOT": "91"}
    protocol |= {"JOBS_AGENT_EXIT_DEFER": "92", "JOBS_AGENT_JOB_ID": "j-1"}
    spec = ProcessSpec((str(handler),), own_user(), timeout=30, group="spawn.test", env=protocol)
    seen = []
    for env in (protocol, {**protocol, "JOBS_AGENT_EXIT_DEFER": "7"}):
        result = await sandbox.run(dataclasses.replace(spec, env=env), cancelled=asyncio.Event())
        assert result.failure() is None, result.stderr.text()
        lines = result.stdout.text().splitlines()
        seen.append(dict(line.split("=", 1) for line in lines if line.startswith("JOBS_AGENT_")))
    constants = {"JOBS_AGENT_PROGRESS_FD": "3", **protocol}
    del constants["JOBS_AGENT_JOB_ID"]
    assert not set(constants) & set(given[0])  # exported by the chain
    assert given[0]["JOBS_AGENT_JOB_ID"] == "j-1"
    assert seen[0] == {**protocol, "JOBS_AGENT_PROGRESS_FD": "3"}
    assert set(constants) <= set(given[1])  # not all as the chain has them: all given
    assert seen[1] == {**protocol, "JOBS_AGENT_EXIT_DEFER": "7", "JOBS_AGENT_PROGRESS_FD": "3"}
    assert len(given[0]) == len(given[1]) - len(constants)


def test_the_chain_s_constants_are_the_protocol_s() -> None:
    """`LAUNCH` writes them as text: they must be what the agent would have given."""
    assert dict(CHAIN_CONSTANTS) == {
        "JOBS_AGENT_PROGRESS_FD": str(PROGRESS_FD),
        "JOBS_AGENT_EXIT_REJECTED": str(EXIT_REJECTED),
        "JOBS_AGENT_EXIT_REBOOT": str(EXIT_REBOOT),
        "JOBS_AGENT_EXIT_DEFER": str(EXIT_DEFER),
    }
