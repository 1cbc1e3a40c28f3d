"""sd_notify spoken to a real datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from pathlib import Path

from jobs_agent.sdnotify import SystemdNotifier


def test_messages_reach_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled
    assert notifier.watchdog_seconds == 30.0
    assert notifier.ready(status="connected")
    assert server.recv(4096) == b"READY=1\nSTATUS=connected"
    notifier.watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    notifier.status("running job-1\n50%")
    assert server.recv(4096) == b"STATUS=running job-1 50%"
    notifier.stopping()
    assert server.recv(4096) == b"STOPPING=1"
    notifier.close()
    server.close()


def test_abstract_socket_address() -> None:
    name = f"jobs-agent-test-{id(object())}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
    assert notifier.reloading()
    assert server.recv(4096) == b"RELOADING=1"
    server.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert notifier.ready() is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_seconds is None


def test_a_socket_nobody_reads_never_blocks_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    results = [notifier.status(f"message {i}") for i in range(500)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled up: dropped, not blocked
    server.close()
