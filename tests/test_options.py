"""Options belong to their owners: the `connection:` section is checked against the options of
the transport it names, and the engine and the dispatcher receive settings of their own."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from jobs_agent.config import ConfigError, load_config
from jobs_agent.dispatch import DispatchSettings
from jobs_agent.engine.settings import EngineSettings
from jobs_agent.option_rules import is_secret, rule_of
from jobs_agent.transport.options import (
    AwscrtOptions,
    GreengrassOptions,
    LocalOptions,
    MqttOptions,
    PahoOptions,
    TransportOptions,
)

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


def test_the_system_update_section_reaches_the_dispatcher_and_its_absence_the_defaults(
    tmp_path: Path,
) -> None:
    """An agent without a `system_update:` section does not build its settings at load (their
    module loads at the first job that runs the handler, issue 18): the dispatcher still gets
    the handler's defaults, and a section's values when the file has one, checked at load."""
    from jobs_agent_handlers.system_update.settings import SystemUpdateSettings

    absent = load(tmp_path)
    assert absent.system_update is None  # type: ignore[attr-defined]
    assert absent.dispatch_settings().system_update == SystemUpdateSettings()  # type: ignore[attr-defined]
    given = load(tmp_path, "system_update:\n  install_timeout_seconds: 60\n")
    assert given.dispatch_settings().system_update.install_timeout_seconds == 60  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"system_update\.install_timeout_seconds: expected"):
        load(tmp_path, "system_update:\n  install_timeout_seconds: soon\n")


def test_relative_system_update_paths_are_relative_to_the_configuration_file(
    tmp_path: Path,
) -> None:
    """As every other path of the file (README): SWUpdate's certificate named `certs/ca.pem`
    is the one beside the configuration, not one below whatever directory the agent runs in."""
    config = load(tmp_path, "system_update:\n  swupdate_ca_certificate: certs/ca.pem\n")
    section = config.system_update  # type: ignore[attr-defined]
    assert section.swupdate_ca_certificate == tmp_path.resolve() / "certs" / "ca.pem"
    assert section.swupdate_cmdline_path == Path("/proc/cmdline")


def test_a_reload_that_adds_a_system_update_section_names_only_its_keys(tmp_path: Path) -> None:
    from jobs_agent.daemon import changed_settings

    before = load(tmp_path)
    after = load(tmp_path, "system_update:\n  install_timeout_seconds: 60\n")
    changed = changed_settings(before, after)  # type: ignore[arg-type]
    assert changed == ["system_update.install_timeout_seconds"]
    assert changed_settings(after, before) == changed  # type: ignore[arg-type]


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


async def test_a_reload_reaches_the_engine_and_the_dispatcher(tmp_path: Path) -> None:
    """SIGHUP's path: new settings go to the engine through `reconfigure`, new handlers through
    a new dispatcher; a job taken after the reload runs a handler only the new directory has."""
    from jobs_agent.daemon import Agent
    from jobs_agent.emulator.embedded import EmbeddedEmulator
    from jobs_agent.transport.local import LocalBus, LocalTransport
    from tests.helpers.agent_harness import write_script

    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    for directory in (old_dir, new_dir):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
    write_script(new_dir, "only-new.sh", "echo from the new directory\n")
    path = tmp_path / "config.yaml"
    text = (
        "thing_name: gw-reload\nconnection: {transport: local}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "jobs: {handler_dir: %s, step_timeout_minutes: 10}\n"
    )
    path.write_text(text % old_dir)
    bus = LocalBus()
    emulator = EmbeddedEmulator(bus, tick_seconds=None)
    await emulator.start()
    agent = Agent(
        load_config(path, environ={}), config_path=path, transport=LocalTransport(bus, "gw-reload")
    )
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(15):
            await agent.ready.wait()
        path.write_text(
            (text % new_dir).replace("step_timeout_minutes: 10", "step_timeout_minutes: 42")
        )
        assert await agent.reload() is True
        assert agent.engine is not None
        assert agent.engine.settings.step_timeout_minutes == 42
        emulator.service.create_job("after-reload", ["gw-reload"], {"operation": "only-new.sh"})
        await emulator.service.wait_for(
            lambda: (
                str(emulator.service.execution("after-reload", "gw-reload").status) == "SUCCEEDED"
            ),
            timeout=15,
        )
    finally:
        agent.request_stop()
        agent.request_stop()
        async with asyncio.timeout(15):
            await task
        await emulator.stop()


def _shape(owner: type, name: str) -> tuple[object, ...]:
    field = next(f for f in dataclasses.fields(owner) if f.name == name)  # type: ignore[arg-type]
    rule = rule_of(field)
    return (
        field.type,
        field.default,
        field.default_factory,
        None if rule is None else (rule.expected, rule.explains),
        is_secret(field),
    )


def test_the_options_two_mqtt_backends_share_are_declared_alike() -> None:
    """`PahoOptions` and `AwscrtOptions` each declare the options of `MqttOptions` (and the
    client id of `TransportOptions`) themselves, so that dataclasses does not compile a frozen
    pair per class at every start (issue 18): the two lists, written twice, must not drift
    apart. Each shared option has the same type, default, rule and secrecy in every backend,
    and every backend declares every option its base's rules read."""
    shared = [*TransportOptions.__annotations__, *MqttOptions.__annotations__]
    shared = [name for name in shared if name != "transport" and not name.startswith("__")]
    assert "password" in shared and "client_id" in shared
    for name in shared:
        assert _shape(PahoOptions, name) == _shape(AwscrtOptions, name), name
    for owner in (LocalOptions, GreengrassOptions):
        assert _shape(owner, "client_id") == _shape(PahoOptions, "client_id")
