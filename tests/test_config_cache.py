"""The daemon's parse of its configuration file, kept in the state directory (issue 18): a start
with an unchanged file never imports PyYAML, and gets the very configuration, and the very
errors, a fresh parse gives. Anything but an exact, private, well-formed entry is a miss."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from jobs_agent import cli
from jobs_agent.config import AgentConfig, ConfigError, load_config
from jobs_agent.config_cache import CACHE_NAME, ParseCache
from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import AgentProcess, agent_config, config_yaml
from tests.test_startup_imports import hooked_env, loaded_modules

REPO = Path(__file__).resolve().parent.parent


def gateway_text(state_dir: Path) -> str:
    """The example gateway file of the repository (comments, flow collections, every section)
    with its state directory moved here."""
    text = (REPO / "config" / "gateway.yaml").read_text()
    return text.replace("state_dir: /var/lib/jobs-agent", f"state_dir: {state_dir}")


def write_config(tmp_path: Path, text: str) -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path, state


def load(path: Path, environ: dict[str, str] | None = None) -> tuple[AgentConfig, ParseCache]:
    cache = ParseCache()
    return load_config(path, environ=environ or {}, cache=cache), cache


def load_error(path: Path, environ: dict[str, str] | None = None) -> tuple[str, ParseCache]:
    cache = ParseCache()
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {}, cache=cache)
    return str(caught.value), cache


def test_a_hit_makes_the_configuration_a_fresh_parse_makes(tmp_path: Path) -> None:
    path, state = write_config(tmp_path, gateway_text(tmp_path / "state"))
    environ = {"JOBS_AGENT_LOG__LEVEL": "debug", "JOBS_AGENT_JOBS__KILL_GRACE_SECONDS": "3"}
    fresh = load_config(path, environ=environ)
    missed, cache = load(path, environ)
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.save(state)
    assert os.stat(state / CACHE_NAME).st_mode & 0o777 == 0o600
    assert os.listdir(state) == [CACHE_NAME]  # no temporary left beside it
    hit, cache = load(path, environ)
    assert (cache.hits, cache.misses) == (1, 0)
    assert fresh == missed == hit
    assert hit.log.level == "debug" and hit.jobs.kill_grace_seconds == 3
    assert not cache.save(state)  # a hit has nothing new to write


INVALID = {
    "port": ("connection:\n  transport: paho\n  endpoint: h\n  port: abc\n", {}),
    "misspelt": ("connection:\n  transport: paho\n  endpoint: h\njobs:\n  handler_dri: x\n", {}),
    "environment": (
        "connection:\n  transport: paho\n  endpoint: h\n",
        {"JOBS_AGENT_LOG__LEVEL": "x"},
    ),
    "whole": (
        "connection:\n  transport: paho\n  endpoint: h\njobs:\n  require_signature: on\n",
        {},
    ),
    "section": ("connection:\n  transport: paho\n  endpoint: h\nlog: [1, 2]\n", {}),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_hit_gives_the_errors_a_fresh_parse_gives(tmp_path: Path, case: str) -> None:
    """Errors name the key and its line: the cache keeps the lines with the data."""
    body, environ = INVALID[case]
    path, state = write_config(tmp_path, f"thing_name: gw-1\nstate_dir: {tmp_path}/state\n{body}")
    missed, cache = load_error(path, environ)
    assert cache.save(state)  # the parse is kept, valid configuration or not
    hit, cache = load_error(path, environ)
    assert cache.hits == 1
    assert hit == missed
    if case in ("port", "misspelt", "section"):
        assert "(line " in hit


def valid_entry(tmp_path: Path) -> tuple[Path, Path, AgentConfig]:
    path, state = write_config(tmp_path, gateway_text(tmp_path / "state"))
    config, cache = load(path)
    assert cache.save(state)
    return path, state, config


def entry(state: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((state / CACHE_NAME).read_text())
    return loaded


def spoil(state: Path, how: str) -> None:
    """Make the kept entry one that must not be used."""
    cached = state / CACHE_NAME
    content = cached.read_text()
    if how == "truncated":
        cached.write_text(content[: len(content) // 2])
    elif how == "garbage":
        cached.write_bytes(b"\xff\x00not json")
    elif how == "a list":
        cached.write_text("[]")
    elif how in ("another text", "another version", "data not a mapping", "where not lines"):
        changed = entry(state)
        if how == "another text":
            changed["text"] = str(changed["text"]) + "\n"
        elif how == "another version":
            changed["key"] = {**dict(changed["key"]), "agent": "0.0.1"}
        elif how == "data not a mapping":
            changed["data"] = [1]
        else:
            changed["where"] = {"thing_name": 4}
        cached.write_text(json.dumps(changed))
    elif how == "readable by others":
        cached.chmod(0o644)
    elif how == "owned by another user":
        os.chown(cached, 65534, 65534)
    elif how == "a hard link":
        os.link(cached, state / "other-name")
    elif how == "a symlink":
        cached.rename(state / "elsewhere.json")
        cached.symlink_to(state / "elsewhere.json")
    elif how == "a directory":
        cached.unlink()
        cached.mkdir()


SPOILT = [
    "truncated",
    "garbage",
    "a list",
    "another text",
    "another version",
    "data not a mapping",
    "where not lines",
    "readable by others",
    "owned by another user",
    "a hard link",
    "a symlink",
    "a directory",
]


@pytest.mark.parametrize("how", SPOILT)
def test_anything_but_an_exact_private_entry_is_a_miss(tmp_path: Path, how: str) -> None:
    path, state, config = valid_entry(tmp_path)
    spoil(state, how)
    again, cache = load(path)
    assert (cache.hits, cache.misses) == (0, 1)
    assert again == config
    written = cache.save(state)  # and the next start has a good entry again
    assert written == (how != "a directory")
    if written:
        assert load(path)[1].hits == 1


def test_an_entry_that_names_another_state_directory_is_not_used(tmp_path: Path) -> None:
    """The entry is looked for in the state directory the text's `state_dir:` line names; one
    whose data names another is a parse the file does not make: the file is parsed."""
    path, state, config = valid_entry(tmp_path)
    forged = entry(state)
    forged["data"] = {**dict(forged["data"]), "state_dir": str(tmp_path / "other")}
    (state / CACHE_NAME).write_text(json.dumps(forged))
    again, cache = load(path)
    assert (cache.hits, cache.misses) == (0, 1)
    assert again == config and again.state_dir == state


NOT_KEPT = {
    "a date": "day: 2001-12-14\n",
    "an integer key": "42: x\n",
    "an infinite float": "jobs:\n  kill_grace_seconds: .inf\n",
    "binary": "blob: !!binary aGVsbG8=\n",
}


@pytest.mark.parametrize("case", sorted(NOT_KEPT))
def test_a_parse_json_cannot_give_back_exactly_is_not_kept(tmp_path: Path, case: str) -> None:
    path, state = write_config(
        tmp_path, f"thing_name: gw-1\nstate_dir: {tmp_path}/state\n{NOT_KEPT[case]}"
    )
    cache = ParseCache()
    with pytest.raises(ConfigError):
        load_config(path, environ={}, cache=cache)
    assert cache.misses == 1
    assert not cache.save(state)
    assert not (state / CACHE_NAME).exists()


def test_nothing_is_kept_where_it_would_not_be_looked_for(tmp_path: Path) -> None:
    """A state directory the text does not name on a plain `state_dir:` line (here: in a flow
    mapping) is not where the next start looks: nothing is written there."""
    text = f"{{thing_name: gw-1, state_dir: {tmp_path}/state, connection: {{transport: local}}}}\n"
    path, state = write_config(tmp_path, text)
    config, cache = load(path)
    assert config.state_dir == state
    assert not cache.save(state)
    assert not (state / CACHE_NAME).exists()


def test_a_file_that_holds_a_secret_is_never_copied(tmp_path: Path) -> None:
    """The agent keeps no second copy of a secret: a file with a paho `password` is parsed on
    every start, and its text (which holds the password) is never written to the state
    directory. Without the password the same file is kept."""
    base = (
        f"thing_name: gw-1\nstate_dir: {tmp_path}/state\n"
        "connection:\n  transport: paho\n  endpoint: broker.example\n  username: u\n"
    )
    path, state = write_config(tmp_path, base + "  password: s3cret-in-the-file\n")
    config, cache = load(path)
    assert config.connection.password == "s3cret-in-the-file"  # type: ignore[attr-defined]
    assert not cache.save(state)
    assert os.listdir(state) == []
    path.write_text(base)
    _, cache = load(path)
    assert cache.save(state)
    assert "s3cret" not in (state / CACHE_NAME).read_text()


def test_config_check_neither_reads_nor_writes_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` says what the file says: it parses it, and keeps nothing."""
    path, state = write_config(
        tmp_path,
        f"thing_name: gw-1\nstate_dir: {tmp_path}/state\nconnection: {{transport: local}}\n"
        f"jobs: {{handler_dir: {tmp_path}}}\n",
    )
    cli.main(["config", "check", "--config", str(path)])
    assert not (state / CACHE_NAME).exists()
    assert "gw-1" in capsys.readouterr().out + str(load_config(path, environ={}).thing_name)


THING = "gw-parse-cache"


async def test_a_restart_with_the_same_file_never_imports_yaml(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """A real `jobs-agent run`: its first start parses the file (PyYAML loaded) and keeps the
    parse; the next start with the same file reads it back and never loads PyYAML, nor does a
    SIGHUP with the file unchanged; a SIGHUP after an edit parses again. (Its environment has
    a `JOBS_AGENT_*` name that is not a setting, the hook's: that loads no PyYAML either.)"""
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    env, dump = hooked_env(tmp_path)
    agent = AgentProcess(config_path=path, workdir=tmp_path, env=env)
    try:
        agent.start()
        await agent.wait_ready()
        assert "yaml" in await loaded_modules(agent, dump)
        assert (config.state_dir / CACHE_NAME).stat().st_mode & 0o777 == 0o600
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0

        agent.start()
        await agent.wait_ready()
        assert "yaml" not in await loaded_modules(agent, dump)
        agent.signal(signal.SIGHUP)
        await agent.wait_message("STATUS=configuration reloaded")
        assert "yaml" not in await loaded_modules(agent, dump)
        path.write_text(config_yaml(config).replace("level: debug", "level: info"))
        agent.signal(signal.SIGHUP)
        await agent.wait_message("STATUS=configuration reloaded")
        assert "yaml" in await loaded_modules(agent, dump)
        assert entry(config.state_dir)["text"] == path.read_text()
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
    finally:
        agent.kill()


def test_the_state_directory_of_the_environment_or_a_relative_one_holds_the_entry(
    tmp_path: Path,
) -> None:
    """`JOBS_AGENT_STATE_DIR` names the directory the entry is kept in; a relative
    `state_dir:` is the one beside the file, as the configuration resolves it."""
    path, state = write_config(tmp_path, "thing_name: gw-1\nstate_dir: state\n")
    config, cache = load(path)
    assert config.state_dir == state and cache.save(state)
    assert load(path)[1].hits == 1
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    environ = {"JOBS_AGENT_STATE_DIR": str(other)}
    config, cache = load(path, environ)
    assert config.state_dir == other and cache.misses == 1
    assert not cache.save(state) and load(path, environ)[1].misses == 1
    cache = load(path, environ)[1]
    assert cache.save(other)
    hit, cache = load(path, environ)
    assert cache.hits == 1 and hit.state_dir == other
