"""The configuration file: typed, validated, and errors an operator can act on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs_agent.config import AgentConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
thing_name: gw-001
connection:
  transport: awscrt
  endpoint: abc123-ats.iot.eu-west-1.amazonaws.com
  port: 8883
  cert: /etc/jobs-agent/device.pem.crt
  key: /etc/jobs-agent/private.pem.key
  ca: /etc/jobs-agent/AmazonRootCA1.pem
jobs:
  namespaces: [fleet-a]
  step_timeout_minutes: 10
  handler_dir: /etc/jobs-agent/handlers
state_dir: /var/lib/jobs-agent
log: {level: info, format: auto}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_good_config_loads_into_typed_objects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert isinstance(config, AgentConfig)
    assert config.thing_name == "gw-001"
    assert config.client_id == "gw-001"
    assert config.connection.port == 8883
    assert config.connection.cert == Path("/etc/jobs-agent/device.pem.crt")
    assert config.jobs.namespaces == ("fleet-a",)
    assert config.jobs.step_timeout_minutes == 10
    assert config.state_dir == Path("/var/lib/jobs-agent")


def test_bad_port_names_key_line_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port: 8883", "port: abc"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert 'connection.port: expected an integer from 1 to 65535, got "abc" (line 5)' in message


def test_unknown_key_is_an_error_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  port: 8883", "  prot: 8883"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert 'connection.prot: unknown key (did you mean "port"?) (line 5)' in str(info.value)


def test_a_duplicate_key_names_the_file_key_and_line(tmp_path: Path) -> None:
    """Like every other configuration error: an operator with several files sees which one."""
    path = write(tmp_path, GOOD + "thing_name: again\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: thing_name: duplicate key (line ")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "thingname: x\n")
    with pytest.raises(
        ConfigError, match=r'thingname: unknown key \(did you mean "thing_name"\?\)'
    ):
        load_config(path, environ={})


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "thing_name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML.*line 2"):
        load_config(path, environ={})


def test_a_node_yaml_cannot_build_safely_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    """A merge key (`<<: *anchor`) or an unknown tag: the configuration is refused with the file,
    the problem and its line, as any YAML fault is, not a PyYAML ConstructorError raised out of
    `load_config` (it was)."""
    for extra, line in (("base: &b {level: info}\nlog:\n  <<: *b\n", 3), ("x: !custom 1\n", 1)):
        path = write(tmp_path, GOOD.replace("log: {level: info, format: auto}\n", extra))
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        message = str(info.value)
        assert message.startswith(f"{path}: not valid YAML: "), message
        assert f"(line {line + 13}, column " in message, message


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(
        path,
        environ={"JOBS_AGENT_CONNECTION__PORT": "443", "JOBS_AGENT_THING_NAME": "gw-002"},
    )
    assert config.connection.port == 443
    assert config.thing_name == "gw-002"


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"JOBS_AGENT_JOBS__STEP_TIMEOUT_MINUTES": "0"})
    assert "jobs.step_timeout_minutes: expected an integer from 1 to 10080" in str(info.value)
    assert "environment JOBS_AGENT_JOBS__STEP_TIMEOUT_MINUTES" in str(info.value)


def test_greengrass_namespace_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[fleet-a]", "[aws-gg-deployment]"))
    with pytest.raises(ConfigError, match="belongs to the Greengrass nucleus"):
        load_config(path, environ={})


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("/etc/jobs-agent/handlers", "handlers"))
    assert load_config(path, environ={}).jobs.handler_dir == tmp_path / "handlers"


def test_missing_key_pair_half(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  key: /etc/jobs-agent/private.pem.key\n", ""))
    with pytest.raises(ConfigError, match=r"connection\.key: required"):
        load_config(path, environ={})


@pytest.mark.parametrize("name", ["gateway.yaml", "local.yaml", "bridge.yaml"])
def test_shipped_examples_are_valid(name: str) -> None:
    load_config(REPO / "config" / name, environ={})


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    # `config check` also checks the files the configuration names (issue 13.6): make them.
    for name in ("device.pem.crt", "private.pem.key", "AmazonRootCA1.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "handlers").mkdir(mode=0o755)
    good = write(tmp_path, GOOD.replace("/etc/jobs-agent/", ""))
    ok = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "config", "check", "--config", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 8883", 'port: "abc"'))
    result = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "config", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        'connection.port: expected an integer from 1 to 65535, got "abc" (line 5)' in result.stderr
    )


def test_unrelated_jobs_agent_variables_are_not_settings(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path, environ={"JOBS_AGENT_VENV": ".venv", "JOBS_AGENT_CRASH_AT": "x"})
    assert config.thing_name == "gw-001"


def test_unknown_key_in_a_section_override_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(
        ConfigError, match=r'connection\.prot: unknown key \(did you mean "port"\?\)'
    ):
        load_config(path, environ={"JOBS_AGENT_CONNECTION__PROT": "1"})


EDGE_SCALARS = """\
plain: text
quoted_number: "8883"
hex: 0x1F
octal: 0o17
old_octal: 017
underscored: 1_000
yes_is_true: yes
off_is_false: off
tilde: ~
empty:
infinity: .inf
float: 6.5e-1
day: 2001-12-14
moment: 2001-12-14t21:59:43.10-05:00
blob: !!binary aGVsbG8=
forced: !!str 42
folded: >
  two
  lines
list: [1, "1", one, {inner: [true, null]}]
anchor: &shared {a: 1}
alias: *shared
42: an integer key
"""


def test_the_values_are_what_yaml_safe_load_makes_of_them() -> None:
    """Scalars are built from the composed nodes (one parse of the file), and come out as
    `yaml.safe_load` of the same file makes them: every YAML 1.1 form a key may be given in."""
    import yaml

    from jobs_agent.config import _parse_yaml

    data, where = _parse_yaml(EDGE_SCALARS, "edge.yaml")
    assert data == yaml.safe_load(EDGE_SCALARS)
    assert where["42"] == "line 23"
    assert where["list"] == "line 20"


def test_the_file_is_parsed_once_whatever_its_number_of_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: each key and value used to be serialised and loaded again (a YAML emitter, and a
    scanner and parser per key: most of a start's configuration time); one parse suffices."""
    import yaml.parser

    parsers = []
    original = yaml.parser.Parser.__init__

    def counted(self: yaml.parser.Parser) -> None:
        parsers.append(self)
        original(self)

    monkeypatch.setattr(yaml.parser.Parser, "__init__", counted)
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.connection.port == 8883
    assert len(parsers) == 1


def test_a_key_left_without_a_value_is_named_not_a_yaml_traceback(tmp_path: Path) -> None:
    """`state_dir:` with nothing after it is null, as YAML says: an error that names the key and
    the line where null is not allowed, none where it is (an empty list). The old parse
    serialised the null and loaded it again, which raised a ParserError out of `load_config`."""
    path = write(tmp_path, GOOD.replace("state_dir: /var/lib/jobs-agent", "state_dir:"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "state_dir: expected a file system path, got null (line 13)" in str(info.value)
    path = write(tmp_path, GOOD.replace("  namespaces: [fleet-a]", "  namespaces:"))
    assert load_config(path, environ={}).jobs.namespaces == ()
