"""Options belong to their owners: the `connection:` section is checked against the options of
the transport it names, and the engine and the dispatcher receive settings of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs_agent.config import ConfigError, load_config
from jobs_agent.dispatch import DispatchSettings
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.transport.options import AwscrtOptions, GreengrassOptions, PahoOptions

BRIDGE = """\
thing_name: gw-001
connection:
  transport: paho
  endpoint: 127.0.0.1
  port: 1883
  tls: false
{extra}jobs:
  step_timeout_minutes: 7
  kill_grace_seconds: 2.5
  namespaces: [fleet-a]
state_dir: /var/lib/jobs-agent
"""


def load(tmp_path: Path, extra: str = "") -> object:
    path = tmp_path / "config.yaml"
    path.write_text(BRIDGE.format(extra=extra))
    return load_config(path, environ={})


def test_the_connection_section_is_the_named_backends_own_options(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert isinstance(config.connection, PahoOptions)  # type: ignore[attr-defined]
    assert config.connection.tls is False  # type: ignore[attr-defined]


def test_an_option_of_another_backend_names_that_backend_and_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "  websocket: true\n")
    assert "connection.websocket: not an option of transport paho (it is one of awscrt)" in str(
        info.value
    )
    assert "(line 7)" in str(info.value)


def test_an_unknown_option_still_suggests_the_backends_own(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connection\.keepalive: unknown key \(did you mean"):
        load(tmp_path, "  keepalive: 30\n")


def test_the_engine_and_the_dispatcher_get_the_settings_they_read(tmp_path: Path) -> None:
    config = load(tmp_path)
    engine = config.engine_settings()  # type: ignore[attr-defined]
    dispatch = config.dispatch_settings()  # type: ignore[attr-defined]
    assert isinstance(engine, EngineSettings)
    assert (engine.step_timeout_minutes, engine.namespaces) == (7, ("fleet-a",))
    assert isinstance(dispatch, DispatchSettings)
    assert (dispatch.kill_grace_seconds, dispatch.thing_name) == (2.5, "gw-001")
    assert engine.state_dir == dispatch.state_dir == Path("/var/lib/jobs-agent")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (PahoOptions(), "endpoint"),
        (AwscrtOptions(endpoint="e"), "cert and connection.key"),
        (AwscrtOptions(endpoint="e", websocket=True), None),
        (
            GreengrassOptions(reconnect_min_seconds=9, reconnect_max_seconds=1),
            "reconnect_min_seconds",
        ),
    ],
)
def test_each_backend_checks_the_rules_between_its_options(
    options: object, problem: str | None
) -> None:
    found = [name for name, _ in options.problems()]  # type: ignore[attr-defined]
    assert found[:1] == ([problem] if problem else [])
