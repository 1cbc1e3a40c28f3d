"""Find and stop the handler processes a killed agent left behind, and remove the job
directories it left.

A handler runs in its own session (process group), so when the agent dies by SIGKILL or a crash
outside systemd (which would kill the whole cgroup), the handler keeps running. Before the
restarted agent reports that step FAILED, or runs a resumable handler again, the old processes
must be gone: otherwise a step would run twice at the same time. They are recognised by the
environment every handler gets (thing name, job id and execution number), read from /proc.

An execution's directory (`state_dir/jobs/<namespace>/<jobId>`, `JobFiles`) is removed after
its end is recorded (REPORTED, CANCELLED), in a step of its own: an agent that dies between the
two leaves it, and no later run of the agent looked at it again (the record is finished, the
service never offers the execution again). It kept its files for ever, and the job's `state`
folder, shared by the job's executions, would have been handed to a later execution of the same
job with what the ended one wrote in it. So each start removes the job directories that no
unfinished record owns, before any job runs (`remove_left_job_directories`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.store import Store

log = structlog.get_logger("jobs_agent.engine")

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


def job_directories(state_dir: Path) -> list[tuple[str, str]]:
    """(namespace folder, job id) of every job directory in `state_dir/jobs`; the folders
    whose name starts with a dot are the agent's spares (`jobdirs.RECYCLED`), no job's."""
    jobs = os.path.join(state_dir, "jobs")
    try:
        with os.scandir(jobs) as entries:
            namespaces = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: list[tuple[str, str]] = []
    for namespace in namespaces:
        with os.scandir(os.path.join(jobs, namespace)) as entries:
            found.extend((namespace, e.name) for e in entries if e.is_dir(follow_symlinks=False))
    return found


async def remove_left_job_directories(state_dir: Path, store: AsyncStore) -> list[str]:
    """At start, before any job runs: remove every job directory that no unfinished record
    (taken, running, deferred, awaiting a reboot, or decided and not yet reported) owns; the
    paths removed. Usually there is none to look at: the state database is read only when a
    directory is there (a resumed or deferred job's, or a crash's leftover)."""
    found = job_directories(state_dir)  # on the loop: one or two listings per start
    if not found:
        return []
    records = await store.call(Store.active)
    owners = [record.key for record in records]
    owners += [entry.key for entry in await store.call(Store.outbox)]
    kept = {(ref.namespace or "default", ref.job_id) for ref in owners}
    left = [os.path.join(state_dir, "jobs", *pair) for pair in found if pair not in kept]
    if left:
        await asyncio.to_thread(_remove, left)
        log.info("removed the job directories of ended executions", paths=left)
    return left


def _remove(paths: list[str]) -> None:
    import shutil  # only when there is something to remove: it loads lzma and bz2

    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
