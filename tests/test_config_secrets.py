"""A wrong `connection.password` is reported by key and line, never echoed: not by `config
check`, not in the log line of a refused reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs_agent.config import ConfigError, load_config
from jobs_agent.daemon import Agent
from tests.helpers.agent_harness import captured_logs

SECRET = "hunter2-s3cret"
BASE = """\
thing_name: gw-001
connection:
  transport: paho
  endpoint: 127.0.0.1
  tls: false
  username: jobs-agent
  password: {password}
state_dir: {state}
"""


@pytest.mark.parametrize(
    ("password", "kind"),
    [
        (f"[{SECRET}, other]", "list"),
        (f"{{key: {SECRET}}}", "mapping"),
        ("true", "boolean"),
    ],
)
def test_a_password_of_the_wrong_type_is_not_echoed(
    tmp_path: Path, password: str, kind: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(password=password, state=tmp_path / "state"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"{path}: connection.password: expected a string, got a {kind} (its value is not shown:"
        " it is a secret) (line 7)"
    )
    check = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode != 0
    assert "connection.password" in check.stderr
    assert SECRET not in check.stdout + check.stderr


async def test_a_refused_reload_does_not_log_the_password(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(password="good-one", state=tmp_path / "state"))
    agent = Agent(load_config(path, environ={}), config_path=path)
    path.write_text(BASE.format(password=f"[{SECRET}]", state=tmp_path / "state"))
    with captured_logs("debug") as logs:
        assert await agent.reload() is False
    assert "reload refused" in logs.text
    assert "connection.password" in logs.text
    assert SECRET not in logs.text
