"""Starting a script without `preexec_fn`: a constant bash program does the child's part.

Why: `preexec_fn` (join the step's cgroup, place the pipes on fds 3 and 4, switch user, check
the script once more) makes CPython's `subprocess` fork the whole agent instead of vfork-ing
it, and the agent then pays for the copy-on-write faults; that was most of the agent's CPU per
script job. Without `preexec_fn` and without a user switch asked of `Popen`, the agent vforks
and the child at once executes this chain, all of it outside the agent:

1. `/bin/bash -p -c LAUNCH jobs-agent-spawn J P R E L C SCRIPT COMMAND...`, as root. `LAUNCH`
   is a constant (never job input: the job's words arrive only as `"$@"`, never evaluated;
   `-p` keeps bash from reading `BASH_ENV` or importing functions from the environment). It
   writes `0` to the step's `cgroup.procs` (descriptor J) and closes it, so it is in the step's
   cgroup before anything of the job runs; puts the progress pipe (P) on fd 3 and the reply
   pipe (R) on fd 4; checks that SCRIPT is still the file the agent checked (E, the agent's
   descriptor of it: `[ SCRIPT -ef /proc/self/fd/E ]`) and closes E; then executes COMMAND.
   `Popen(close_fds=True, pass_fds=...)` closed every other descriptor first.
   L names the variables the agent added to the step's environment for bash alone (`-`:
   none), `CHAIN_ENVIRONMENT`'s where the step sets none of its own, and the chain un-exports
   them before the exec (`export -n`, which, unlike `unset`, runs none of bash's hooks for
   them), so COMMAND gets exactly the step's environment. `LC_ALL=C`: a bash started with
   the handlers' `LANG=C.UTF-8` loaded that locale, some 25 files, for a program that needs
   none (the chain's own messages are ASCII in either locale); `SHELL`: without it bash looks
   the user up in the password database (nsswitch.conf, /etc/passwd) to set it. Per spawn of
   the chain and script: 185 -> 111 -> 92 system calls, about 0.3 ms of CPU (issue 18).
   C (`CONSTANTS_WORD`, or `-`) says that the chain exports the script protocol's constant
   variables itself (`CHAIN_CONSTANTS`: the progress descriptor and the three exit codes,
   written into `LAUNCH`), the step's environment then holding them with exactly these
   values; the agent leaves them out of bash's environment. `Popen` encodes the environment
   variable by variable in Python, about 6.6 k instructions each (issue 18); COMMAND gets the
   same variables either way.
2. For a step that runs as another user, COMMAND is `setpriv --reuid --regid --groups|
   --clear-groups -- SCRIPT ARGS...` (util-linux): supplementary groups, gid and uid, all of
   real, effective and saved. It is the last link, so no process running as the step's user
   ever holds the root-opened `cgroup.procs` descriptor (which would let it move any process
   into the step's group) or the descriptor of the script.
3. SCRIPT itself, with exactly fds 0-3 (0-4 with a reply pipe).

Binaries are not started this way: they are executed through the very descriptor that was
checked (`/proc/self/fd/N`), and a shell cannot mark that descriptor close-on-exec, so it
would reach the handler (read access to a file that may be execute-only for the user). They,
and every step where bash or `setpriv` is missing or untrusted, keep the `preexec_fn` path
(`spawn._child_setup`), which guarantees the same. bash, not `/bin/sh`: dash (Debian's sh)
cannot name a descriptor above 9, and the agent's descriptors are wherever they happen to be.

A failure of the chain itself (cannot join the cgroup, the script changed) ends it with
`EXIT_LAUNCH_FAILED` and one `jobs-agent-spawn: ...` line on stderr, which the sandbox reports
as a failed start.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import structlog

from jobs_agent.datamodel import model
from jobs_agent.dispatch.scripts import EXIT_DEFER, EXIT_REBOOT, EXIT_REJECTED
from jobs_agent.dispatch.users import RunAs
from jobs_agent.securefs import UntrustedPath, open_executable

log = structlog.get_logger("jobs_agent.dispatch.launcher")

SHELL = "/bin/bash"
ARGV0 = "jobs-agent-spawn"
EXIT_LAUNCH_FAILED = 125
FAILURE_PREFIX = f"{ARGV0}: "

CHAIN_CONSTANTS = (
    ("JOBS_AGENT_PROGRESS_FD", "3"),
    ("JOBS_AGENT_EXIT_REJECTED", str(EXIT_REJECTED)),
    ("JOBS_AGENT_EXIT_REBOOT", str(EXIT_REBOOT)),
    ("JOBS_AGENT_EXIT_DEFER", str(EXIT_DEFER)),
)
"""Variables of every script step whose values never change (the progress pipe is on fd 3
wherever the chain runs, as `LAUNCH` puts it there): exported by the chain itself (C, module
doc) when the step's environment holds all of them with these values."""
CONSTANTS_WORD = "C"
"""C when the chain exports `CHAIN_CONSTANTS`."""
_EXPORT_CONSTANTS = "export " + " ".join(f"{name}={value}" for name, value in CHAIN_CONSTANTS)

LAUNCH = f"""\
fail() {{ printf '{FAILURE_PREFIX}%s\\n' "$1" >&2; exit {EXIT_LAUNCH_FAILED}; }}
case $1 in -) ;; ''|*[!0-9]*|[0-4]) fail "bad descriptor $1";; esac
case $2 in ''|*[!0-9]*|[0-4]) fail "bad descriptor $2";; esac
case $3 in -) ;; ''|*[!0-9]*|[0-4]) fail "bad descriptor $3";; esac
case $4 in -) ;; ''|*[!0-9]*|[0-4]) fail "bad descriptor $4";; esac
if [ "$1" != - ]; then
  printf 0 2>/dev/null >&"$1" || fail "cannot join the step's cgroup"
  eval "exec $1>&-"
fi
eval "exec 3>&$2 $2>&-"
if [ "$3" != - ]; then eval "exec 4<&$3 $3<&-"; fi
if [ "$4" != - ]; then
  [ "$7" -ef "/proc/self/fd/$4" ] || fail "the executable changed after it was checked"
  eval "exec $4<&-"
fi
case $5 in
  -) ;; LC_ALL|SHELL|"LC_ALL SHELL") export -n $5;; *) fail "bad variables $5";;
esac
case $6 in
  -) ;; {CONSTANTS_WORD}) {_EXPORT_CONSTANTS};; *) fail "bad constants $6";;
esac
shift 7
exec "$@"
"""
"""The chain's program: descriptors (or `-`) J P R E, the variables that are the chain's own
(or `-`), whether it exports `CHAIN_CONSTANTS` (or `-`), the script, then the command to
run."""

CHAIN_ENVIRONMENT = {"LC_ALL": "C", "SHELL": SHELL}
"""What bash is given beside the step's environment (module doc), where the step sets none."""

LOWEST_PASSED_FD = 5
"""Descriptors handed to the chain are at least this, so placing 3 and 4 never overwrites one."""


@model
class Launcher:
    """Where the chain's two programs are; `setpriv` None: only for steps without a user switch."""

    shell: str
    setpriv: str | None

    def serves(self, user: RunAs, by_name: bool) -> bool:
        """Whether a step can be started by the chain (else `preexec_fn`, see module doc)."""
        return by_name and (not user.switch or self.setpriv is not None)

    def argv(
        self,
        command: list[str],
        user: RunAs,
        *,
        join_fd: int | None,
        progress_fd: int,
        reply_fd: int | None,
        checked_fd: int,
        script: str,
        own: str = "-",
        constants: str = "-",
    ) -> list[str]:
        if user.switch:
            assert self.setpriv is not None
            groups = (
                f"--groups={','.join(str(gid) for gid in user.groups)}"
                if user.groups
                else "--clear-groups"
            )
            command = [
                self.setpriv,
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                groups,
                "--",
                *command,
            ]
        return [
            self.shell,
            "-p",
            "-c",
            LAUNCH,
            ARGV0,
            _number(join_fd),
            str(progress_fd),
            _number(reply_fd),
            str(checked_fd),
            own,
            constants,
            script,
            *command,
        ]

    @staticmethod
    def environment(env: Mapping[str, str]) -> tuple[Mapping[str, str], str, str]:
        """The environment to start the chain with, L and C (module doc): the step's,
        without `CHAIN_CONSTANTS` when it holds them all as they are (C), plus
        `CHAIN_ENVIRONMENT`'s variables it sets none of, named in L."""
        added = {name: value for name, value in CHAIN_ENVIRONMENT.items() if name not in env}
        own = " ".join(added) if added else "-"
        given = {**env, **added}  # a copy in C; a comprehension leaving the four out cost more
        pop = given.pop
        for name, value in CHAIN_CONSTANTS:
            if pop(name, None) != value:  # not all as the chain has them: all given as they are
                return ({**env, **added} if added else env), own, "-"
        return given, own, CONSTANTS_WORD


def _number(fd: int | None) -> str:
    return "-" if fd is None else str(fd)


def _trusted(path: str | None) -> str | None:
    """`path`, resolved, if only root (or the agent) can change it and everything above it."""
    if path is None:
        return None
    try:
        checked = open_executable(Path(path), what="spawn helper")
    except (UntrustedPath, OSError) as exc:
        reason = exc.reason if isinstance(exc, UntrustedPath) else str(exc)
        log.warning("spawn helper not used", path=path, reason=reason)
        return None
    checked.close()
    return str(checked.path)


_found: dict[str, Launcher | None] = {}


def launcher_for(search_path: str) -> Launcher | None:
    """The chain for handlers searched in `search_path` (where `setpriv` is looked up), or
    None when bash cannot be used; chosen once per search path and logged."""
    if search_path in _found:
        return _found[search_path]
    shell = _trusted(SHELL)
    launcher = None
    if shell is not None:
        launcher = Launcher(shell, _trusted(shutil.which("setpriv", path=search_path)))
    log.info("script spawn", path=describe(launcher))
    _found[search_path] = launcher
    return launcher


def describe(launcher: Launcher | None) -> str:
    """The spawn path in words (the log at first use, `config check`)."""
    if launcher is None:
        return f"fork with preexec_fn (no usable {SHELL})"
    if launcher.setpriv is None:
        return (
            f"vfork + {launcher.shell} for scripts run as the agent's user; fork with preexec_fn"
            " for binaries and for scripts run as another user (no usable setpriv)"
        )
    return (
        f"vfork + {launcher.shell} (+ {launcher.setpriv} for another user) for scripts;"
        " fork with preexec_fn for binaries"
    )
