"""An execution's directory, made for its first job and recycled for the next (issue 18).

`state_dir/jobs/<namespace>/<jobId>/` holds the execution's `scratch-<n>` and `state`
(`EngineJobContext` makes them when the handler first asks; `JobFiles.cleanup` ends them once
the outcome is reported). A script job's directory is usually left as it was found: it is then
emptied and renamed to `RECYCLED` for the next job to take, instead of removed and made again
(`recycle`).
"""

from __future__ import annotations

import os
import stat

from jobs_agent.dispatch.output import DOCUMENT_FILE
from jobs_agent.securefs import keep_emptied

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
JOB_DIRECTORY_MODE = 0o700
"""Of the job's directory, its scratch and its state: what a recycled one is checked against."""
RECYCLED = ".recycled"
"""`state_dir/jobs/.recycled`: the directory of a job that ended, emptied, which the next job
takes by `rename` (no namespace or job id starts with a dot)."""
RECYCLED_LAYOUT = ("scratch-1", "state")
"""What a recycled directory holds: its scratch (renamed to the taker's `scratch-<n>`) and
its state, both empty."""
SPARE_DOCUMENT = ".recycled-document"
"""`state_dir/jobs/.recycled-document`: the last script step's `DOCUMENT_FILE`, emptied, for
the next step to write its document into (`scripts.StepFiles`) instead of a new file."""


def recycled_path(base: str) -> str:
    """Where the job directory `base` (`.../jobs/<namespace>/<jobId>`) is recycled to."""
    return _beside_jobs(base, RECYCLED)


def spare_document_path(base: str) -> str:
    """Where the document file of a step of the job directory `base` is kept emptied."""
    return _beside_jobs(base, SPARE_DOCUMENT)


def _beside_jobs(base: str, name: str) -> str:
    """`os.path.join(os.path.dirname(os.path.dirname(base)), name)`: `name` in the `jobs`
    folder above a job directory. `base` as `JobFiles` joins it (single `/`s, none at the
    end, at least three) has its last two names cut off in one call: two `dirname`s and a
    `join` were six Python calls each time, four times a script job (issue 18). Anything
    else goes through `dirname`, as before."""
    if base.count("/") >= 3 and "//" not in base and not base.endswith("/"):
        return f"{base.rsplit('/', 2)[0]}/{name}"
    return os.path.join(os.path.dirname(os.path.dirname(base)), name)


def take_recycled(base: str, scratch: str, state: str) -> bool:
    """Make the job directory `base`, holding empty `scratch` and `state`, from the recycled
    one if there is one: a `rename` where `mkdir` made three inodes (see `recycle`). False
    when there is none (or `base` is already there and not empty: a resumed job's)."""
    if state != RECYCLED_LAYOUT[1]:
        return False
    try:
        os.rename(recycled_path(base), base)
        if scratch != RECYCLED_LAYOUT[0]:
            os.rename(f"{base}/{RECYCLED_LAYOUT[0]}", f"{base}/{scratch}")
    except OSError:
        return False  # what is missing is made (what is left over goes at the job's end)
    return True


def recycle(base: str, scratch: str, state: str) -> None:
    """End the job directory `base`: recycled for the next job when a script left it as it
    found it, else removed.

    Why: ext4 without a journal (as on the machines this is built on) skips, one by one,
    every inode freed in the last minute when it allocates one, reading the inode table for
    each: a script job made and removed four (the job's directory, its scratch and state, the
    step's document), and the faster jobs ran the more each cost (0.7-0.85 ms of CPU per job
    in a loop of 3,000 here, against 0.2 ms renaming the directory back and forth; with a
    journal the search is shorter, the journal's work per inode remains).

    So the directory is emptied and renamed to `RECYCLED` instead, when nothing but the step's
    document is in it and its directories have the owner and mode the agent gave them: the
    next job that takes it gets what a fresh one is (empty, private), with nothing of the
    last job's. Otherwise (a step wrote files, a mode changed, another job's directory is
    recycled already) it is removed, as before. Follows no symlink below `base`."""
    try:
        top = os.open(base, _DIRECTORY)
        try:
            emptied = _emptied(top, scratch, state, spare_document_path(base))
            if emptied and scratch != RECYCLED_LAYOUT[0]:
                os.rename(scratch, RECYCLED_LAYOUT[0], src_dir_fd=top, dst_dir_fd=top)
        finally:
            os.close(top)
        if emptied and state == RECYCLED_LAYOUT[1]:
            os.rename(base, recycled_path(base))  # refused if one is there (not empty)
            return
    except OSError:
        pass
    import shutil  # here, at a job's end: shutil loads lzma and bz2 (issue 18)

    shutil.rmtree(base, True)


def _emptied(top: int, scratch: str, state: str, spare: str) -> bool:
    """Whether the job directory `top` holds only `scratch` (with, at most, the step's
    `DOCUMENT_FILE`, then kept emptied as `spare` or unlinked) and an empty `state`, all
    three the agent's own with `JOB_DIRECTORY_MODE`."""
    if sorted(os.listdir(top)) != sorted((scratch, state)) or not _private(top):
        return False
    inner = os.open(state, _DIRECTORY, dir_fd=top)
    try:
        if os.listdir(inner) or not _private(inner):
            return False
    finally:
        os.close(inner)
    inner = os.open(scratch, _DIRECTORY, dir_fd=top)
    try:
        left = os.listdir(inner)
        if left not in ([], [DOCUMENT_FILE]) or not _private(inner):
            return False
        if left and not keep_emptied(DOCUMENT_FILE, spare, dir_fd=inner):
            os.unlink(DOCUMENT_FILE, dir_fd=inner)
    finally:
        os.close(inner)
    return True


def _private(fd: int) -> bool:
    info = os.fstat(fd)
    return (
        info.st_uid == os.geteuid()
        and info.st_gid == os.getegid()
        and stat.S_IMODE(info.st_mode) == JOB_DIRECTORY_MODE
    )
