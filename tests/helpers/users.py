"""Throwaway local accounts for the security tests: created with useradd, removed afterwards.

A test that needs an untrusted local user (an attacker, a `runAsUser` account) gets a real one,
so every permission check in the path is the kernel's, not a mock's. Needs root and useradd;
tests skip with that reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to create a throwaway user and switch to it)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd/userdel (package passwd)")


@contextlib.contextmanager
def throwaway_user(prefix: str = "jat") -> Iterator[pwd.struct_passwd]:
    """A new user with its own group and no home directory; deleted at the end."""
    require_root()
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
         "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        entry = pwd.getpwnam(name)
        _kill_processes_of(entry.pw_uid)  # userdel refuses while the account runs anything
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _kill_processes_of(uid: int) -> None:
    """SIGKILL, by pid, what a test left running as its throwaway user (nobody else uses it)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), 9)


def public_dir(prefix: str) -> Path:
    """A root-owned 0755 directory under /tmp that other users can traverse (pytest's own
    tmp_path is private to root). The caller removes it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


SYSTEM_PYTHON = "/usr/bin/python3"
"""An interpreter every account can run (the test venv may live under root's home)."""


def run_as(user: pwd.struct_passwd, code: str, *args: str) -> subprocess.Popen[bytes]:
    """Start `python3 -c code args...` as `user` (uid, gid, no supplementary groups)."""
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-c", code, *args],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
