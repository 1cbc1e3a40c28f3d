"""Why a script cannot be executed although it exists: its `#!` line.

The kernel answers ENOENT ("No such file or directory") both for a missing file and for a
script whose interpreter is missing, and a file saved with CRLF line endings names the
interpreter `/bin/sh\\r`, which never exists. Operators then look for the wrong file. This
reads the first line and says what is wrong, before anything runs (so `--dry-run` says it too).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs_agent.securefs import SHEBANG_MAX

_FOUND_MAX = 64
_found: set[tuple[bytes, str]] = set()
"""`#!` lines (with the search path) whose interpreter was found, for `remember`: a
document's check looked for `/bin/sh` again at every script job (a `stat`, an `access` and a
dozen Python calls, about 19 k instructions; for `/usr/bin/env NAME`, a search of the whole
PATH too: issue 18)."""


def interpreter_problem(
    path: str | Path, search_path: str, head: bytes | None = None, *, remember: bool = False
) -> str | None:
    """What keeps `path` from being executed through its `#!` line, or None if nothing does.
    `head`: its first `SHEBANG_MAX` bytes when the caller has them (the sandbox read them
    through the descriptor it checked), else they are read here.

    `remember` (the document's check, `devicec.prepare`): a line whose interpreter was found
    once is not looked for again. One that has gone since is then found missing at the start
    of the step, named with the same words (`process.Sandbox`, which looks without
    `remember`), as one gone between the document's check and its step always was: the step
    fails to start instead of the job being REJECTED. A problem is never remembered."""
    if head is None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(SHEBANG_MAX)
        except OSError:
            return None  # the caller reports unreadable files in its own words
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0]
    if remember and (line, search_path) in _found:
        return None
    if line.endswith(b"\r"):
        return (
            f"the first line of {path} ends with a carriage return (the file has CRLF line"
            " endings, e.g. it was edited on Windows): convert it with `dos2unix` or"
            " `sed -i 's/\\r$//'`"
        )
    words = line.decode("utf-8", errors="replace").split()
    if not words:
        return f"{path} starts with '#!' but names no interpreter"
    interpreter = words[0]
    if not _executable(interpreter):
        return f"interpreter {interpreter} not found (named by the first line of {path})"
    if os.path.basename(interpreter) == "env" and len(words) > 1 and not words[1].startswith("-"):
        program = words[1]
        if "/" not in program and shutil.which(program, path=search_path) is None:
            return (
                f"interpreter {program} not found in PATH ({search_path}), named by the first"
                f" line of {path} through {interpreter}"
            )
    if remember:
        if len(_found) >= _FOUND_MAX:  # a bound on what job documents can make it hold
            _found.clear()
        _found.add((line, search_path))
    return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
