"""Who is on the other end of a Unix socket, as the kernel says, and whether they may answer.

`SO_PEERCRED` gives the peer's pid, uid and gid as they were when it connected; `SO_PEERGROUPS`
(Linux 4.13) its supplementary groups at that moment. Neither can be forged by the client, and
neither changes if the client process later changes its ids. Where the kernel has no
`SO_PEERGROUPS`, the supplementary groups come from the user database (`getgrouplist`):
membership as configured, not as the process holds it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import field

from jobs_agent.datamodel import model

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
"""Linux's option number (include/uapi/asm-generic/socket.h); Python 3.11 does not name it."""
_CRED = struct.Struct("3i")


@model(slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)

    @property
    def user_name(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"

    def describe(self) -> str:
        return f"user {self.user_name} (uid {self.uid}, pid {self.pid})"


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid, uid, gid, frozenset(_peer_groups(sock, uid, gid)))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> set[int]:
    try:
        # 1024 bytes is the most Python's getsockopt takes: 256 groups; ERANGE beyond that
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:  # ERANGE, or ENOPROTOOPT on a kernel without it
        raw = None
    if raw is not None:
        count = len(raw) // 4
        return {gid, *struct.unpack(f"{count}I", raw[: 4 * count])}
    with contextlib.suppress(KeyError):
        return {gid, *os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)}
    return {gid}


@model(slots=True)
class Allowlist:
    """Who may answer consent requests: root and the agent's own user always, then the users
    and groups named in `consent.allowed_users` / `consent.allowed_groups`. Names are looked
    up when a peer connects, so an account created later is honoured and a deleted one is not;
    a name that does not exist allows nobody."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def allows(self, peer: Peer) -> bool:
        if peer.uid in (0, os.geteuid()):
            return True
        if peer.uid in _uids(self.users):
            return True
        return bool(peer.groups & _gids(self.groups))

    def describe(self) -> str:
        users = ", ".join(("root", *self.users))
        groups = ", ".join(self.groups) or "none"
        return f"users {users}; groups {groups}"


def _uids(names: Iterable[str]) -> set[int]:
    found = set()
    for name in names:
        with contextlib.suppress(KeyError):
            found.add(pwd.getpwnam(name).pw_uid)
    return found


def _gids(names: Iterable[str]) -> set[int]:
    found = set()
    for name in names:
        with contextlib.suppress(KeyError):
            found.add(grp.getgrnam(name).gr_gid)
    return found
