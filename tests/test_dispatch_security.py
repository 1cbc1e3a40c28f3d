"""What a job document must not be able to do: leave the handler directory, run code someone
else could have planted, pick an arbitrary user, or overwhelm the parser."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent_handlers.api import JobRejected


@pytest.fixture
def handler_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "handlers"
    directory.mkdir()
    directory.chmod(0o755)
    good = directory / "good.sh"
    good.write_text("#!/bin/sh\necho ok\n")
    good.chmod(0o755)
    return directory


def dispatcher(handler_dir: Path, **jobs: Any) -> Dispatcher:
    return Dispatcher(
        AgentConfig(thing_name="gw", jobs=JobsConfig(handler_dir=handler_dir, **jobs))
    )


def step(handler: str, path: str | None = None, user: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"handler": handler}
    if path is not None:
        data["path"] = path
    action: dict[str, Any] = {"name": "s", "type": "runHandler", "input": data}
    if user is not None:
        action["runAsUser"] = user
    return {"version": "1.0", "steps": [{"action": action}]}


def rejected(d: Dispatcher, document: dict[str, Any]) -> str:
    with pytest.raises(JobRejected) as info:
        d.resolve(document)
    return info.value.reason


def test_handler_names_cannot_leave_the_directory(tmp_path: Path, handler_dir: Path) -> None:
    outside = tmp_path / "evil.sh"
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    (handler_dir / "link.sh").symlink_to(outside)
    d = dispatcher(handler_dir)
    assert "is not a plain file name" in rejected(d, step("../evil.sh"))
    assert "is not a plain file name" in rejected(d, step(str(outside)))
    assert f"resolves to {outside}, outside the handler directory" in rejected(
        d, step("link.sh", "default")
    )
    assert "outside the handler directory" in rejected(d, step("good.sh", "/tmp"))
    assert "outside the handler directory" in rejected(d, step("good.sh", "../"))
    assert "outside the handler directory" in rejected(d, {"operation": "link.sh"})


def test_writable_handler_or_directory_is_refused(handler_dir: Path) -> None:
    d = dispatcher(handler_dir)
    (handler_dir / "good.sh").chmod(0o777)
    assert rejected(d, step("good.sh", "default")) == (
        f'step "s": handler {handler_dir / "good.sh"} is writable by others (mode 0777)'
    )
    (handler_dir / "good.sh").chmod(0o755)
    handler_dir.chmod(0o775)
    assert f"handler directory {handler_dir} is writable by its group (mode 0775)" in rejected(
        d, step("good.sh", "default")
    )


def test_handler_owned_by_another_user_is_refused(handler_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(handler_dir / "good.sh", 65534, 65534)
    assert "is owned by uid 65534, not by root or the agent's user" in rejected(
        dispatcher(handler_dir), step("good.sh", "default")
    )


def test_root_is_refused_only_where_the_site_leaves_it_out(handler_dir: Path) -> None:
    # Issue 13.1: the default runs what the Device Client runs, root included.
    assert dispatcher(handler_dir).resolve(step("good.sh", user="root"))
    restricted = dispatcher(handler_dir, allowed_users=("nobody",))
    assert rejected(restricted, step("good.sh", user="root")) == (
        "step \"s\": runAsUser 'root' is not in jobs.allowed_users (nobody)"
    )


def test_unknown_and_unlisted_users_are_refused(handler_dir: Path) -> None:
    d = dispatcher(handler_dir)
    assert "runAsUser 'no-such-user-x': no such user on this device" in rejected(
        d, step("good.sh", user="no-such-user-x")
    )
    if os.geteuid() == 0:
        assert "runAsUser 'nobody' is not in jobs.allowed_users" in rejected(
            dispatcher(handler_dir, allowed_users=("root",)), step("good.sh", user="nobody")
        )


def test_placeholder_user_and_path_mean_defaults(handler_dir: Path) -> None:
    document = step(
        "good.sh", "${aws:iot:parameter:pathToHandler}", "${aws:iot:parameter:runAsUser}"
    )
    plan = dispatcher(handler_dir).plan(document)
    assert plan[0].argv == (str(handler_dir / "good.sh"), "")


def test_oversized_and_deep_documents_are_rejected(handler_dir: Path) -> None:
    d = dispatcher(handler_dir)
    big = {"operation": "good.sh", "pad": "x" * 33000}
    assert "at most 32768 (32 KiB) are accepted" in rejected(d, big)
    deep: dict[str, Any] = {"operation": "good.sh"}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    assert rejected(d, deep) == "the job document is nested deeper than 32 levels"
