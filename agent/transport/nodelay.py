"""TCP_NODELAY on sockets a library owns and offers no option for (the CRT's: see "TCP_NODELAY"
in `jobs_agent.transport.awscrt`), found through /proc on Linux."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _tcp_inodes_to(ports: set[int]) -> set[str]:
    """Socket inodes of established TCP connections (any process) to one of `ports`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "01":  # 01: ESTABLISHED
                continue
            if int(fields[2].rsplit(":", 1)[1], 16) in ports:
                inodes.add(fields[9])
    return inodes


def set_nodelay_on_process_sockets(ports: set[int]) -> int:
    """Set TCP_NODELAY on this process's connected sockets to `ports`; returns how many.

    Best effort for libraries that own their sockets and offer no option (the CRT). Setting
    the option on a socket of another client in this process talking to the same port is
    harmless; the descriptors are borrowed and detached, never closed.
    """
    inodes = _tcp_inodes_to(ports)
    if not inodes:
        return 0
    done = 0
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in descriptors:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:[") or target[8:-1] not in inodes:
            continue
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done += 1
        except OSError:
            pass
        finally:
            sock.detach()
    return done
