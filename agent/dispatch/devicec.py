"""AWS IoT Device Client job documents: the schema, and a runner with the same semantics.

Semantics follow the Device Client's JobEngine (awslabs/aws-iot-device-client,
source/jobs/JobEngine.cpp, JobDocument.cpp and source/jobs/README.md):
* steps run in order and the job stops at the first failing step unless that step has
  `ignoreStepFailure`; `finalStep` runs only when every step succeeded (or its failure was
  ignored); it is not a `finally`;
* runHandler argv is `[handler, runAsUser, args...]`; runCommand splits `command` on commas,
  `\\,` being a literal comma, and runs it without a shell;
* `allowStdErr` N fails a step that exits 0 but wrote more than N lines to stderr; without it
  only the exit status counts (what the Device Client does; its README says otherwise);
* statusDetails carry `reason` and the last 1024 characters of `stdout` (with `includeStdOut`)
  and `stderr`, made single-line here because the API forbids control characters.
Differences, on purpose: every step has a time limit; the whole document is validated before
the first step runs (the Device Client discovers a bad step 3 after running steps 1 and 2);
the reason names the step and says "exited with code N" or "killed by signal SIGx".
"""

from __future__ import annotations

import difflib
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs_agent.dispatch.containment import group_name
from jobs_agent.dispatch.output import OutputLog, Tail, log_path
from jobs_agent.dispatch.paths import PLACEHOLDER, locate_handler
from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.process import ProcessResult, ProcessSpec, Sandbox
from jobs_agent.dispatch.scripts import (
    EXIT_REBOOT,
    EXIT_REJECTED,
    StepFiles,
    message_handler,
    script_environment,
)
from jobs_agent.dispatch.settings import DispatchSettings
from jobs_agent.dispatch.shebang import interpreter_problem
from jobs_agent.dispatch.users import RunAs, parse_run_as_user, resolve_user
from jobs_agent.redact import has_url_credentials
from jobs_agent_handlers.api import JobContext, JobRejected, Outcome

RUN_HANDLER = "runHandler"
RUN_COMMAND = "runCommand"
SUPPORTED_VERSIONS = ("1.0",)
MAX_STEP_TIMEOUT = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Action:
    """One `action` of a Device Client document."""

    name: str
    type: str
    handler: str = ""
    args: tuple[str, ...] = ()
    path: str | None = None
    command: tuple[str, ...] = ()
    run_as_user: str = ""
    allow_stderr: int | None = None
    ignore_step_failure: bool = False
    timeout: float | None = None
    final: bool = False


@dataclass(frozen=True)
class StepsDocument:
    actions: tuple[Action, ...]
    include_stdout: bool


def split_command(text: str) -> tuple[str, ...]:
    """`"cmd, arg1 ,a\\,b"` -> `("cmd", "arg1", "a,b")`, as the Device Client splits it.

    The Device Client takes the non-empty runs of characters between commas (`\\,` being a
    literal comma, so `"a,,b"` has two elements), then trims each element's leading and trailing
    white space: `"apt-get, --version"` is `apt-get --version`, `"ls "` is `ls`. Other
    backslashes stay as they are.
    """
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index <= len(text):
        char = text[index : index + 1]
        if char == "\\" and text[index + 1 : index + 2] == ",":
            current.append(",")
            index += 2
            continue
        if char in (",", ""):
            if current:
                parts.append("".join(current).strip(COMMAND_SPACE))
            current = []
        else:
            current.append(char)
        index += 1
    return tuple(parts)


COMMAND_SPACE = " \t\n\v\f\r"
"""What the Device Client trims from each element of a `runCommand` (its `TrimCopy`)."""

DOCUMENT_KEYS = ("version", "includeStdOut", "conditions", "steps", "finalStep")
AGENT_KEYS = ("jobsAgentSignature",)
"""Keys the agent itself adds to a document: the signature block (agent/dispatch/signing.py)."""
STEP_KEYS = ("action",)
ACTION_KEYS = ("name", "type", "input", "runAsUser", "allowStdErr", "ignoreStepFailure", "timeout")
HANDLER_INPUT_KEYS = ("handler", "args", "path")
COMMAND_INPUT_KEYS = ("command",)
CONDITION_KEYS = ("key", "value", "type")
LEGACY_KEYS = (
    "operation",
    "args",
    "path",
    "allowStdErr",
    "runAsUser",
    "includeStdOut",
    "timeout",
    "type",
)


def check_keys(value: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """The Device Client's schema is closed: a misspelled key (`runAsUsr`, `arg`) would be
    silently ignored and the step run as root or without its arguments, so it is REJECTED with
    the key it most likely meant. Keys starting with `_` are comments (its samples have
    `_comment`)."""
    for key in value:
        if not isinstance(key, str) or key.startswith("_") or key in known:
            continue
        raise JobRejected(f"{_at(where, key)}: unknown key{did_you_mean(key, known)}")


def check_misspelled_keys(value: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """For levels whose other keys are the operator's own (the older one-step form's handler
    parameters, a document's top level): only a key that looks like a misspelling of a known
    one is REJECTED."""
    for key in value:
        if not isinstance(key, str) or key in known:
            continue
        hint = did_you_mean(key, known, cutoff=0.8)
        if hint:
            raise JobRejected(f"{_at(where, key)}: unknown key{hint}")


def did_you_mean(key: str, known: Sequence[str], *, cutoff: float = 0.6) -> str:
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=cutoff)
    if not matches and key.lower() in (k.lower() for k in known):
        matches = [k for k in known if k.lower() == key.lower()]
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise JobRejected(f'{where}: expected true or false (or "true"/"false"), got {value!r}')


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise JobRejected(f"{where}: expected a number of lines (0 or more), got {value!r}")


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not 0 < number <= MAX_STEP_TIMEOUT:
        raise JobRejected(
            f"{where}: expected a number of seconds from 1 to {MAX_STEP_TIMEOUT:g}, got {value!r}"
        )
    return number


def _args(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise JobRejected(f"{where}: expected a list of strings, got {type(value).__name__}")
    result: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise JobRejected(f"{where}: expected a list of strings, found {item!r}")
        result.append(str(item))
    if any("\x00" in item for item in result):
        raise JobRejected(f"{where}: an argument contains a NUL character")
    return tuple(result)


def _string(value: Any, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise JobRejected(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _parse_action(raw: Any, where: str, *, final: bool) -> Action:
    if not isinstance(raw, Mapping):
        raise JobRejected(f'{where}: expected an object with an "action"')
    action = raw.get("action")
    if not isinstance(action, Mapping):
        raise JobRejected(f'{where}.action: expected an object with "name", "type" and "input"')
    check_keys(raw, STEP_KEYS, where)
    where = f"{where}.action"
    check_keys(action, ACTION_KEYS, where)
    name = _string(action.get("name"), f"{where}.name", required=True)
    if "\x00" in name:
        raise JobRejected(f"{where}.name: contains a NUL character")
    kind = action.get("type")
    if kind not in (RUN_HANDLER, RUN_COMMAND):
        raise JobRejected(f'{where}.type: expected "runHandler" or "runCommand", got {kind!r}')
    data = action.get("input")
    if not isinstance(data, Mapping):
        raise JobRejected(f"{where}.input: expected an object")
    check_keys(
        data, HANDLER_INPUT_KEYS if kind == RUN_HANDLER else COMMAND_INPUT_KEYS, f"{where}.input"
    )
    common: dict[str, Any] = {
        "name": name,
        "type": kind,
        "run_as_user": parse_run_as_user(action.get("runAsUser"), f"{where}.runAsUser"),
        "allow_stderr": _count(action.get("allowStdErr"), f"{where}.allowStdErr"),
        "ignore_step_failure": _flag(action.get("ignoreStepFailure"), f"{where}.ignoreStepFailure"),
        "timeout": _timeout(action.get("timeout"), f"{where}.timeout"),
        "final": final,
    }
    if kind == RUN_HANDLER:
        handler = _string(data.get("handler"), f"{where}.input.handler", required=True)
        if PLACEHOLDER.match(handler):
            raise JobRejected(f"{where}.input.handler: unreplaced template parameter {handler}")
        path = data.get("path")
        if path is not None and not isinstance(path, str):
            raise JobRejected(f"{where}.input.path: expected a string, got {path!r}")
        args = _args(data.get("args"), f"{where}.input.args")
        return Action(handler=handler, args=args, path=path, **common)
    command_text = _string(data.get("command"), f"{where}.input.command", required=True)
    if PLACEHOLDER.match(command_text.strip()):
        raise JobRejected(f"{where}.input.command: unreplaced template parameter {command_text}")
    command = split_command(command_text)
    if "\x00" in command_text:
        raise JobRejected(f"{where}.input.command: contains a NUL character")
    if not command or not command[0] or any(ch.isspace() for ch in command[0]):
        first = command[0] if command else ""
        raise JobRejected(
            f"{where}.input.command: the first element {first!r} must be a command name"
            " without spaces (arguments are separated by commas)"
        )
    return Action(command=command, **common)


def parse_steps_document(document: Mapping[str, Any]) -> StepsDocument:
    """Validate a `{"version": "1.0", "steps": [...]}` document; raise `JobRejected`."""
    # The top level may carry fields of the operator's own (a signed `sha256` that a handler
    # checks): only near-misspellings of the schema's keys are refused there.
    check_misspelled_keys(document, (*DOCUMENT_KEYS, *AGENT_KEYS), "")
    version = document.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise JobRejected(
            f'version: expected "1.0" (the Device Client job document schema), got {version!r}'
        )
    conditions = document.get("conditions")
    if conditions is not None and (
        not isinstance(conditions, list)
        or not all(
            isinstance(c, Mapping) and c.get("key") and isinstance(c.get("value"), list)
            for c in conditions
        )
    ):
        raise JobRejected('conditions: expected a list of {"key", "value": [...]} objects')
    for index, condition in enumerate(conditions or ()):
        check_keys(condition, CONDITION_KEYS, f"conditions[{index}]")
    steps = document.get("steps")
    if not isinstance(steps, list) or not steps:
        raise JobRejected('steps: expected a non-empty list of {"action": {...}} objects')
    actions = [_parse_action(raw, f"steps[{i}]", final=False) for i, raw in enumerate(steps)]
    final = document.get("finalStep")
    if final is not None:
        actions.append(_parse_action(final, "finalStep", final=True))
    return StepsDocument(tuple(actions), _flag(document.get("includeStdOut"), "includeStdOut"))


def parse_legacy_document(document: Mapping[str, Any], name: str) -> StepsDocument:
    """The older `{"operation", "args", "path", "allowStdErr"}` form: one runHandler step."""
    if PLACEHOLDER.match(name):
        raise JobRejected(f"operation: unreplaced template parameter {name}")
    check_misspelled_keys(document, (*LEGACY_KEYS, *AGENT_KEYS), "")
    path = document.get("path")
    if path is not None and not isinstance(path, str):
        raise JobRejected(f"path: expected a string, got {path!r}")
    action = Action(
        name=name,
        type=RUN_HANDLER,
        handler=name,
        args=_args(document.get("args"), "args"),
        path=path,
        run_as_user=parse_run_as_user(document.get("runAsUser")),
        allow_stderr=_count(document.get("allowStdErr"), "allowStdErr"),
        timeout=_timeout(document.get("timeout"), "timeout"),
    )
    return StepsDocument((action,), _flag(document.get("includeStdOut"), "includeStdOut"))


@dataclass(frozen=True)
class PreparedStep:
    """An action resolved against this device: executable, argv, user, time limit."""

    action: Action
    argv: tuple[str, ...]
    user: RunAs
    timeout: float
    executable: str
    builtin: bool = False
    """One of the agent's own scripts (handlers/scripts/), not the handler directory's."""
    url_environment: tuple[tuple[str, str], ...] = ()
    """`JOBS_AGENT_URL_<n>` variables holding the presigned URLs taken out of argv."""

    def planned(self) -> PlannedStep:
        return PlannedStep(
            name=self.action.name,
            kind=self.action.type,
            executable=self.executable,
            argv=self.argv,
            user=self.user.name,
            timeout=self.timeout,
            final=self.action.final,
            ignore_failure=self.action.ignore_step_failure,
        )


def prepare(action: Action, settings: DispatchSettings, search_path: str) -> PreparedStep:
    """Resolve one action; raise `JobRejected` when it cannot run here (path, user, rights)."""
    label = _label(action, None)
    try:
        user = resolve_user(action.run_as_user, settings)
        timeout = action.timeout or settings.handler_timeout_seconds
        if action.type == RUN_HANDLER:
            located = locate_handler(
                settings.handler_dir, action.handler, action.path, search_path=search_path
            )
            args, urls = hide_url_credentials(action.args)
            base = (str(located.path), action.run_as_user, *args)
            argv = ("/bin/sh", *base) if located.builtin else base
            if not located.builtin:
                _check_interpreter(located.path, search_path)
            return PreparedStep(
                action,
                argv,
                user,
                timeout,
                str(located.path),
                builtin=located.builtin,
                url_environment=urls,
            )
        if any(has_url_credentials(part) for part in action.command):
            raise JobRejected(
                "the command holds a presigned URL (or another URL credential), which would be"
                " visible to every local user in the process list: use a runHandler step, which"
                " gets it in the environment, or the download-file handler"
            )
        program = action.command[0]
        executable = program if "/" in program else shutil.which(program, path=search_path)
        if executable is not None:
            _check_interpreter(Path(executable), search_path)
        argv = (executable or program, *action.command[1:])
        return PreparedStep(action, argv, user, timeout, executable or program)
    except JobRejected as exc:
        raise type(exc)(f"{label}: {exc.reason}", **exc.details) from None


def _check_interpreter(path: Path, search_path: str) -> None:
    problem = interpreter_problem(path, search_path)
    if problem is not None:
        raise JobRejected(f"cannot run {path}: {problem}")


def hide_url_credentials(
    args: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Move arguments that carry URL credentials (presigned URLs) out of argv.

    A process's argv is readable by every local user (`ps`); its environment only by its own
    user and root. Each such argument becomes `env:JOBS_AGENT_URL_<n>` in argv, and the
    variable of that name holds it (docs/handlers.md, script protocol).
    """
    shown: list[str] = []
    environment: list[tuple[str, str]] = []
    for arg in args:
        if has_url_credentials(arg):
            name = f"JOBS_AGENT_URL_{len(environment) + 1}"
            environment.append((name, arg))
            shown.append(f"env:{name}")
        else:
            shown.append(arg)
    return tuple(shown), tuple(environment)


def _label(action: Action, index: int | None) -> str:
    if action.final:
        return f'finalStep "{action.name}"'
    return f'step {index + 1} "{action.name}"' if index is not None else f'step "{action.name}"'


REBOOT_STEP = "reboot_step"
"""Checkpoint key: a step that reboots the device the Device Client's way is running, started
in the boot whose id is given (`{"next_step": N, "reboot_step": {"boot_id": ...}}`)."""
CONFIRM_REBOOT = "confirm_reboot"
"""Checkpoint key: after the boot, run step N again so that it can confirm the reboot."""


def confirm_reboot_checkpoint(index: int) -> dict[str, Any]:
    return {"next_step": index, CONFIRM_REBOOT: True}


def interrupted_reboot_step(checkpoint: Any) -> tuple[int, str] | None:
    """(step index, boot id) when `checkpoint` says a Device Client reboot step was running."""
    if not isinstance(checkpoint, Mapping):
        return None
    index, marker = checkpoint.get("next_step"), checkpoint.get(REBOOT_STEP)
    if isinstance(index, int) and isinstance(marker, Mapping):
        boot_id = marker.get("boot_id")
        if isinstance(boot_id, str) and boot_id:
            return index, boot_id
    return None


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
        actions = self.document.actions
        total = len(actions)
        start, step_data = self.start_index(ctx, total)
        stdout_all, stderr_all = Tail(), Tail()
        log = OutputLog(
            log_path(self._settings.state_dir, ctx.job_id, ctx.execution_number),
            self._settings.output_log_max_bytes,
        )
        ignored: list[str] = []

        def details(reason: str | None = None) -> dict[str, str]:
            result: dict[str, str] = {}
            if reason:
                result["reason"] = reason
            if self.document.include_stdout and stdout_all.status_value():
                result["stdout"] = stdout_all.status_value()
            if stderr_all.status_value():
                result["stderr"] = stderr_all.status_value()
            if ignored:
                result["ignoredFailures"] = ", ".join(ignored)[:1024]
            return result

        try:
            if ctx.rebooted and start > 0:
                log.note(f"continuing after the reboot with step {start + 1} of {total}")
            for index in range(start, total):
                action = actions[index]
                label = _label(action, index)
                try:
                    step = prepare(action, self._settings, self._sandbox.search_path)
                except JobRejected as exc:
                    return Outcome.rejected(exc.reason, **details())
                confirming = index == start and self._confirming_reboot(ctx)
                reboot_step = self._reboots_like_the_device_client(step) and not confirming
                if reboot_step:
                    await ctx.checkpoint(
                        {"next_step": index, REBOOT_STEP: {"boot_id": self._boot_id()}}
                    )
                ctx.progress(100.0 * index / total, f"{label} of {total}")
                log.note(f"{label}: {shlex.join(step.argv)} (as {step.user.name})")
                result = await self._run_step(
                    ctx,
                    index,
                    step,
                    log,
                    stdout_all,
                    stderr_all,
                    step_data if index == start else None,
                )
                log.note(f"{label} ended: {result.failure() or 'exit code 0'}")
                if result.cancelled:
                    return Outcome.failed("cancelled", **details())
                if reboot_step and not result.timed_out and result.spawn_error is None:
                    await ctx.checkpoint(confirm_reboot_checkpoint(index))
                    ctx.request_reboot()
                    log.note(
                        f"{label} started a reboot ({result.failure() or 'exit code 0'}); as"
                        " with the Device Client it runs again after the boot to confirm it"
                    )
                    return Outcome.succeeded(**details())
                code = result.exit_code
                if code == EXIT_REBOOT:
                    await ctx.checkpoint({"next_step": index + 1})
                    ctx.request_reboot()
                    log.note(f"{label} asked for a reboot; the job continues after it")
                    return Outcome.succeeded(**details())
                if code == EXIT_REJECTED:
                    return Outcome.rejected(
                        f"{label}: the handler rejected the job (exit code {EXIT_REJECTED})",
                        **details(),
                    )
                failure = self._failure(action, result)
                if failure is None:
                    continue
                if action.ignore_step_failure:
                    ignored.append(f"{label}: {failure}")
                    continue
                return Outcome.failed(f"{label}: {failure}", **details())
            return Outcome.succeeded(**details())
        finally:
            log.close()

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
        self,
        ctx: JobContext,
        index: int,
        step: PreparedStep,
        log: OutputLog,
        stdout_all: Tail,
        stderr_all: Tail,
        step_data: Any,
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
            document_file = files.write_json("document.json", dict(ctx.document))
            checkpoint_file = (
                files.write_json("checkpoint.json", step_data) if step_data is not None else None
            )
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

            async def on_checkpoint(data: Any) -> None:
                await ctx.checkpoint({"next_step": index, "step_data": data})

            total = len(self.document.actions)
            span = (100.0 * index / total, 100.0 / total)

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
                cwd=None if step.user.switch else ctx.scratch_dir,
                group=group_name(ctx.namespace, ctx.job_id, ctx.execution_number),
            )
            return await self._sandbox.run(
                spec,
                cancelled=ctx.cancelled,
                log=log,
                on_message=message_handler(ctx, on_checkpoint, span=span, warn=warn),
                on_bad_line=warn,
                stdout_sinks=[stdout_all],
                stderr_sinks=[stderr_all],
            )
        finally:
            files.close()
