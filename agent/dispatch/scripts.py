"""The script protocol: how an executable handler talks to the agent (see docs/handlers.md).

Like Mender's update modules, a handler is any executable with a small documented contract:
* argv: `[handler, runAsUser, args...]`, the Device Client's convention (runAsUser may be "");
* environment: `JOBS_AGENT_*` variables naming the job, a JSON file of the document, a per-job
  state directory, and a pipe (`JOBS_AGENT_PROGRESS_FD`) for progress and checkpoints;
* exit status: 0 SUCCEEDED, `EXIT_REJECTED` REJECTED, `EXIT_REBOOT` "done, reboot now",
  anything else FAILED with the code or the signal as the reason.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs_agent.dispatch.users import RunAs
from jobs_agent_handlers.api import JobContext

EXIT_REJECTED = 90
"""Exit status that ends the job REJECTED: the document is wrong for this device."""
EXIT_REBOOT = 91
"""Exit status meaning: this step is done and the device must reboot before the next one."""

_DETAIL_VALUE_TYPES = (str, int, float, bool)


def script_environment(
    ctx: JobContext,
    *,
    document_file: Path,
    step_index: int,
    step_name: str,
    checkpoint_file: Path | None,
) -> dict[str, str]:
    """The `JOBS_AGENT_*` variables of the protocol (the sandbox adds PATH, LANG, HOME)."""
    env = {
        "JOBS_AGENT_JOB_ID": ctx.job_id,
        "JOBS_AGENT_EXECUTION_NUMBER": str(ctx.execution_number),
        "JOBS_AGENT_THING_NAME": ctx.thing_name,
        "JOBS_AGENT_DOCUMENT": str(document_file),
        "JOBS_AGENT_STATE_DIR": str(ctx.state_dir),
        "JOBS_AGENT_RESUMED": "1" if ctx.resumed else "0",
        "JOBS_AGENT_REBOOTED": "1" if ctx.rebooted else "0",
        "JOBS_AGENT_STEP": str(step_index),
        "JOBS_AGENT_STEP_NAME": step_name,
        "JOBS_AGENT_EXIT_REJECTED": str(EXIT_REJECTED),
        "JOBS_AGENT_EXIT_REBOOT": str(EXIT_REBOOT),
        "JOBS_AGENT_PYTHON": sys.executable,
    }
    if ctx.namespace:
        env["JOBS_AGENT_NAMESPACE"] = ctx.namespace
    if checkpoint_file is not None:
        env["JOBS_AGENT_CHECKPOINT"] = str(checkpoint_file)
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


class StepFiles:
    """The document (and checkpoint) files a step reads, readable by the step's user only.

    When the step runs as the agent's user they live in the execution's scratch directory;
    for another user in a private directory owned by that user, because the agent's state
    directory is not theirs to read.
    """

    def __init__(self, ctx: JobContext, user: RunAs) -> None:
        self._user = user
        self._own_dir: Path | None = None
        if user.switch:
            self._own_dir = Path(tempfile.mkdtemp(prefix="jobs-agent-step-"))
            os.chown(self._own_dir, user.uid, user.gid)
            self.directory = self._own_dir
        else:
            ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
            self.directory = ctx.scratch_dir

    def write_json(self, name: str, data: Any) -> Path:
        path = self.directory / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False)
        if self._user.switch:
            os.chown(path, self._user.uid, self._user.gid)
        return path

    def close(self) -> None:
        if self._own_dir is not None:
            for child in self._own_dir.iterdir():
                child.unlink()
            self._own_dir.rmdir()
            self._own_dir = None


PROGRESS_KEYS = ("percent", "message", "details", "checkpoint")


def message_handler(
    ctx: JobContext,
    on_checkpoint: Callable[[Any], Awaitable[None]],
    *,
    span: tuple[float, float] = (0.0, 100.0),
    warn: Callable[[str], None] | None = None,
) -> Callable[[Any], Awaitable[None]]:
    """Turn progress-pipe messages into `ctx.progress` and checkpoints.

    A line is a JSON object with any of `percent` (0 to 100), `message` (string), `details`
    (an object of scalar values) and `checkpoint` (any JSON value, saved durably before the
    next line is read). A step's percent is scaled into `span` (start, width) of the job's.
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
        for key in message:
            if key not in PROGRESS_KEYS:
                hint = difflib.get_close_matches(str(key), PROGRESS_KEYS, n=1)
                problem(
                    f"unknown progress key {key!r}"
                    + (f' (did you mean "{hint[0]}"?)' if hint else "")
                    + f"; expected {', '.join(PROGRESS_KEYS)}"
                )
        if "checkpoint" in message:
            await on_checkpoint(message["checkpoint"])
        percent = message.get("percent")
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not math.isfinite(percent)
        ):
            if percent is not None:
                problem(f"progress percent {percent!r} is not a number from 0 to 100")
            percent = None
        else:
            percent = span[0] + span[1] * min(100.0, max(0.0, float(percent))) / 100.0
        text = message.get("message")
        if text is not None and not isinstance(text, str):
            problem(f"progress message {text!r} is not a string")
        text = text if isinstance(text, str) else None
        raw_details = message.get("details")
        details: dict[str, Any] = {}
        if isinstance(raw_details, Mapping):
            details = {
                str(key): value
                for key, value in raw_details.items()
                if isinstance(value, _DETAIL_VALUE_TYPES)
            }
            if len(details) != len(raw_details):
                problem("progress details must be an object of strings, numbers or booleans")
        elif raw_details is not None:
            problem("progress details must be an object of strings, numbers or booleans")
        if percent is not None or text is not None or details:
            ctx.progress(percent, text, **details)

    return handle
