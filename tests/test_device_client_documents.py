"""Device Client documents as operators write them, through the real agent and the emulator:
`runCommand` tokens trimmed as the Device Client trims them (13.2), its closed schema with
"did you mean" (13.9), progress lines that cannot be used are warned about (13.9), broken
`#!` lines named for what they are (13.8), the whole document validated before its first step
and no descriptor left behind per job (12.11)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.dispatch.output import Tail
from jobs_agent.dispatch.process import ProcessSpec, Sandbox
from jobs_agent.dispatch.users import own_user
from tests.helpers.agent_harness import (
    captured_logs,
    make_handler_dir,
    running_agent,
    write_script,
)


def command(*commands: str, **document: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {"action": {"name": f"s{i}", "type": "runCommand", "input": {"command": text}}}
            for i, text in enumerate(commands, 1)
        ],
        **document,
    }


def handler_step(handler: str, **action: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "steps": [
            {"action": {"name": "h", "type": "runHandler", "input": {"handler": handler}, **action}}
        ],
    }


@pytest.fixture
def base(tmp_path: Path) -> Path:
    make_handler_dir(tmp_path)
    return tmp_path


async def test_run_command_elements_are_trimmed_as_the_device_client_does(base: Path) -> None:
    async with running_agent(base) as harness:
        spaced = await harness.run_job("spaced", command("echo, hello, world"))
        version = await harness.run_job("version", command("python3, --version"))
        trailing = await harness.run_job("trailing", command("ls "))  # a re:Post example
        escaped = await harness.run_job("escaped", command(" echo ,a\\, b , c"))
    assert (str(spaced.status), spaced.status_details["stdout"]) == ("SUCCEEDED", "hello world")
    assert str(version.status) == "SUCCEEDED", version.status_details
    assert str(trailing.status) == "SUCCEEDED", trailing.status_details
    assert escaped.status_details["stdout"] == "a, b c"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            handler_step("ok.sh", runAsUsr="root"),
            'steps[0].action.runAsUsr: unknown key (did you mean "runAsUser"?)',
        ),
        (
            {
                "version": "1.0",
                "steps": [
                    {
                        "action": {
                            "name": "h",
                            "type": "runHandler",
                            "input": {"handler": "ok.sh", "arg": ["x"]},
                        }
                    }
                ],
            },
            'steps[0].action.input.arg: unknown key (did you mean "args"?)',
        ),
        (
            {**command("true"), "includeStdout": "true"},
            'includeStdout: unknown key (did you mean "includeStdOut"?)',
        ),
        ({"operation": "ok.sh", "arg": ["x"]}, 'arg: unknown key (did you mean "args"?)'),
        (
            {"operation": "ok.sh", "RunAsUser": "root"},
            'RunAsUser: unknown key (did you mean "runAsUser"?)',
        ),
    ],
)
async def test_misspelled_keys_are_rejected_with_the_key_meant(
    base: Path, document: dict[str, Any], reason: str
) -> None:
    async with running_agent(base) as harness:
        execution = await harness.run_job("typo", document)
    assert (str(execution.status), execution.status_details["reason"]) == ("REJECTED", reason)
    assert not (base / "runs.log").exists()


async def test_comments_and_operators_own_fields_are_not_unknown_keys(base: Path) -> None:
    async with running_agent(base) as harness:
        commented = await harness.run_job(
            "comment", {"_comment": "the samples have one", **command("true")}
        )
        params = await harness.run_job("params", {"operation": "ok.sh", "image": "v2.bin"})
        own = await harness.run_job("own", {"sha256": "ab" * 32, **command("true")})
    assert str(commented.status) == "SUCCEEDED", commented.status_details
    assert str(params.status) == "SUCCEEDED", params.status_details
    assert str(own.status) == "SUCCEEDED", own.status_details


async def test_a_nul_in_a_later_step_name_rejects_the_document_before_step_one(
    base: Path,
) -> None:
    marker = base / "step-one-ran"
    document = command(f"touch,{marker}", "true")
    document["steps"][1]["action"]["name"] = "second\u0000step"
    async with running_agent(base) as harness:
        execution = await harness.run_job("nul", document)
    assert str(execution.status) == "REJECTED"
    assert execution.status_details["reason"] == "steps[1].action.name: contains a NUL character"
    assert not marker.exists()


async def test_a_spawn_refused_for_a_nul_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    sandbox = Sandbox(kill_grace=1.0)
    spec = ProcessSpec(("/bin/true",), own_user(), 5.0, {"BAD": "a\x00b"})
    # The first spawn opens the agent's one `/dev/null` (every step's stdin), kept for the next.
    await sandbox.run(spec, cancelled=asyncio.Event(), stdout_sinks=[Tail()])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        result = await sandbox.run(spec, cancelled=asyncio.Event(), stdout_sinks=[Tail()])
        assert result.spawn_error is not None and "null" in result.spawn_error
    assert len(os.listdir("/proc/self/fd")) == before


async def test_jobs_leave_no_descriptor_behind(base: Path) -> None:
    async with running_agent(base) as harness:
        await harness.run_job("warm", command("true"))
        before = len(os.listdir("/proc/self/fd"))
        for index in range(10):
            await harness.run_job(f"ok-{index}", command("echo,x", "false"))
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_unusable_progress_lines_are_warned_about(base: Path) -> None:
    write_script(
        base / "handlers",
        "chatty.sh",
        "echo 'not json' >&3\necho '{\"percnt\": 40}' >&3\necho '[1]' >&3\n"
        'echo \'{"percent": "half"}\' >&3\necho \'{"percent": 50}\' >&3\n',
    )
    with captured_logs() as logs:
        async with running_agent(base) as harness:
            execution = await harness.run_job("chatty", handler_step("chatty.sh"))
    assert str(execution.status) == "SUCCEEDED"
    problems = [r["problem"] for r in logs.records if r.get("event") == "handler progress ignored"]
    assert problems == [
        "a progress line is not JSON and was ignored: 'not json'",
        "unknown progress key 'percnt' (did you mean \"percent\"?); expected percent, message,"
        " details, checkpoint, defer, refreshUrls",
        "a progress line is not a JSON object: [1]",
        "progress percent 'half' is not a number from 0 to 100",
    ]
    assert all(
        r["level"] == "warning" and r["job_id"] == "chatty"
        for r in logs.records
        if r.get("event") == "handler progress ignored"
    )


@pytest.mark.parametrize(
    ("first_line", "reason"),
    [
        ("#!/bin/shh", "interpreter /bin/shh not found (named by the first line of {path})"),
        ("#!/bin/sh\r", "the first line of {path} ends with a carriage return"),
        ("#!/usr/bin/env nosuchsh", "interpreter nosuchsh not found in PATH"),
    ],
)
async def test_broken_interpreter_lines_are_named(base: Path, first_line: str, reason: str) -> None:
    path = base / "handlers" / "broken.sh"
    path.write_text(f"{first_line}\necho hi\n")
    path.chmod(0o755)
    async with running_agent(base) as harness:
        execution = await harness.run_job("broken", handler_step("broken.sh"))
    assert str(execution.status) == "REJECTED"
    assert reason.format(path=path) in execution.status_details["reason"]
    assert "No such file or directory" not in execution.status_details["reason"]
