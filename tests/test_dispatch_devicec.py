"""Device Client documents and the AWS managed templates, run through the real Dispatcher.

Every test runs real processes through the sandbox. apt-get and systemctl are replaced by fake
executables put first on the sandbox's PATH: a real install would change this machine and need
the network, and this container has no systemd. The fakes record their argv, which is what the
tests assert (how the package and service lists reach the tools).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from jobs_agent.dispatch.devicec import split_command
from jobs_agent.dispatch.process import DEFAULT_PATH
from jobs_agent_handlers.api import JobRejected, Outcome

PLACEHOLDER_USER = "${aws:iot:parameter:runAsUser}"
PLACEHOLDER_PATH = "${aws:iot:parameter:pathToHandler}"


def managed(name: str, handler: str, args: list[str] | None) -> dict[str, Any]:
    """A document as AWS creates it from a managed template (optional parameters not given)."""
    data: dict[str, Any] = {"handler": handler, "path": PLACEHOLDER_PATH}
    if args is not None:
        data["args"] = args
    return {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": name,
                    "type": "runHandler",
                    "input": data,
                    "runAsUser": PLACEHOLDER_USER,
                }
            }
        ],
    }


def script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


@pytest.fixture
def handler_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "handlers"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    return directory


@pytest.fixture
def fakebin(tmp_path: Path) -> Path:
    directory = tmp_path / "fakebin"
    directory.mkdir()
    record = tmp_path / "calls.jsonl"
    for tool in ("apt-get", "systemctl"):
        script(
            directory,
            tool,
            f'printf "%s\\n" "$0 $*" >> {record}\n'
            'case "$*" in *broken*) echo "E: failed" >&2; exit 100;; esac\n',
        )
    return directory


def make_config(tmp_path: Path, handler_dir: Path, **jobs: Any) -> AgentConfig:
    return AgentConfig(
        thing_name="gw-1",
        state_dir=tmp_path / "state",
        jobs=JobsConfig(handler_dir=handler_dir, kill_grace_seconds=1.0, **jobs),
    )


def make_ctx(tmp_path: Path, document: dict[str, Any]) -> LocalJobContext:
    scratch = tmp_path / "scratch"
    state = tmp_path / "jobstate"
    scratch.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    return LocalJobContext(document=document, scratch_dir=scratch, state_dir=state, job_id="job-1")


async def run(
    config: AgentConfig, document: dict[str, Any], tmp_path: Path, search_path: str = DEFAULT_PATH
) -> tuple[Outcome, LocalJobContext]:
    dispatcher = Dispatcher(config, search_path=search_path)
    ctx = make_ctx(tmp_path, document)
    outcome = await dispatcher.run(dispatcher.resolve(document), ctx)
    return outcome, ctx


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.jsonl"
    return path.read_text().splitlines() if path.exists() else []


# -- document shapes of the Device Client's samples --------------------------------------------


async def test_sample_echo_handler_from_path_gets_runasuser_then_args(
    tmp_path: Path, handler_dir: Path
) -> None:
    document = {
        "version": "1.0",
        "includeStdOut": True,
        "steps": [
            {
                "action": {
                    "name": "Echo Messages",
                    "type": "runHandler",
                    "input": {"handler": "echo", "args": ["Hello IoT World!"]},
                }
            }
        ],
    }
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    # argv[1] is runAsUser ("" here), as the Device Client passes it; the tail is stripped.
    assert outcome.details["stdout"] == "Hello IoT World!"


async def test_old_schema_operation_runs_handler_from_handler_dir(
    tmp_path: Path, handler_dir: Path
) -> None:
    script(handler_dir, "greet.sh", 'echo "user=[$1] args=$2,$3"\n')
    document = {
        "operation": "greet.sh",
        "args": ["a b", "c"],
        "path": "default",
        "includeStdOut": "true",
    }
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    assert outcome.details["stdout"] == "user=[] args=a b,c"


async def test_run_command_splits_on_commas_and_keeps_escaped_comma(
    tmp_path: Path, handler_dir: Path
) -> None:
    document = {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {
                "action": {
                    "name": "Create New Directory",
                    "type": "runCommand",
                    "input": {"command": "mkdir,newDir\\,x"},
                    "runAsUser": PLACEHOLDER_USER,
                }
            }
        ],
    }
    outcome, ctx = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED", outcome
    assert (ctx.scratch_dir / "newDir,x").is_dir()


def test_split_command() -> None:
    # The Device Client's tokens: non-empty runs between commas, each trimmed (issue 13.2).
    assert split_command("echo,a\\,b,,c\\d") == ("echo", "a,b", "c\\d")
    assert split_command("apt-get, --version") == ("apt-get", "--version")
    assert split_command("echo, hello, world") == ("echo", "hello", "world")
    assert split_command("ls ") == ("ls",)
    assert split_command(" echo ,\ta\\, b \n, , c") == ("echo", "a, b", "", "c")
    assert split_command("") == ()


async def test_injection_attempts_arrive_literally_in_argv(
    tmp_path: Path, handler_dir: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", "*", "a\nb"]
    script(handler_dir, "args.sh", 'shift; for a in "$@"; do printf "[%s]" "$a"; done\n')
    document = {"operation": "args.sh", "args": hostile, "includeStdOut": True}
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    command = {
        "version": "1.0",
        "includeStdOut": True,
        "steps": [
            {
                "action": {
                    "name": "c",
                    "type": "runCommand",
                    "input": {"command": f"echo,$(touch {marker});rm -rf /tmp/x"},
                }
            }
        ],
    }
    outcome2, _ = await run(make_config(tmp_path, handler_dir), command, tmp_path)
    assert not marker.exists()
    assert outcome.details["stdout"] == (
        f"[; touch {marker}][$(touch {marker})][`touch {marker}`][*][a\\nb]"
    )
    assert outcome2.details["stdout"] == f"$(touch {marker});rm -rf /tmp/x"


async def test_failing_step_stops_the_job_and_skips_final_step(
    tmp_path: Path, handler_dir: Path
) -> None:
    marker = tmp_path / "final-ran"
    script(handler_dir, "fail.sh", "echo out; echo oops >&2; exit 3\n")
    document = {
        "version": "1.0",
        "steps": [
            {"action": {"name": "Fails", "type": "runHandler", "input": {"handler": "fail.sh"}}},
            {
                "action": {
                    "name": "Never",
                    "type": "runCommand",
                    "input": {"command": f"touch,{marker}"},
                }
            },
        ],
        "finalStep": {
            "action": {
                "name": "Cleanup",
                "type": "runCommand",
                "input": {"command": f"touch,{marker}"},
            }
        },
    }
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "FAILED"
    assert outcome.details["reason"] == 'step 1 "Fails": exited with code 3'
    assert outcome.details["stderr"] == "oops"
    assert "stdout" not in outcome.details  # includeStdOut not set
    assert not marker.exists()


async def test_ignored_failure_continues_and_final_step_runs(
    tmp_path: Path, handler_dir: Path
) -> None:
    marker = tmp_path / "final-ran"
    document = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "Fails",
                    "type": "runCommand",
                    "input": {"command": "false"},
                    "ignoreStepFailure": "true",
                }
            },
        ],
        "finalStep": {
            "action": {
                "name": "Cleanup",
                "type": "runCommand",
                "input": {"command": f"touch,{marker}"},
            }
        },
    }
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    assert marker.exists()
    assert outcome.details["ignoredFailures"] == 'step 1 "Fails": exited with code 1'


async def test_allow_stderr_counts_lines(tmp_path: Path, handler_dir: Path) -> None:
    script(handler_dir, "noisy.sh", "echo one >&2; echo two >&2; echo three >&2\n")

    def doc(allowed: Any) -> dict[str, Any]:
        return {"operation": "noisy.sh", "allowStdErr": allowed}

    config = make_config(tmp_path, handler_dir)
    ok, _ = await run(config, doc(3), tmp_path)
    too_many, _ = await run(config, doc("2"), tmp_path)
    unlimited, _ = await run(config, {"operation": "noisy.sh"}, tmp_path)
    assert ok.status == "SUCCEEDED"
    assert unlimited.status == "SUCCEEDED"
    assert too_many.status == "FAILED"
    assert too_many.details["reason"] == (
        'step 1 "noisy.sh": wrote 3 lines to stderr (allowStdErr is 2)'
    )
    assert too_many.details["stderr"] == "one\\ntwo\\nthree"


async def test_invalid_documents_are_rejected_with_what_was_expected(
    tmp_path: Path, handler_dir: Path
) -> None:
    dispatcher = Dispatcher(make_config(tmp_path, handler_dir))
    cases = {
        'version: expected "1.0"': {"version": "2.0", "steps": []},
        "steps: expected a non-empty list": {"version": "1.0", "steps": []},
        'steps[0].action.type: expected "runHandler" or "runCommand"': {
            "version": "1.0",
            "steps": [{"action": {"name": "x", "type": "shell", "input": {}}}],
        },
        "first element 'rm -rf' must be a command name without spaces": {
            "version": "1.0",
            "steps": [
                {"action": {"name": "x", "type": "runCommand", "input": {"command": "rm -rf,/"}}}
            ],
        },
        "ignoreStepFailure: expected true or false": {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "x",
                        "type": "runCommand",
                        "input": {"command": "true"},
                        "ignoreStepFailure": "yes",
                    }
                }
            ],
        },
        'expected a Device Client job document ({"version": "1.0"': {"hello": "world"},
        "no handler named 'nope'": {"operation": "nope"},
    }
    for expected, document in cases.items():
        with pytest.raises(JobRejected) as info:
            dispatcher.resolve(document)
        assert expected in info.value.reason, (expected, info.value.reason)


# -- the AWS managed templates -----------------------------------------------------------------


async def test_aws_run_command(tmp_path: Path, handler_dir: Path) -> None:
    document = {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {
                "action": {
                    "name": "Run-Command",
                    "type": "runCommand",
                    "input": {"command": "sh,-c,echo hi\\, there"},
                    "runAsUser": PLACEHOLDER_USER,
                }
            }
        ],
    }
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    assert outcome.details["stdout"] == "hi, there"


@pytest.mark.parametrize(
    ("template", "handler", "tool", "verb"),
    [
        ("Install-Application", "install-packages.sh", "apt-get", "install -y"),
        ("Remove-Application", "remove-packages.sh", "apt-get", "remove -y"),
    ],
)
async def test_package_templates(
    tmp_path: Path,
    handler_dir: Path,
    fakebin: Path,
    template: str,
    handler: str,
    tool: str,
    verb: str,
) -> None:
    config = make_config(tmp_path, handler_dir)
    path = f"{fakebin}:{DEFAULT_PATH}"
    outcome, _ = await run(config, managed(template, handler, ["lftp dos2unix"]), tmp_path, path)
    assert outcome.status == "SUCCEEDED", outcome
    assert calls(tmp_path) == [f"{fakebin}/{tool} {verb} lftp dos2unix"]
    bad, _ = await run(
        config, managed(template, handler, ["ok --allow-unauthenticated"]), tmp_path, path
    )
    assert bad.status == "REJECTED"
    assert "refusing package name '--allow-unauthenticated'" in bad.details["stderr"]
    failing, _ = await run(config, managed(template, handler, ["broken"]), tmp_path, path)
    assert failing.status == "FAILED"
    assert failing.details["reason"] == f'step 1 "{template}": exited with code 100'


@pytest.mark.parametrize("verb", ["start", "stop", "restart"])
async def test_service_templates(
    tmp_path: Path, handler_dir: Path, fakebin: Path, verb: str
) -> None:
    config = make_config(tmp_path, handler_dir)
    path = f"{fakebin}:{DEFAULT_PATH}"
    name = f"{verb.capitalize()}-Application"
    outcome, _ = await run(
        config, managed(name, f"{verb}-services.sh", ["nginx cron"]), tmp_path, path
    )
    assert outcome.status == "SUCCEEDED", outcome
    assert calls(tmp_path) == [
        f"{fakebin}/systemctl {verb} nginx",
        f"{fakebin}/systemctl {verb} cron",
    ]
    own, _ = await run(config, managed(name, f"{verb}-services.sh", ["jobs-agent"]), tmp_path, path)
    assert own.status == "REJECTED"


async def test_download_file_template_uses_the_python_downloader(
    tmp_path: Path, handler_dir: Path
) -> None:
    source = tmp_path / "missing-dir" / "x"
    outcome, _ = await run(
        make_config(tmp_path, handler_dir),
        managed("Download-File", "download-file.sh", ["https://127.0.0.1:9/x", str(source)]),
        tmp_path,
    )
    # The downloader ran (with the agent's interpreter) and refused the missing directory.
    assert outcome.status == "FAILED"
    assert outcome.details["stderr"] == f"directory {source.parent} does not exist"


async def test_reboot_template_checkpoints_then_continues_after_boot(
    tmp_path: Path, handler_dir: Path
) -> None:
    marker = tmp_path / "after-reboot"
    document = managed("Reboot", "reboot.sh", None)
    document["steps"].append(
        {"action": {"name": "After", "type": "runCommand", "input": {"command": f"touch,{marker}"}}}
    )
    config = make_config(tmp_path, handler_dir)
    dispatcher = Dispatcher(config)
    ctx = make_ctx(tmp_path, document)
    first = await dispatcher.run(dispatcher.resolve(document), ctx)
    assert first.status == "SUCCEEDED"
    assert ctx.reboot_requested
    assert ctx.checkpoints == [{"next_step": 1}]
    assert not marker.exists()
    ctx.after_reboot()  # what the engine does after the boot: resumed, rebooted, checkpoint kept
    second = await dispatcher.run(dispatcher.resolve(document), ctx)
    assert second.status == "SUCCEEDED"
    assert marker.exists()
    assert not ctx.reboot_requested


async def test_script_protocol_env_progress_checkpoint_and_exit_codes(
    tmp_path: Path, handler_dir: Path
) -> None:
    script(
        handler_dir,
        "proto.sh",
        'env | sort > "$JOBS_AGENT_STATE_DIR/env.txt"\n'
        'cp "$JOBS_AGENT_DOCUMENT" "$JOBS_AGENT_STATE_DIR/doc.json"\n'
        'echo \'{"percent": 40, "message": "halfway", "details": {"phase": "copy"}}\' '
        '>&"$JOBS_AGENT_PROGRESS_FD"\n'
        'echo "not json" >&"$JOBS_AGENT_PROGRESS_FD"\n'
        'echo \'{"checkpoint": {"done": 3}}\' >&"$JOBS_AGENT_PROGRESS_FD"\n'
        'exit "${CODE:-$2}"\n',
    )
    config = make_config(tmp_path, handler_dir)
    document = {"operation": "proto.sh", "args": ["0"]}
    outcome, ctx = await run(config, document, tmp_path)
    assert outcome.status == "SUCCEEDED"
    assert (40.0, "halfway", {"phase": "copy"}) in ctx.progress_events
    assert ctx.checkpoints == [{"next_step": 0, "step_data": {"done": 3}}]
    env = dict(line.split("=", 1) for line in (ctx.state_dir / "env.txt").read_text().splitlines())
    assert env["JOBS_AGENT_JOB_ID"] == "job-1"
    assert env["JOBS_AGENT_EXECUTION_NUMBER"] == "1"
    assert env["JOBS_AGENT_RESUMED"] == "0"
    assert env["PATH"] == DEFAULT_PATH
    assert env["LANG"] == "C.UTF-8"
    assert json.loads((ctx.state_dir / "doc.json").read_text()) == document
    allowed = {"PATH", "LANG", "HOME", "PWD", "SHLVL", "_"}
    assert {k for k in env if not k.startswith("JOBS_AGENT_")} <= allowed

    rejected, _ = await run(config, {"operation": "proto.sh", "args": ["90"]}, tmp_path)
    assert rejected.status == "REJECTED"
    assert rejected.details["reason"] == (
        'step 1 "proto.sh": the handler rejected the job (exit code 90)'
    )
    failed, _ = await run(config, {"operation": "proto.sh", "args": ["1"]}, tmp_path)
    assert failed.status == "FAILED"
    assert failed.details["reason"] == 'step 1 "proto.sh": exited with code 1'
    script(handler_dir, "selfkill.sh", "kill -HUP $$\n")
    killed, _ = await run(config, {"operation": "selfkill.sh"}, tmp_path)
    assert killed.status == "FAILED"
    assert killed.details["reason"] == 'step 1 "selfkill.sh": killed by signal SIGHUP'


def test_handler_scripts_are_not_writable_by_others() -> None:
    from jobs_agent.dispatch.paths import BUILTIN_SCRIPTS_DIR

    for path in BUILTIN_SCRIPTS_DIR.iterdir():
        assert not os.stat(path).st_mode & (stat.S_IWGRP | stat.S_IWOTH), path


async def test_a_step_without_any_window_is_not_read_for_windows_again(
    tmp_path: Path, handler_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document's windows are checked when the job is resolved and read again by the
    engine's gate: each step read them a third time, to find none (about 18 k instructions
    per script job; issue 18). A step is read for them only when the device, the job or the
    step itself has one, and then waits for it as before."""
    from jobs_agent.dispatch import steps
    from jobs_agent_handlers.api import JobDeferred

    reads: list[Any] = []
    real = steps.document_windows

    def counted(document: Any) -> Any:
        reads.append(document)
        return real(document)

    monkeypatch.setattr(steps, "document_windows", counted)
    script(handler_dir, "ok.sh", "exit 0\n")
    action = {"name": "ok", "type": "runHandler", "input": {"handler": "ok.sh"}}
    document: dict[str, Any] = {"version": "1.0", "steps": [{"action": action}] * 2}
    document["finalStep"] = {"action": {**action, "name": "last"}}
    outcome, _ = await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert outcome.status == "SUCCEEDED", outcome.details
    assert reads == []
    closed = {"startTime": "cron(0 0 1 1 ? *)", "durationInMinutes": 1}  # 1 January only
    document["steps"] = [{"action": action}, {"action": {**action, "maintenanceWindow": closed}}]
    with pytest.raises(JobDeferred):
        await run(make_config(tmp_path, handler_dir), document, tmp_path)
    assert len(reads) == 1  # the second step's: the first has none
