"""Find and stop the handler processes a killed agent left behind.

A handler runs in its own session (process group), so when the agent dies by SIGKILL or a crash
outside systemd (which would kill the whole cgroup), the handler keeps running. Before the
restarted agent reports that step FAILED, or runs a resumable handler again, the old processes
must be gone: otherwise a step would run twice at the same time. They are recognised by the
environment every handler gets (thing name, job id and execution number), read from /proc.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

PROC = Path("/proc")


def _environment(pid: int) -> dict[bytes, bytes] | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def find_handler_processes(thing_name: str, job_id: str, execution_number: int) -> list[int]:
    """Pids of processes started for this execution (by this or an earlier agent)."""
    wanted = {
        b"JOBS_AGENT_THING_NAME": thing_name.encode(),
        b"JOBS_AGENT_JOB_ID": job_id.encode(),
        b"JOBS_AGENT_EXECUTION_NUMBER": str(execution_number).encode(),
    }
    own = os.getpid()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        environment = _environment(int(entry.name))
        if environment and all(environment.get(k) == v for k, v in wanted.items()):
            found.append(int(entry.name))
    return found


def kill_handler_processes(thing_name: str, job_id: str, execution_number: int) -> int:
    """SIGKILL the process groups of this execution's leftover handlers; how many were hit."""
    groups = set()
    for pid in find_handler_processes(thing_name, job_id, execution_number):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    own_group = os.getpgid(0)
    for group in groups - {own_group}:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    return len(groups - {own_group})
