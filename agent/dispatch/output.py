"""Handler output: a bounded tail for statusDetails and a size-capped log file per job.

A handler may print without limit; the agent must never block it, kill it, or run out of memory
for that. Only the last few kilobytes are kept in memory (the service accepts 1024 characters per
statusDetails value) and the full output goes to a log file whose head is kept up to a cap, so an
operator can still read how a long job started and see that the rest was cut.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from jobs_agent.securefs import keep_emptied, take_spare

STATUS_VALUE_MAX = 1024
"""The service's limit on one statusDetails value (characters)."""

_TAIL_BYTES = 8 * STATUS_VALUE_MAX


def single_line(text: str, limit: int = STATUS_VALUE_MAX) -> str:
    """Make output acceptable as a statusDetails value: one line, no control characters.

    The Device Client sends its tails with the trailing newline, which the API's value pattern
    forbids; here line breaks become a literal `\\n`, tabs a space, other control and unassigned
    characters are dropped, and the last `limit` characters are kept (the end of the output is
    where the error usually is).
    """
    text = text.strip().replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n")
    text = text.replace("\t", " ")
    if not text.isprintable():  # no character of category C is printable (`str.isprintable`)
        from unicodedata import category  # only for such text, not at start (issue 18)

        text = "".join(ch for ch in text if category(ch)[0] != "C")
    return text[-limit:] if len(text) > limit else text


class Tail:
    """The last bytes of a stream, decoded only when asked for."""

    def __init__(self, max_bytes: int = _TAIL_BYTES) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self.total_bytes = 0
        self.lines = 0
        self._last_byte: int | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.total_bytes += len(data)
        self.lines += data.count(b"\n")
        self._last_byte = data[-1]
        self._buffer += data[-self._max :]
        if len(self._buffer) > self._max:
            del self._buffer[: len(self._buffer) - self._max]

    def finish_lines(self) -> int:
        """Lines of output, counting a last line without a newline."""
        partial = 1 if self._last_byte is not None and self._last_byte != ord("\n") else 0
        return self.lines + partial

    def text(self) -> str:
        return self._buffer.decode("utf-8", errors="replace")

    def status_value(self) -> str:
        return single_line(self.text())


DOCUMENT_FILE = "document.json"
"""A script step's copy of the job document, in the execution's scratch directory
(`scripts.StepFiles`, `JOBS_AGENT_DOCUMENT`): named here, beside the job's other files, so that
the engine's cleanup knows it without loading the script protocol."""
CHECKPOINT_FILE = "checkpoint.json"
"""A re-run step's last checkpoint, beside `DOCUMENT_FILE` (`JOBS_AGENT_CHECKPOINT`)."""
RECYCLED_LOG = ".recycled-log"
"""`state_dir/jobs/.recycled-log`: the last log pruned (`OutputLogIndex.prune`), emptied, for
the next job's log (`OutputLog`); beside the other recycled files, out of the logs' listing."""


def recycled_log_path(logs_dir: str | Path) -> str:
    return os.path.join(os.path.dirname(logs_dir), "jobs", RECYCLED_LOG)


class OutputLog:
    """Appends a job's output to `<state_dir>/logs/<jobId>-<executionNumber>.log` up to a cap.

    The file is opened in append mode and its existing size counts toward the cap, so a job that
    continues after a reboot adds to the same log without exceeding it. Written through its
    descriptor: a buffered file object asked the kernel for a terminal (`ioctl`) and the
    position three times (`lseek`) at every open, beside an `fchmod` of a log already private,
    five system calls of a script job's dozen on the log (issue 18). With `O_APPEND` every
    `write` goes to the end, and what the handler printed is in the file as soon as it is read.
    """

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = os.fspath(path)
        """As text: a step's log is named by `log_file`, no `Path` made per job (issue 18)."""
        self.max_bytes = max_bytes
        self.truncated = False
        # Output may hold secrets a handler printed: readable by the agent's user only.
        path = self.path
        if _spare_log_of(path) == _no_spare_log:
            # No pruned log kept (`_no_spare_log`): made exclusively, an existing one opened
            # as before, without a look at it first (an `lstat`) nor a rename that fails.
            fd, fresh = _open_log(path, True)
        else:
            fresh = not os.path.lexists(path)
            taken = _take_recycled_log(path) if fresh else None
            fd, fresh = _open_log(path, fresh) if taken is None else (taken, fresh)
        self._written = 0
        if not fresh:  # a continuing execution's log: its size counts, its mode is checked
            try:
                info = os.fstat(fd)
                if info.st_mode & 0o077:
                    os.fchmod(fd, 0o600)  # a log an older version created world-readable
            except BaseException:
                os.close(fd)
                raise
            self._written = info.st_size
        # A new log (made here exclusively, or the pruned one taken: private and emptied, as
        # `take_spare` checked by descriptor) is empty and mode 0600: no `fstat` to ask it
        # (an `os.stat_result` is about 5 k instructions, issue 18).
        self._fd = fd

    def write(self, data: bytes) -> None:
        if self._fd < 0 or self.truncated or not data:
            return
        room = self.max_bytes - self._written
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
        self._append(data)
        self._written += len(data)
        if self.truncated:
            note = (
                f"\n[jobs-agent: output truncated: the log is capped at {self.max_bytes} bytes]\n"
            )
            self._append(note.encode())

    def note(self, text: str) -> None:
        """A line from the agent itself (step headers, how a step ended); never capped away."""
        if self._fd >= 0:
            self._append(f"[jobs-agent] {text}\n".encode(errors="replace"))

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_log(path: str, fresh: bool) -> tuple[int, bool]:
    """The log's descriptor, and whether this open made it: where there was none (`fresh`)
    it is made exclusively, so that it is known to be new; one made since the look is opened
    as any existing log (a symlink still refused: `O_NOFOLLOW`)."""
    flags = _LOG_FLAGS | (os.O_EXCL if fresh else 0)
    try:
        try:
            return os.open(path, flags, 0o600), fresh
        except FileNotFoundError:  # the first job's log: the directory is made once
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(path, flags, 0o600), fresh
    except FileExistsError:
        return os.open(path, _LOG_FLAGS, 0o600), False


_recycled_logs: tuple[str, str] = ("", "")
"""The last logs directory and its `recycled_log_path`: the same for every job."""
_no_spare_log = ""
"""A `recycled_log_path` known to hold no pruned log: the last take there found none, and no
prune has kept one since (only `OutputLogIndex.prune` keeps one, and one agent runs per state
directory). Below the count limit, where no log is pruned, every script job's log tried the
take (a rename that fails: an `OSError` made and caught) after an `lstat` of its own name,
about 15 k instructions (issue 18). Wrong only towards a log made anew: a spare someone else
put there stays unused, and the next prune replaces it."""


def _spare_log_of(path: str) -> str:
    """The `recycled_log_path` of the log `path`. Its name is the last logs directory's: three
    `posixpath` calls per script job, six Python calls each, were most of the work here."""
    global _recycled_logs
    logs_dir = directory_of(path)
    if _recycled_logs[0] != logs_dir:
        _recycled_logs = (logs_dir, recycled_log_path(logs_dir))
    return _recycled_logs[1]


def _take_recycled_log(path: str) -> int | None:
    """A new log made of the last one pruned (`RECYCLED_LOG`) if it is kept: at the count
    limit, a log created per job where one was just unlinked cost the inode table search on
    ext4 (issue 18). None (and `_no_spare_log` says so) when there is none: the caller makes
    the log."""
    global _no_spare_log
    spare = _spare_log_of(path)
    fd = take_spare(spare, path, os.O_APPEND)
    if fd is None:
        _no_spare_log = spare
    return fd


def directory_of(path: str) -> str:
    """`os.path.dirname(path)`: one `rpartition` for a name with a `/` before it, none
    doubled (as `log_file` joins them). Anything else goes through `dirname`."""
    head = path.rpartition("/")[0]
    if head and not head.endswith("/"):
        return head
    return os.path.dirname(path)


_logs_dirs: tuple[object, str] = (None, "")
"""The last state directory given to `log_file` (the settings' `Path`) and its `logs`, as
text: joined once, where `os.path.join` was a `posixpath` call per script job."""


def log_file(state_dir: Path, job_id: str, execution_number: int) -> str:
    """`log_path` as text, for the step that writes it: two `Path` joins less per job. The
    job id is a checked name (never a path), so joined with a `/`."""
    global _logs_dirs
    if _logs_dirs[0] is not state_dir:
        _logs_dirs = (state_dir, os.path.join(state_dir, "logs"))
    return f"{_logs_dirs[1]}/{job_id}-{execution_number}.log"


def log_path(state_dir: Path, job_id: str, execution_number: int) -> Path:
    return Path(log_file(state_dir, job_id, execution_number))


def _output_logs(logs_dir: Path) -> list[tuple[float, str, int]]:
    """(mtime, name, size) of the per-job logs, oldest first."""
    logs: list[tuple[float, str, int]] = []
    try:
        with os.scandir(logs_dir) as entries:
            for entry in entries:
                if not entry.name.endswith(".log") or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                logs.append((info.st_mtime, entry.name, info.st_size))
    except FileNotFoundError:
        return []
    logs.sort()
    return logs


def prune_output_logs(
    logs_dir: Path, *, max_count: int, max_total_bytes: int, keep: Iterable[Path] = ()
) -> list[Path]:
    """Delete the oldest per-job logs until at most `max_count` remain and they take at most
    `max_total_bytes`; never those in `keep` (executions still active) nor the newest one.

    A gateway runs jobs for years: without this its disk fills with logs nobody reads.
    Returns the deleted paths.
    """
    kept = {path.name for path in keep}
    logs = _output_logs(logs_dir)
    count = len(logs)
    total = sum(size for _, _, size in logs)
    deleted: list[Path] = []
    for _, name, size in logs[:-1]:  # the newest always stays
        if count <= max_count and total <= max_total_bytes:
            break
        if name in kept:
            continue
        with contextlib.suppress(FileNotFoundError):
            (logs_dir / name).unlink()
            deleted.append(logs_dir / name)
        count -= 1
        total -= size
    return deleted


def _forget_no_spare_log() -> None:
    """A pruned log was kept: the next new log takes it (`_no_spare_log`), wherever it is."""
    global _no_spare_log
    _no_spare_log = ""


class OutputLogIndex:
    """The per-job logs, kept in memory between jobs: after one listing at the first job's end,
    each job's end costs one `stat` of its own log, where `prune_output_logs` lists (and
    `stat`s) every log, up to `jobs.output_logs_max_count` of them, twice per job once the
    directory is full.

    The index is kept oldest first (the listing's order; a completed log is the newest, so it
    goes at the end), so that a prune at the limit, once per job on a gateway that has
    reached it, looks at the oldest logs only, not at all of them (it sorted every log per
    job: issue 18). A log added out of that order (a clock set back) has the index sorted
    again at the next prune, so the order is always the listing's.

    Only the agent adds logs (one agent per state directory: the instance lock). A log removed
    by someone else stays in the index until its turn to be pruned comes (its unlink then
    finds nothing): the index errs towards deleting early, never towards keeping more.
    """

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._logs: dict[str, tuple[float, int]] | None = None
        """name -> (mtime, size), in the order of (mtime, name) when `_ordered`."""
        self._ordered = True
        self._total = 0

    @property
    def loaded(self) -> bool:
        return self._logs is not None

    def load(self) -> None:
        """List the directory (blocking: run it in a worker thread)."""
        self._logs = {name: (mtime, size) for mtime, name, size in _output_logs(self.logs_dir)}
        self._ordered = True
        self._total = sum(size for _mtime, size in self._logs.values())

    def add(self, path: str | Path) -> None:
        """A job's log is complete: take it (again, for a re-run execution) at its size now.
        `path` as the engine joins it, a text: no `Path` built per job (issue 18)."""
        assert self._logs is not None, "load() first"
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return
        name = os.fspath(path).rpartition("/")[2]  # `basename`, without its Python call
        _mtime, old_size = self._logs.pop(name, (0.0, 0))
        if self._logs and self._ordered:
            newest = next(reversed(self._logs))
            self._ordered = (self._logs[newest][0], newest) <= (info.st_mtime, name)
        self._logs[name] = (info.st_mtime, info.st_size)
        self._total += info.st_size - old_size

    def excess(self, *, max_count: int, max_total_bytes: int) -> int:
        """How many logs are over the count (at least 1 when only the total is over), else 0."""
        assert self._logs is not None, "load() first"
        over = len(self._logs) - max_count
        if over <= 0 and self._total > max_total_bytes:
            return 1
        return max(over, 0)

    def prune(
        self, *, max_count: int, max_total_bytes: int, keep: Iterable[Path] = ()
    ) -> list[Path]:
        """`prune_output_logs` on the index: the same rules (oldest first, never a log in
        `keep` nor the newest one); the deleted paths."""
        logs = self._logs
        assert logs is not None, "load() first"
        if not self._ordered:
            self._logs = logs = dict(sorted(logs.items(), key=lambda item: (item[1][0], item[0])))
            self._ordered = True
        kept = {path.name for path in keep}
        newest = next(reversed(logs), None)
        count, total = len(logs), self._total
        doomed: list[tuple[str, int]] = []
        for name, (_mtime, size) in logs.items():  # oldest first, until within the limits
            if name == newest or (count <= max_count and total <= max_total_bytes):
                break
            if name not in kept:
                doomed.append((name, size))
                count -= 1
                total -= size
        deleted: list[Path] = []
        for name, size in doomed:
            path = self.logs_dir / name
            if not deleted and keep_emptied(str(path), recycled_log_path(self.logs_dir)):
                deleted.append(path)  # emptied and kept for the next log (`OutputLog`)
                _forget_no_spare_log()
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    deleted.append(path)
            del logs[name]
            self._total -= size
        return deleted
