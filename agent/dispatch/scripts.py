"""The script protocol: how an executable handler talks to the agent (see docs/handlers.md).

Like Mender's update modules, a handler is any executable with a small documented contract:
* argv: `[handler, runAsUser, args...]`, the Device Client's convention (runAsUser may be "");
* environment: `JOBS_AGENT_*` variables naming the job, a JSON file of the document, a per-job
  state directory, and a pipe (`JOBS_AGENT_PROGRESS_FD`) for progress and checkpoints;
* exit status: 0 SUCCEEDED, `EXIT_REJECTED` REJECTED, `EXIT_REBOOT` "done, reboot now",
  `EXIT_DEFER` "not now" (when: a `defer` line on the progress pipe), anything else FAILED with
  the code or the signal as the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobs_agent import jsontext
from jobs_agent.dispatch.output import DOCUMENT_FILE
from jobs_agent.dispatch.users import RunAs
from jobs_agent.securefs import take_spare
from jobs_agent_handlers.api import JobContext, JobDeferred

log = structlog.get_logger("jobs_agent.dispatch.scripts")

EXIT_REJECTED = 90
"""Exit status that ends the job REJECTED: the document is wrong for this device."""
EXIT_REBOOT = 91
"""Exit status meaning: this step is done and the device must reboot before the next one."""
EXIT_DEFER = 92
"""Exit status meaning: not now; the step runs again later (when: the step's `defer` line).
At 90 and up, beside the other codes of the protocol, so that it cannot collide with a script's
own small failure codes (Mender's state scripts use 21, upparat's hooks 3)."""

_DETAIL_VALUE_TYPES = (str, int, float, bool)

_FILE_TEXT = jsontext.encoder((", ", ": "), ensure_ascii=False)
"""`json.dumps(value, ensure_ascii=False)`, its C encoder built once (`jsontext`): a step's
files are written per script job, and `json.dumps` with any argument but its defaults builds a
`JSONEncoder` and its C encoder at every call, about 17 k instructions (issue 18). What a step
file holds is acyclic, as `jsontext` asks: the job's document as decoded, and a checkpoint a
step sent as a JSON line (or the store kept as JSON)."""


def script_environment(
    ctx: JobContext,
    *,
    document_file: str | Path,
    step_index: int,
    step_name: str,
    checkpoint_file: str | Path | None,
) -> dict[str, str]:
    """The `JOBS_AGENT_*` variables of the protocol (the sandbox adds PATH, LANG, HOME)."""
    env = {
        "JOBS_AGENT_JOB_ID": ctx.job_id,
        "JOBS_AGENT_EXECUTION_NUMBER": str(ctx.execution_number),
        "JOBS_AGENT_THING_NAME": ctx.thing_name,
        "JOBS_AGENT_DOCUMENT": os.fspath(document_file),
        "JOBS_AGENT_STATE_DIR": state_text(ctx),
        "JOBS_AGENT_RESUMED": "1" if ctx.resumed else "0",
        "JOBS_AGENT_REBOOTED": "1" if ctx.rebooted else "0",
        "JOBS_AGENT_STEP": str(step_index),
        "JOBS_AGENT_STEP_NAME": step_name,
        "JOBS_AGENT_EXIT_REJECTED": str(EXIT_REJECTED),
        "JOBS_AGENT_EXIT_REBOOT": str(EXIT_REBOOT),
        "JOBS_AGENT_EXIT_DEFER": str(EXIT_DEFER),
        "JOBS_AGENT_PYTHON": sys.executable,
    }
    if ctx.namespace:
        env["JOBS_AGENT_NAMESPACE"] = ctx.namespace
    if checkpoint_file is not None:
        env["JOBS_AGENT_CHECKPOINT"] = os.fspath(checkpoint_file)
    return env


def site_environment(entries: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """`jobs.handler_environment` resolved: `NAME=value` as given, `NAME` from the agent's own
    environment when it is set there (a proxy or time zone set in the unit's `Environment=`)."""
    result: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if sep:
            result[name] = value
        elif name in environ:
            result[name] = environ[name]
    return result


class NamesDirectoriesAsText(Protocol):
    """A context that gives its directories as text too (the engine's), made as
    `scratch_dir` and `state_dir` make them: the step's files, its working directory and its
    environment take them as text, and a `Path` made per job only to be turned back to text
    was the largest pathlib cost left on the script path (issue 18)."""

    scratch_text: str
    state_text: str


def scratch_text(ctx: JobContext) -> str:
    """`ctx.scratch_dir` as text (`NamesDirectoriesAsText`): asked by `getattr`, not by an
    `isinstance` of the runtime-checkable protocol, which costs more than the `Path` saved."""
    text: str | None = getattr(ctx, "scratch_text", None)
    return os.fspath(ctx.scratch_dir) if text is None else text


def state_text(ctx: JobContext) -> str:
    """`ctx.state_dir` as text (`scratch_text`)."""
    text: str | None = getattr(ctx, "state_text", None)
    return str(ctx.state_dir) if text is None else text


class KeepsSpareDocument(Protocol):
    """A context whose job directories keep the last step's `DOCUMENT_FILE`, emptied, at
    `spare_document` (the engine's: `jobdirs.SPARE_DOCUMENT`), for the next step to write its
    own into: on ext4, a file created and unlinked per job costs the agent more CPU than the
    rest of the step's files together (issue 18)."""

    spare_document: str | None


class StepFiles:
    """The document (and checkpoint) files a step reads, readable by the step's user only.

    When the step runs as the agent's user they live in the execution's scratch directory.
    For another user they live in a private directory the agent gives to that user,
    `<tmp>/jobs-agent-step-XXXX/step/`: the outer directory stays root's (mode 0711, so the
    user can neither rename nor replace `step`), `step` is created by root, the files are
    created in it by descriptor (`O_EXCL | O_NOFOLLOW`) and given to the user by descriptor,
    and only then is `step` itself handed over. Nothing is ever changed by a name the user
    controls, so a symlink planted by the user can never make root write or chown another
    file. The step may use `step` as its scratch space (subdirectories included); the whole
    tree goes when the step ends.
    """

    def __init__(self, ctx: JobContext, user: RunAs) -> None:
        self._user = user
        self._private: str | None = None
        self._spare: str | None = None
        if user.switch:
            self._private = tempfile.mkdtemp(prefix="jobs-agent-step-")
            outer = os.open(self._private, _DIR_OPEN)
            try:
                os.fchmod(outer, 0o711)
                os.mkdir("step", 0o700, dir_fd=outer)
                self._dir_fd = os.open("step", _DIR_OPEN, dir_fd=outer)
            finally:
                os.close(outer)
            self.directory = os.path.join(self._private, "step")
        else:
            # As text: the files' names are joined to it per step, where a `Path` join was
            # a `Path` made per script job (issue 18); asked as text where the context can
            # (`NamesDirectoriesAsText`).
            self.directory = scratch_text(ctx)
            # Not `isinstance` of the runtime-checkable protocol: that costs more than the
            # rename it saves (0.1 ms per step here).
            self._spare = getattr(ctx, "spare_document", None)
            try:
                self._dir_fd = os.open(self.directory, _DIR_OPEN)
            except FileNotFoundError:  # an earlier step removed it
                os.makedirs(self.directory, exist_ok=True)
                self._dir_fd = os.open(self.directory, _DIR_OPEN)

    def write_json(self, name: str, data: Any) -> Path:
        """`write`, its file's name as a `Path`."""
        return Path(self.write(name, data))

    def write(self, name: str, data: Any) -> str:
        """Write `name` afresh: created exclusively (whatever was there, a symlink included,
        is unlinked first, never followed), given to the step's user, then written in one
        go (`_FILE_TEXT`, the C encoder built once; `json.dump` to a file encodes piece by
        piece in Python). The document goes into the file the last step left emptied, if there
        is one and it is the agent's own private file with no other name (`KeepsSpareDocument`,
        `securefs.take_spare`): else it is unlinked and created as any other. Its name, as
        text (the step's environment takes it as text)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = None
        if self._spare is not None and name == DOCUMENT_FILE:
            fd = take_spare(self._spare, name, os.O_WRONLY, dir_fd=self._dir_fd)
        if fd is None:
            try:
                fd = os.open(name, flags, 0o600, dir_fd=self._dir_fd)
            except FileExistsError:  # a step run again (after a reboot or a deferral)
                os.unlink(name, dir_fd=self._dir_fd)
                fd = os.open(name, flags, 0o600, dir_fd=self._dir_fd)
        try:
            if self._user.switch:
                os.fchown(fd, self._user.uid, self._user.gid)
            data_bytes = _FILE_TEXT(data).encode()
            written = 0
            while written < len(data_bytes):
                written += os.write(fd, data_bytes[written:])
        finally:
            os.close(fd)
        return f"{self.directory}/{name}"

    def hand_over(self) -> None:
        """Give the step's directory to its user, once every file in it is written."""
        if self._user.switch:
            os.fchown(self._dir_fd, self._user.uid, self._user.gid)

    def close(self) -> None:
        """Remove the private tree. `step` is first taken back (root's, mode 0700), so that no
        process of the user can add to it by name while it is being removed; rmtree works by
        descriptor and never follows a symlink the step left behind."""
        if self._dir_fd >= 0:
            if self._private is not None:
                with contextlib.suppress(OSError):
                    os.fchown(self._dir_fd, os.geteuid(), os.getegid())
                    os.fchmod(self._dir_fd, 0o700)
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._private is not None:
            _remove_tree(self._private)
            self._private = None


_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_tree(path: str) -> None:
    """Remove a step's private tree; whatever cannot be removed is logged, never raised (the
    step's outcome does not depend on it)."""
    problems: list[str] = []

    def note(_function: Any, failed: str, info: Any) -> None:
        problems.append(f"{failed}: {info[1]}")

    shutil.rmtree(path, onerror=note)
    if problems:
        log.warning("cannot remove a step's private directory", path=str(path), errors=problems)


PROGRESS_KEYS = ("percent", "message", "details", "checkpoint", "defer", "refreshUrls")
DEFER_KEYS = ("until", "after", "window", "reason")


def message_handler(
    ctx: JobContext,
    on_checkpoint: Callable[[Any], Awaitable[None]],
    *,
    span: tuple[float, float] = (0.0, 100.0),
    warn: Callable[[str], None] | None = None,
    on_defer: Callable[[JobDeferred], None] | None = None,
    on_refresh: Callable[[], Awaitable[None]] | None = None,
) -> Callable[[Any], Awaitable[None]]:
    """Turn progress-pipe messages into `ctx.progress` and checkpoints.

    A line is a JSON object with any of `percent` (0 to 100), `message` (string), `details`
    (an object of scalar values), `checkpoint` (any JSON value, saved durably before the
    next line is read) and `defer` (when to run the step again if it exits `EXIT_DEFER`:
    `until`, RFC 3339 or epoch seconds, or `after` seconds, or `window: true`; and `reason`),
    and `refreshUrls: true` (fresh presigned URLs wanted: `on_refresh` answers on the reply
    pipe before the next line is read). A step's percent is scaled into `span` (start, width)
    of the job's.
    What cannot be used is skipped and reported to `warn` (a misspelled `percnt`, a percent
    that is not a number), so a handler author sees why the progress did not move.
    """

    def problem(text: str) -> None:
        if warn is not None:
            warn(text)

    async def handle(message: Any) -> None:
        if not isinstance(message, Mapping):
            problem(f"a progress line is not a JSON object: {json.dumps(message)[:120]}")
            return
        _check_keys(message, problem)
        if "checkpoint" in message:
            await on_checkpoint(message["checkpoint"])
        if "defer" in message and on_defer is not None:
            request = deferral_request(message["defer"], problem)
            if request is not None:
                on_defer(request)
        if "refreshUrls" in message:
            if message["refreshUrls"] is not True:
                problem('"refreshUrls" must be true')
            elif on_refresh is None:
                problem(
                    '"refreshUrls": this step has no presigned URL in its environment to renew'
                    " (and so no reply pipe)"
                )
            else:
                await on_refresh()
        percent = _percent(message.get("percent"), span, problem)
        text = message.get("message")
        if text is not None and not isinstance(text, str):
            problem(f"progress message {text!r} is not a string")
        text = text if isinstance(text, str) else None
        details = _details(message.get("details"), problem)
        if percent is not None or text is not None or details:
            ctx.progress(percent, text, **details)

    return handle


def deferral_request(raw: Any, problem: Callable[[str], None]) -> JobDeferred | None:
    """A step's `defer` line as the `JobDeferred` it stands for; None (and a `problem`) when it
    cannot be used: the exit `EXIT_DEFER` then defers for the default time."""
    if not isinstance(raw, Mapping):
        problem('"defer" must be an object with until, after, window or reason')
        return None
    for key in raw:
        if key not in DEFER_KEYS:
            problem(f"unknown defer key {key!r}; expected {', '.join(DEFER_KEYS)}")
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        problem("defer reason must be a string")
        reason = ""
    until = _instant(raw.get("until"), problem)
    after = raw.get("after")
    if after is not None and (
        isinstance(after, bool) or not isinstance(after, int | float) or not 0 <= after < 1e9
    ):
        problem(f"defer after {after!r} is not a number of seconds")
        after = None
    window = raw.get("window", False) is True
    return JobDeferred(
        reason or "the handler asked to run later", until=until, after=after, window=window
    )


def _instant(raw: Any, problem: Callable[[str], None]) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        return float(raw)
    if isinstance(raw, str):
        try:
            when = dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            if when.tzinfo is not None:
                return when.timestamp()
    problem(f"defer until {raw!r} is not RFC 3339 with a time zone, nor epoch seconds")
    return None


def _check_keys(message: Mapping[str, Any], problem: Callable[[str], None]) -> None:
    for key in message:
        if key not in PROGRESS_KEYS:
            hint = difflib.get_close_matches(str(key), PROGRESS_KEYS, n=1)
            problem(
                f"unknown progress key {key!r}"
                + (f' (did you mean "{hint[0]}"?)' if hint else "")
                + f"; expected {', '.join(PROGRESS_KEYS)}"
            )


def _percent(
    percent: Any, span: tuple[float, float], problem: Callable[[str], None]
) -> float | None:
    """The step's percent scaled into its `span` of the job's; None when there is none."""
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not math.isfinite(percent)
    ):
        if percent is not None:
            problem(f"progress percent {percent!r} is not a number from 0 to 100")
        return None
    return span[0] + span[1] * min(100.0, max(0.0, float(percent))) / 100.0


def _details(raw: Any, problem: Callable[[str], None]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problem("progress details must be an object of strings, numbers or booleans")
        return {}
    details = {
        str(key): value for key, value in raw.items() if isinstance(value, _DETAIL_VALUE_TYPES)
    }
    if len(details) != len(raw):
        problem("progress details must be an object of strings, numbers or booleans")
    return details
