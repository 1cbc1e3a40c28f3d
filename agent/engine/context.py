"""The `JobContext` the engine hands to a running handler (see handlers/api.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from jobs_agent.dispatch.cancellation import Cancellation
from jobs_agent.engine.async_store import AsyncStore
from jobs_agent.engine.jobdirs import JOB_DIRECTORY_MODE, spare_document_path, take_recycled
from jobs_agent.engine.progress import ProgressReporter
from jobs_agent.engine.store import Store
from jobs_agent.vocabulary import ExecutionRef
from jobs_agent_handlers.api import JobFailed, Logger, MqttLink

Refresh = Callable[[], Awaitable[dict[str, Any]]]


def _make_directory(path: str) -> None:
    """`Path(path).mkdir(JOB_DIRECTORY_MODE, exist_ok=True)` without pathlib's second look
    when it is made."""
    try:
        os.mkdir(path, JOB_DIRECTORY_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def split(text: str) -> tuple[str, str]:
    """`os.path.split(text)`: one `rpartition` for the texts `JobFiles` joins (a `/` before
    the last name, none doubled before it), where `split` and `dirname` are six Python calls
    each, five times a script job (issue 18). Anything else goes through `os.path.split`."""
    head, _, tail = text.rpartition("/")
    if head and not head.endswith("/"):
        return head, tail
    return os.path.split(text)


class EngineJobContext:
    """The job's directories are made when the handler first asks for them: most plugins
    never do, and two directories made and removed per job were a tenth of a plugin job's cost
    to the agent (issue 18). Each is made once per context, at the first ask: a script step
    reads `scratch_dir` several times, and every `mkdir` of an existing directory was two
    system calls (the refused mkdir and a stat)."""

    def __init__(
        self,
        *,
        key: ExecutionRef,
        thing_name: str,
        document: Mapping[str, Any],
        checkpoint_data: Any,
        resumed: bool,
        rebooted: bool,
        log: Logger,
        scratch_dir: Path | str,
        state_dir: Path | str,
        store: AsyncStore,
        reporter: ProgressReporter,
        mqtt_link: MqttLink | None = None,
        refresh: Refresh | None = None,
        max_refreshes: int = 0,
    ) -> None:
        self.key = key
        self.job_id = key.job_id
        self.execution_number = key.execution_number
        self.thing_name = thing_name
        self.namespace = key.namespace or None
        self.document = document
        self.checkpoint_data = checkpoint_data
        self.resumed = resumed
        self.rebooted = rebooted
        self.cancelled: asyncio.Event = Cancellation()
        self.log = log
        self._scratch_dir = scratch_dir
        self._state_dir = state_dir
        self._made: dict[Path | str, Path] = {}
        """The `Path` handed out for each directory asked for, made at its first ask."""
        self._ready: set[str] = set()
        """The directories made (or taken from a recycled one), as text: the job's directory
        and the two below it are known by name without a `Path` each (issue 18)."""
        self.reboot_requested = False
        self.mqtt_link = mqtt_link
        """The agent's MQTT connection, lent to Python plugins (`SharesMqttLink`)."""
        self._store = store
        self._reporter = reporter
        self._refresh = refresh
        self._refreshes_left = max_refreshes
        self._max_refreshes = max_refreshes

    @property
    def scratch_dir(self) -> Path:
        return self._make(self._scratch_dir)

    @scratch_dir.setter
    def scratch_dir(self, path: Path) -> None:
        self._scratch_dir = path

    @property
    def made_directories(self) -> bool:
        """Whether the handler asked for (and so got) its directories in this run."""
        return bool(self._ready)

    @property
    def spare_document(self) -> str | None:
        """Where the last script step's document file is kept emptied for the next
        (`securefs.keep_emptied`, `scripts.KeepsSpareDocument`)."""
        return spare_document_path(split(os.fspath(self._scratch_dir))[0])

    @property
    def state_dir(self) -> Path:
        return self._make(self._state_dir)

    @state_dir.setter
    def state_dir(self, path: Path) -> None:
        self._state_dir = path

    @property
    def scratch_text(self) -> str:
        """`scratch_dir` as text, made as it is: the script path names the step's files and
        its working directory by text, and a `Path` made only to be turned back to text was
        the largest pathlib cost left on it (issue 18; `scripts.NamesDirectoriesAsText`)."""
        return self._make_text(self._scratch_dir)

    @property
    def state_text(self) -> str:
        """`state_dir` as text, made as it is (`scratch_text`)."""
        return self._make_text(self._state_dir)

    def _make(self, path: Path | str) -> Path:
        """The directory `path` as a `Path`, made at the first ask (`_make_text`); one
        `Path` per directory per context, built only when asked for as one."""
        made = self._made.get(path)
        if made is None:
            made = self._made[path] = Path(self._make_text(path))
        return made

    def _make_text(self, path: Path | str) -> str:
        """The directory `path`, made at the first ask (`JOB_DIRECTORY_MODE`), as text. Its
        parent (the job's directory, which holds both) is made first, once per context, or
        taken from the directory of a job that ended (`jobfiles.recycle`): made as a parent
        of each, as `mkdir(parents=True)` does, the first `mkdir` of a new job failed (no
        parent yet), one refused `mkdir` per script job (issue 18). Names are cut as text:
        the six `Path`s a script job made here for it were its largest pathlib cost."""
        text = os.fspath(path)
        if text not in self._ready:
            parent = split(text)[0]
            if parent not in self._ready:
                self._make_job_directory(parent)
            if text not in self._ready:
                _make_directory(text)
                self._ready.add(text)
        return text

    def _make_job_directory(self, parent: str) -> None:
        scratch_dir, state_dir = os.fspath(self._scratch_dir), os.fspath(self._state_dir)
        scratch_parent, scratch = split(scratch_dir)
        state_parent, state = split(state_dir)
        if (
            scratch  # a name, not a text ending in `/`
            and scratch_parent == parent == state_parent
            and take_recycled(parent, scratch, state)
        ):
            self._ready.update((scratch_dir, state_dir))
        else:
            try:
                _make_directory(parent)
            except FileNotFoundError:  # the namespace's first job (a `Path` once for it)
                Path(parent).parent.mkdir(parents=True, exist_ok=True)
                _make_directory(parent)
        self._ready.add(parent)

    def progress(
        self, percent: float | None = None, message: str | None = None, **details: Any
    ) -> None:
        self._reporter.update(percent, message, details)

    async def checkpoint(self, data: Any) -> None:
        await self._store.call(Store.save_checkpoint, self.key, data)
        self.checkpoint_data = data

    async def refresh_document(self) -> Mapping[str, Any]:
        """The job document delivered again, with fresh presigned URLs (`RefreshesDocument`):
        the engine asks over its own Jobs client, checks it, and counts it against
        `jobs.max_document_refreshes` for this run."""
        if self._refresh is None:
            raise JobFailed("the job document cannot be fetched again here")
        if self._refreshes_left <= 0:
            raise JobFailed(
                f"the job document was fetched again {self._max_refreshes} times for fresh URLs"
                " in this run, the limit (jobs.max_document_refreshes); giving up"
                if self._max_refreshes
                else "the job document may not be fetched again (jobs.max_document_refreshes is 0)"
            )
        self._refreshes_left -= 1
        self.document = await self._refresh()
        return self.document

    def request_reboot(self) -> None:
        self.reboot_requested = True

    def extend_step_timeout(self, minutes: int) -> None:
        self._reporter.extend_step_timeout(minutes)
