"""`runAsUser` (issues 13.1 and 12.5): the default runs what the Device Client runs (any user
of the device, root included); a site's `jobs.allowed_users` is one rule for named and unnamed
steps; any present value is validated (a number is REJECTED, never taken as "absent"); Python
plugins run as the agent or the document is REJECTED. Real agent, emulator and a throwaway user
created by the test."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_harness import Harness, make_config, make_handler_dir, running_agent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

PLUGIN_RUNS: list[int] = []


class WhoPlugin:
    """A plugin that records the uid it ran as (it runs inside the agent's process)."""

    async def run(self, ctx: Any) -> Mapping[str, Any]:
        PLUGIN_RUNS.append(os.geteuid())
        return {"uid": str(os.geteuid())}


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    name = f"ja{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def command_step(command: str, **action: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "includeStdOut": "true",
        "steps": [
            {
                "action": {
                    "name": "who",
                    "type": "runCommand",
                    "input": {"command": command},
                    **action,
                }
            }
        ],
    }


async def outcome(
    harness: Harness, job_id: str, document: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    execution = await harness.run_job(job_id, document)
    return str(execution.status), dict(execution.status_details)


async def test_device_client_samples_with_run_as_root_run_by_default(tmp_path: Path) -> None:
    make_handler_dir(tmp_path)
    async with running_agent(tmp_path) as harness:
        status, details = await outcome(harness, "root", command_step("id,-u", runAsUser="root"))
        assert (status, details["stdout"]) == ("SUCCEEDED", "0")
        status, details = await outcome(harness, "unnamed", command_step("id,-u"))
        assert (status, details["stdout"]) == ("SUCCEEDED", "0")


async def test_a_named_user_runs_as_that_user(tmp_path: Path, throwaway_user: str) -> None:
    make_handler_dir(tmp_path)
    async with running_agent(tmp_path) as harness:
        status, details = await outcome(
            harness, "named", command_step("id,-un", runAsUser=throwaway_user)
        )
    assert (status, details["stdout"]) == ("SUCCEEDED", throwaway_user)


async def test_a_site_list_binds_named_and_unnamed_steps_alike(
    tmp_path: Path, throwaway_user: str
) -> None:
    make_handler_dir(tmp_path)
    config = make_config(tmp_path, allowed_users=(throwaway_user,))
    async with running_agent(tmp_path, config) as harness:
        status, details = await outcome(
            harness, "listed", command_step("id,-un", runAsUser=throwaway_user)
        )
        assert (status, details["stdout"]) == ("SUCCEEDED", throwaway_user)
        status, details = await outcome(harness, "root", command_step("id,-u", runAsUser="root"))
        assert status == "REJECTED"
        assert details["reason"] == (
            f"step \"who\": runAsUser 'root' is not in jobs.allowed_users ({throwaway_user})"
        )
        status, details = await outcome(harness, "unnamed", command_step("id,-u"))
        assert status == "REJECTED"
        assert (
            "would run as the agent's user 'root', which is not in jobs.allowed_users"
            in (details["reason"])
        )
        assert "stdout" not in details


@pytest.mark.parametrize("value", [0, 1000, ["root"], {"name": "root"}, True, 1.5])
async def test_a_run_as_user_that_is_not_a_string_is_rejected(tmp_path: Path, value: Any) -> None:
    make_handler_dir(tmp_path)
    marker = tmp_path / "ran"
    async with running_agent(tmp_path) as harness:
        status, details = await outcome(
            harness, "typed", command_step(f"touch,{marker}", runAsUser=value)
        )
        legacy_status, legacy = await outcome(
            harness, "legacy", {"operation": "ok.sh", "runAsUser": value}
        )
    assert status == legacy_status == "REJECTED"
    assert details["reason"].startswith(
        "steps[0].action.runAsUser: expected a user name (a string), got "
    )
    assert legacy["reason"].startswith("runAsUser: expected a user name (a string)")
    assert not marker.exists()


async def test_python_plugins_run_as_the_agent_or_are_rejected(
    tmp_path: Path, throwaway_user: str
) -> None:
    make_handler_dir(tmp_path)
    config = dataclasses.replace(make_config(tmp_path), handlers={"who": f"{__name__}:WhoPlugin"})
    PLUGIN_RUNS.clear()
    async with running_agent(tmp_path, config) as harness:
        assert await outcome(harness, "own", {"operation": "who", "runAsUser": "root"}) == (
            "SUCCEEDED",
            {"uid": "0"},
        )
        status, details = await outcome(
            harness, "other", {"operation": "who", "runAsUser": throwaway_user}
        )
        assert status == "REJECTED"
        assert details["reason"] == (
            f"runAsUser {throwaway_user!r}: 'who' is a Python plugin, which runs inside the agent"
            " as 'root' and cannot run as another user"
        )
        status, details = await outcome(
            harness, "missing", {"operation": "who", "runAsUser": "nx-x"}
        )
        assert (status, details["reason"]) == (
            "REJECTED",
            "runAsUser 'nx-x': no such user on this device",
        )
        status, details = await outcome(harness, "typed", {"operation": "who", "runAsUser": 0})
        assert status == "REJECTED" and "expected a user name" in details["reason"]
    restricted = dataclasses.replace(
        config, jobs=dataclasses.replace(config.jobs, allowed_users=(throwaway_user,))
    )
    async with running_agent(tmp_path, restricted) as harness:
        status, details = await outcome(harness, "restricted", {"operation": "who"})
        assert status == "REJECTED" and "not in jobs.allowed_users" in details["reason"]
    assert PLUGIN_RUNS == [0]
    assert pwd.getpwnam(throwaway_user).pw_uid != 0


async def test_the_deprecated_allow_root_false_still_refuses_root(tmp_path: Path) -> None:
    """A configuration of an earlier version keeps its meaning after the upgrade: root refused,
    for a step that names it and for one that runs as the (root) agent."""
    make_handler_dir(tmp_path)
    config = make_config(tmp_path)
    config = dataclasses.replace(config, jobs=dataclasses.replace(config.jobs, allow_root=False))
    async with running_agent(tmp_path, config) as harness:
        for job_id, document in (
            ("named", command_step("id,-u", runAsUser="root")),
            ("unnamed", command_step("id,-u")),
        ):
            status, details = await outcome(harness, job_id, document)
            assert status == "REJECTED"
            assert "jobs.allow_root: false refuses" in details["reason"]
            assert "stdout" not in details
