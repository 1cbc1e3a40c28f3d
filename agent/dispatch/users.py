"""Which local user a step runs as (`runAsUser`), and what the site allows.

The Device Client runs a step without `runAsUser` as itself and otherwise wraps it in
`sudo -u USER`, for any user of the device, root included. The default here is the same
(`jobs.allowed_users: ["*"]`), so its documents and the AWS managed templates run unchanged;
the agent switches user itself (uid, gid and supplementary groups) instead of using `sudo`.

A site that wants less lists the accounts jobs may run as. The list is one rule for every
step, named or not: a step without `runAsUser` runs as the agent's own user, so that user must
be listed too (with an agent running as root, leaving `root` out means every step has to name
one of the listed users). Python plugins run inside the agent, so they always run as the
agent's user: a `runAsUser` naming anyone else REJECTS the document rather than being ignored.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence

from jobs_agent.datamodel import model
from jobs_agent.dispatch.paths import PLACEHOLDER
from jobs_agent.dispatch.settings import ANY_USER, DispatchSettings
from jobs_agent_handlers.api import JobRejected

MAX_USER_NAME = 256
"""The managed templates' limit on the `runAsUser` parameter."""


@model
class RunAs:
    """The account a process runs as; `switch` is False when it is the agent's own."""

    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]
    switch: bool


_own: dict[tuple[int, int], RunAs] = {}
"""The agent's account by (euid, egid), read once: `getpwuid` opens and parses the user
database, and every plugin job asked for it (issue 18)."""


def own_user() -> RunAs:
    """The agent's own account."""
    uid, gid = os.geteuid(), os.getegid()
    known = _own.get((uid, gid))
    if known is not None:
        return known
    try:
        entry = pwd.getpwuid(uid)
        own = RunAs(entry.pw_name, uid, gid, entry.pw_dir, (), switch=False)
    except KeyError:
        own = RunAs(str(uid), uid, gid, os.environ.get("HOME", "/"), (), switch=False)
    _own[(uid, gid)] = own
    return own


def parse_run_as_user(value: object, where: str = "runAsUser") -> str:
    """The `runAsUser` a document asks for; "" means the agent's own user.

    Absent, null, empty or an unreplaced `${aws:iot:parameter:runAsUser}` placeholder (an
    optional template parameter that was not given) mean the agent's own user. Anything else
    must be a user name: a number, a list or an object is REJECTED, never taken as "absent".
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise JobRejected(
            f"{where}: expected a user name (a string), got {type(value).__name__} {value!r}"
        )
    name = value.strip()
    if PLACEHOLDER.match(name):
        return ""
    if len(name) > MAX_USER_NAME or any(ch < " " or ch == "\x7f" for ch in name):
        raise JobRejected(f"{where}: {value!r} is not a user name")
    return name


def _listed(name: str, allowed: Sequence[str]) -> bool:
    return ANY_USER in allowed or name in allowed


def _shown(allowed: Sequence[str]) -> str:
    return ", ".join(allowed) or "empty"


def _refuse_root_if_deprecated_setting_says_so(uid: int, settings: DispatchSettings) -> None:
    if uid == 0 and settings.allow_root is False:
        raise JobRejected(
            "the step would run as root, which jobs.allow_root: false refuses (a deprecated"
            " setting: list the users jobs may run as in jobs.allowed_users instead)"
        )


def resolve_user(requested: str, settings: DispatchSettings) -> RunAs:
    """Check `requested` ("" = the agent's own user) against the site; `JobRejected` says why."""
    own = own_user()
    if not requested:
        _refuse_root_if_deprecated_setting_says_so(own.uid, settings)
        if not _listed(own.name, settings.allowed_users):
            raise JobRejected(
                f"no runAsUser given, so the step would run as the agent's user {own.name!r},"
                f" which is not in jobs.allowed_users ({_shown(settings.allowed_users)}):"
                " name one of those users in runAsUser"
            )
        return own
    try:
        entry = pwd.getpwnam(requested)
    except (KeyError, ValueError):  # ValueError: a NUL or unencodable character in the name
        raise JobRejected(f"runAsUser {requested!r}: no such user on this device") from None
    if not _listed(entry.pw_name, settings.allowed_users):
        allowed = _shown(settings.allowed_users)
        raise JobRejected(f"runAsUser {requested!r} is not in jobs.allowed_users ({allowed})")
    _refuse_root_if_deprecated_setting_says_so(entry.pw_uid, settings)
    if entry.pw_uid == own.uid:
        return RunAs(entry.pw_name, own.uid, own.gid, entry.pw_dir, (), switch=False)
    if own.uid != 0:
        raise JobRejected(
            f"runAsUser {requested!r}: the agent runs as {own.name!r}, not root, and cannot"
            " switch to another user"
        )
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, groups, switch=True)


def check_plugin_user(handler_name: str, value: object, settings: DispatchSettings) -> RunAs:
    """A Python plugin runs inside the agent: it may only be asked to run as the agent's user."""
    requested = parse_run_as_user(value)
    user = resolve_user(requested, settings)
    if user.switch:
        raise JobRejected(
            f"runAsUser {requested!r}: {handler_name!r} is a Python plugin, which runs inside"
            f" the agent as {own_user().name!r} and cannot run as another user"
        )
    return user
