"""Which local user a step runs as (`runAsUser`), and what the agent allows.

The Device Client runs a step without `runAsUser` as itself and otherwise wraps it in `sudo`.
Here the agent switches user itself (uid, gid and supplementary groups), and only to users the
operator listed: a job document must not be able to pick an arbitrary account, and `root` needs
an explicit `allow_root`.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from jobs_agent.config import JobsConfig
from jobs_agent.dispatch.paths import PLACEHOLDER
from jobs_agent_handlers.api import JobRejected


@dataclass(frozen=True)
class RunAs:
    """The account a process runs as; `switch` is False when it is the agent's own."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]
    switch: bool


def _own() -> RunAs:
    uid = os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
        return RunAs(entry.pw_name, uid, os.getegid(), entry.pw_dir, (), switch=False)
    except KeyError:
        return RunAs(str(uid), uid, os.getegid(), os.environ.get("HOME", "/"), (), switch=False)


def normalize_user(value: object) -> str:
    """An empty, missing or unreplaced-placeholder `runAsUser` means: the agent's own user."""
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return "" if PLACEHOLDER.match(value) else value


def resolve_user(requested: str, jobs: JobsConfig) -> RunAs:
    """Check `requested` against the configuration; raise `JobRejected` with the reason."""
    own = _own()
    if not requested:
        return own
    try:
        entry = pwd.getpwnam(requested)
    except (KeyError, ValueError):  # ValueError: a NUL or unencodable character in the name
        raise JobRejected(f"runAsUser {requested!r}: no such user on this device") from None
    if entry.pw_uid == 0 and not jobs.allow_root:
        raise JobRejected(
            f"runAsUser {requested!r}: running as root is not allowed (jobs.allow_root is false)"
        )
    if entry.pw_uid == own.uid:
        return RunAs(entry.pw_name, own.uid, own.gid, entry.pw_dir, (), switch=False)
    if own.uid != 0:
        raise JobRejected(
            f"runAsUser {requested!r}: the agent runs as {own.name!r}, not root, and cannot"
            " switch to another user"
        )
    if entry.pw_uid != 0 and requested not in jobs.allowed_users:
        raise JobRejected(
            f"runAsUser {requested!r} is not in jobs.allowed_users"
            f" ({', '.join(jobs.allowed_users) or 'empty'})"
        )
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups, switch=True)
