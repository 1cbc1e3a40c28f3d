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
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.dispatch.paths import PLACEHOLDER, locate_handler
from jobs_agent.dispatch.plan import PlannedStep
from jobs_agent.dispatch.settings import DispatchSettings
from jobs_agent.dispatch.shebang import interpreter_problem
from jobs_agent.dispatch.users import RunAs, parse_run_as_user, resolve_user
from jobs_agent.redact import has_url_credentials
from jobs_agent_handlers.api import JobRejected

RUN_HANDLER = "runHandler"
RUN_COMMAND = "runCommand"
SUPPORTED_VERSIONS = ("1.0",)
MAX_STEP_TIMEOUT = 7 * 24 * 3600.0


@model
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


@model
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
AGENT_KEYS = (
    "jobsAgentSignature",
    "maintenanceWindow",
    "consent",
    "maxDeferralMinutes",
    "installs",
    "destinationPackageVersions",
)
"""Keys of the agent's own beside the Device Client's: the signature block
(agent/dispatch/signing.py); the job's maintenance window, consent and deferral limit
(`agent_fields`), which the engine reads before the handler runs; and what the job installs
(agent/inventory/model.py)."""
STEP_KEYS = ("action",)
ACTION_KEYS = (
    "name",
    "type",
    "input",
    "runAsUser",
    "allowStdErr",
    "ignoreStepFailure",
    "timeout",
    "maintenanceWindow",
)
"""`maintenanceWindow` is the agent's: the step runs only inside it (`StepsHandler`)."""
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
    if not isinstance(raw, (dict, Mapping)):  # dict first: no Python call of the ABC's check
        raise JobRejected(f'{where}: expected an object with an "action"')
    action = raw.get("action")
    if not isinstance(action, (dict, Mapping)):
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
    if not isinstance(data, (dict, Mapping)):
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


@model
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
    label = step_label(action, None)
    try:
        user = resolve_user(action.run_as_user, settings)
        timeout = action.timeout or settings.handler_timeout_seconds
        if action.type == RUN_HANDLER:
            located = locate_handler(
                settings.handler_dir, action.handler, action.path, search_path=search_path
            )
            args, urls = hide_url_credentials(action.args)
            base = (located.name, action.run_as_user, *args)
            argv = ("/bin/sh", *base) if located.builtin else base
            if not located.builtin:
                _check_interpreter(located.name, search_path, located.head)
            return PreparedStep(
                action,
                argv,
                user,
                timeout,
                located.name,
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


def _check_interpreter(path: str | Path, search_path: str, head: bytes | None = None) -> None:
    problem = interpreter_problem(path, search_path, head, remember=True)
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


def step_label(action: Action, index: int | None) -> str:
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
