"""Running a Device Client document (or a single executable) step by step, with the Device
Client's semantics (`jobs_agent.dispatch.devicec` has the schema and the preparation of each
step; `process` runs one).
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import field
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.dispatch.containment import group_name
from jobs_agent.dispatch.devicec import (
    CONFIRM_REBOOT,
    REBOOT_STEP,
    RUN_HANDLER,
    Action,
    PreparedStep,
    StepsDocument,
    confirm_reboot_checkpoint,
    hide_url_credentials,
    parse_legacy_document,
    parse_steps_document,
    prepare,
    step_label,
)
from jobs_agent.dispatch.output import (
    CHECKPOINT_FILE,
    DOCUMENT_FILE,
    OutputLog,
    Tail,
    log_file,
)
from jobs_agent.dispatch.pipes import ReplyPipe
from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.process import ProcessResult, ProcessSpec, Sandbox
from jobs_agent.dispatch.scripts import (
    EXIT_DEFER,
    EXIT_REBOOT,
    EXIT_REJECTED,
    StepFiles,
    message_handler,
    script_environment,
)
from jobs_agent.dispatch.settings import DispatchSettings
from jobs_agent.schedule import clock
from jobs_agent.schedule.maintenance import DOCUMENT_KEY
from jobs_agent.schedule.windows import document_windows
from jobs_agent_handlers.api import (
    JobContext,
    JobDeferred,
    JobFailed,
    JobRejected,
    Outcome,
    RefreshesDocument,
)

NO_REFRESH_HERE = "no service to fetch the job document again from here (jobs-agent exec)"


@model(frozen=False)
class _Run:
    """One run of a document: the output of all its steps, its log, the failures it ignored."""

    include_stdout: bool
    log: OutputLog
    stdout: Tail = field(default_factory=Tail)
    stderr: Tail = field(default_factory=Tail)
    ignored: list[str] = field(default_factory=list)
    defer: JobDeferred | None = None
    """The running step's `defer` line: when it wants to run again if it exits `EXIT_DEFER`."""
    refused: str | None = None
    """Why the running step's `refreshUrls` was refused by the agent: the job's outcome, as
    for a plugin whose `refresh_document()` raises (a document changed, the limit reached)."""

    def details(self, reason: str | None = None) -> dict[str, str]:
        result: dict[str, str] = {}
        if reason:
            result["reason"] = reason
        if self.include_stdout and self.stdout.status_value():
            result["stdout"] = self.stdout.status_value()
        if self.stderr.status_value():
            result["stderr"] = self.stderr.status_value()
        if self.ignored:
            result["ignoredFailures"] = ", ".join(self.ignored)[:1024]
        return result


class StepsHandler:
    """Runs a Device Client document (or a single executable) step by step.

    Not resumable: a step interrupted by an agent crash may have half-happened. A reboot that a
    step asks for (exit `EXIT_REBOOT`) is different: the runner checkpoints
    `{"next_step": N}` before asking, and after the boot continues with step N.

    The Device Client's own reboot handler (`reboot.sh`, and any handler listed in
    `jobs.rerun_after_reboot`) works differently: it writes a lock file, calls `reboot` and
    relies on the job being delivered again after the boot, when it finds its lock file and
    exits 0. Here its first run counts as its request for a reboot, whatever it exits with: the
    agent records that the job awaits a reboot (running its own `jobs.reboot_command` unless
    the device is already going down), checks after the boot that the boot id changed, and runs
    the same step again, whose exit status then decides. If the device goes down while the step
    still runs, the boot id it started under (checkpointed first) lets the engine recognise the
    same situation after the boot.
    """

    resumable = False

    def __init__(
        self,
        name: str,
        document: StepsDocument,
        steps: Sequence[PreparedStep],
        *,
        settings: DispatchSettings,
        sandbox: Sandbox,
    ) -> None:
        self.name = name
        self.document = document
        self.steps = tuple(steps)
        self._settings = settings
        self._sandbox = sandbox

    def plan(self) -> list[PlannedStep]:
        return [step.planned() for step in self.steps]

    @staticmethod
    def start_index(ctx: JobContext, total: int) -> tuple[int, Any]:
        """Where to start: 0, or the checkpointed step after a reboot (with its step data)."""
        data = ctx.checkpoint_data
        if ctx.resumed and isinstance(data, Mapping):
            index = data.get("next_step")
            if isinstance(index, int) and not isinstance(index, bool) and 0 <= index <= total:
                return index, data.get("step_data")
        return 0, None

    async def run(self, ctx: JobContext) -> Outcome:
        total = len(self.document.actions)
        start, step_data = self.start_index(ctx, total)
        run = _Run(
            self.document.include_stdout,
            OutputLog(
                log_file(self._settings.state_dir, ctx.job_id, ctx.execution_number),
                self._settings.output_log_max_bytes,
            ),
        )
        try:
            if ctx.rebooted and start > 0:
                run.log.note(f"continuing after the reboot with step {start + 1} of {total}")
            for index in range(start, total):
                first = index == start
                outcome = await self._step(
                    ctx,
                    run,
                    index,
                    step_data if first else None,
                    confirming=first and self._confirming_reboot(ctx),
                    prepared=self.steps[index] if first and index < len(self.steps) else None,
                )
                if outcome is not None:
                    return outcome
            return Outcome.succeeded(**run.details())
        finally:
            run.log.close()

    async def _step(
        self,
        ctx: JobContext,
        run: _Run,
        index: int,
        step_data: Any,
        *,
        confirming: bool,
        prepared: PreparedStep | None = None,
    ) -> Outcome | None:
        """Run step `index`; the job's outcome when this step ends it, None to go on."""
        action = self.document.actions[index]
        total = len(self.document.actions)
        label = step_label(action, index)
        try:
            # The first step to run was prepared by `resolve` a moment ago (the sandbox checks
            # the executable again right before it runs); a later one is prepared when its
            # turn comes, as what it names may have changed while the earlier steps ran.
            step = prepared or prepare(action, self._settings, self._sandbox.search_path)
        except JobRejected as exc:
            return Outcome.rejected(exc.reason, **run.details())
        if not confirming:
            waits = self._window(ctx, index, step, label)
            if isinstance(waits, Outcome):
                return Outcome(waits.status, {**waits.details, **run.details()})
            if waits is not None:
                await ctx.checkpoint({"next_step": index})
                run.log.note(f"{label}: {waits.reason}")
                raise waits
        reboot_step = self._reboots_like_the_device_client(step) and not confirming
        if reboot_step:
            await ctx.checkpoint({"next_step": index, REBOOT_STEP: {"boot_id": self._boot_id()}})
        ctx.progress(100.0 * index / total, f"{label} of {total}")
        run.log.note(f"{label}: {shlex.join(step.argv)} (as {step.user.name})")
        result = await self._run_step(ctx, index, step, run, step_data)
        run.log.note(f"{label} ended: {result.failure() or 'exit code 0'}")
        if result.cancelled:
            return Outcome.failed("cancelled", **run.details())
        if run.refused is not None:
            return Outcome.failed(f"{label}: {run.refused}", **run.details())
        if reboot_step and not result.timed_out and result.spawn_error is None:
            await ctx.checkpoint(confirm_reboot_checkpoint(index))
            ctx.request_reboot()
            run.log.note(
                f"{label} started a reboot ({result.failure() or 'exit code 0'}); as"
                " with the Device Client it runs again after the boot to confirm it"
            )
            return Outcome.succeeded(**run.details())
        return await self._judge(ctx, run, index, action, result)

    async def _judge(
        self, ctx: JobContext, run: _Run, index: int, action: Action, result: ProcessResult
    ) -> Outcome | None:
        """What the step's exit means for the job (the script protocol's codes first)."""
        label = step_label(action, index)
        code = result.exit_code
        if code == EXIT_REBOOT:
            await ctx.checkpoint({"next_step": index + 1})
            ctx.request_reboot()
            run.log.note(f"{label} asked for a reboot; the job continues after it")
            return Outcome.succeeded(**run.details())
        if code == EXIT_DEFER:
            # Not now: the step runs again from its beginning when the time comes.
            await ctx.checkpoint({"next_step": index})
            request = run.defer or JobDeferred(
                f"{label} asked to run later (exit code {EXIT_DEFER})"
            )
            run.log.note(f"{label} deferred the job: {request.reason}")
            raise request
        if code == EXIT_REJECTED:
            return Outcome.rejected(
                f"{label}: the handler rejected the job (exit code {EXIT_REJECTED})",
                **run.details(),
            )
        failure = self._failure(action, result)
        if failure is None:
            return None
        if action.ignore_step_failure:
            run.ignored.append(f"{label}: {failure}")
            return None
        return Outcome.failed(f"{label}: {failure}", **run.details())

    def _window(
        self, ctx: JobContext, index: int, step: PreparedStep, label: str
    ) -> JobDeferred | Outcome | None:
        """The step's maintenance window (the device's, the job's, the step's own, all at once):
        None when the step may start now; when it may not, a deferral to the next opening (one
        long enough for its `timeout` when it names one), or FAILED when none is.

        Where neither the device, the job nor the step has a window (most steps), the step
        may start now: the document is not read for windows again (its reading, checked when
        the job was resolved, `agent_fields`, its `DocumentWindows` and a look at the clock,
        about 18 k instructions per script job; issue 18)."""
        device = self._settings.maintenance_windows
        if device.always_open and not _has_windows(ctx.document, index):
            return None
        timeline = document_windows(ctx.document).for_step(device, index)
        now = clock.now()
        needs = step.action.timeout
        if needs is None:
            if timeline.is_open(now):
                return None
            at = timeline.opens_at(now)
        else:
            if not timeline.outlasts(now, needs):
                return None
            at = timeline.next_fit(now, needs)
        if at is None:
            return Outcome.failed(
                f"{label}: no maintenance window within a year is long enough for it"
                + ("" if needs is None else f" ({needs:g} s)")
            )
        return JobDeferred(f"{label} waits for its maintenance window", until=at, window=True)

    def _reboots_like_the_device_client(self, step: PreparedStep) -> bool:
        return (
            step.action.type == RUN_HANDLER
            and not step.builtin
            and step.action.handler in self._settings.rerun_after_reboot
        )

    @staticmethod
    def _confirming_reboot(ctx: JobContext) -> bool:
        data = ctx.checkpoint_data
        return ctx.rebooted and isinstance(data, Mapping) and data.get(CONFIRM_REBOOT) is True

    def _boot_id(self) -> str:
        try:
            return self._settings.boot_id_path.read_text(encoding="ascii").strip()
        except OSError:
            return ""

    @staticmethod
    def _failure(action: Action, result: ProcessResult) -> str | None:
        failure = result.failure()
        if failure is None and action.allow_stderr is not None:
            lines = result.stderr.finish_lines()
            if lines > action.allow_stderr:
                failure = f"wrote {lines} lines to stderr (allowStdErr is {action.allow_stderr})"
        return failure

    async def _run_step(
        self, ctx: JobContext, index: int, step: PreparedStep, run: _Run, step_data: Any
    ) -> ProcessResult:
        program = step.argv[0]
        if "/" not in program:
            result = ProcessResult(None, step.timeout, Tail(), Tail())
            result.spawn_error = (
                f"command {program!r} not found in PATH ({self._sandbox.search_path})"
            )
            return result
        files = StepFiles(ctx, step.user)
        try:
            env = self._environment(ctx, index, step, files, step_data)
            run.defer = None
            run.refused = None
            replies = ReplyPipe() if step.url_environment else None

            def warn(problem: str) -> None:
                ctx.log.warning(
                    "handler progress ignored",
                    step=index + 1,
                    handler=step.executable,
                    problem=problem,
                )

            spec = ProcessSpec(
                step.argv,
                step.user,
                step.timeout,
                env,
                cwd=None if step.user.switch else files.directory,  # the scratch, as text
                group=group_name(ctx.namespace, ctx.job_id, ctx.execution_number),
            )
            return await self._sandbox.run(
                spec,
                cancelled=ctx.cancelled,
                log=run.log,
                on_message=self._messages(ctx, index, step, run, warn, replies),
                on_bad_line=warn,
                stdout_sinks=[run.stdout],
                stderr_sinks=[run.stderr],
                replies=replies,
            )
        finally:
            files.close()

    def _messages(
        self,
        ctx: JobContext,
        index: int,
        step: PreparedStep,
        run: _Run,
        warn: Callable[[str], None],
        replies: ReplyPipe | None,
    ) -> Callable[[Any], Awaitable[None]]:
        """What the step's progress lines do (`scripts.message_handler`), for step `index`."""

        async def on_checkpoint(data: Any) -> None:
            await ctx.checkpoint({"next_step": index, "step_data": data})

        def on_defer(request: JobDeferred) -> None:
            run.defer = request

        async def on_refresh() -> None:
            assert replies is not None
            await replies.send(await self._refresh_urls(ctx, index, step, run))

        total = len(self.document.actions)
        return message_handler(
            ctx,
            on_checkpoint,
            span=(100.0 * index / total, 100.0 / total),
            warn=warn,
            on_defer=on_defer,
            on_refresh=None if replies is None else on_refresh,
        )

    async def _refresh_urls(
        self, ctx: JobContext, index: int, step: PreparedStep, run: _Run
    ) -> dict[str, Any]:
        """The answer to a step's `{"refreshUrls": true}`: its `JOBS_AGENT_URL_<n>` taken from
        the job document the engine fetched again (`RefreshesDocument`), or why not.

        The step never reaches the service: the context asks, checks the copy (the same job,
        the signature) and counts it against `jobs.max_document_refreshes`. A refusal by the
        context is the job's outcome (`_Run.refused`); where there is no service at all
        (`jobs-agent exec`), the answer says so and the step decides.
        """
        label = step_label(self.document.actions[index], index)
        if not isinstance(ctx, RefreshesDocument):
            return {"refreshed": False, "reason": NO_REFRESH_HERE}
        try:
            document = await ctx.refresh_document()
            urls = self._step_urls(document, index, step)
        except JobFailed as exc:
            run.refused = exc.reason
            run.log.note(f"{label}: fresh URLs refused: {exc.reason}")
            return {"refreshed": False, "reason": exc.reason}
        run.log.note(f"{label}: fresh presigned URLs handed over ({len(urls)})")
        return {"refreshed": True, "environment": urls}

    def _step_urls(
        self, document: Mapping[str, Any], index: int, step: PreparedStep
    ) -> dict[str, str]:
        """Step `index`'s `JOBS_AGENT_URL_<n>` in `document` (a copy of the one it runs), by the
        same argv-to-environment mapping as its start (`devicec.hide_url_credentials`)."""
        try:
            if "steps" in document or "version" in document:
                parsed = parse_steps_document(document)
            else:
                parsed = parse_legacy_document(document, self.name)
        except JobRejected as exc:
            raise JobFailed(f"the job document fetched again is not usable: {exc.reason}") from None
        actions = parsed.actions
        action = actions[index] if index < len(actions) else None
        if action is None or action.type != step.action.type:
            raise JobFailed("the job document fetched again has not this step")
        _args, urls = hide_url_credentials(action.args)
        if [name for name, _url in urls] != [name for name, _url in step.url_environment]:
            raise JobFailed("the job document fetched again has other presigned URLs for this step")
        return dict(urls)

    def _environment(
        self, ctx: JobContext, index: int, step: PreparedStep, files: StepFiles, step_data: Any
    ) -> dict[str, str]:
        """The step's files (document, checkpoint) handed over, and its environment."""
        document_file = files.write(DOCUMENT_FILE, dict(ctx.document))
        checkpoint_file = files.write(CHECKPOINT_FILE, step_data) if step_data is not None else None
        files.hand_over()
        env = script_environment(
            ctx,
            document_file=document_file,
            step_index=index,
            step_name=step.action.name,
            checkpoint_file=checkpoint_file,
        )
        env.update(step.url_environment)
        if self._settings.allow_http_downloads:
            env["JOBS_AGENT_ALLOW_HTTP_DOWNLOADS"] = "1"  # for download-file.sh
        return env


def _has_windows(document: Mapping[str, Any], index: int) -> bool:
    """Whether `document` names a maintenance window for the job or for step `index` of its
    `steps` (what `document_windows(document).for_step(..., index)` would read; the final
    step, after them, has the job's only). True, to be read as before, for a step that is
    not a plain object."""
    if DOCUMENT_KEY in document:
        return True
    steps = document.get("steps")
    if not isinstance(steps, list) or index >= len(steps):
        return False
    step = steps[index]
    action = step.get("action") if type(step) is dict else None
    return type(action) is not dict or DOCUMENT_KEY in action
