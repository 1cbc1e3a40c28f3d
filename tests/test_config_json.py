"""A configuration written as JSON is read without PyYAML, into what PyYAML would read (issue 18).

`config_json.plain_json` gives a JSON object's settings only where YAML reads the same text
alike, and None elsewhere (the YAML reader then reads it as before). These tests hold its data
against PyYAML's on the project's example files written as JSON and on generated JSON, check that
each case where the two differ goes to YAML, and that a real load of a JSON file (as the
benchmarks and the Device Client write one) never imports PyYAML, while a refused setting is
still named with its line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yaml.reader import Reader

from jobs_agent.config import ConfigError, load_config
from jobs_agent.config_json import _NOT_ALIKE, plain_json
from jobs_agent.config_yaml import YamlProblem, parse_yaml
from tests.hypothesis_profiles import examples

REPO = Path(__file__).resolve().parent.parent


def yaml_reads(text: str) -> dict[str, Any] | None:
    try:
        return parse_yaml(text)[0]
    except YamlProblem:
        return None


@pytest.mark.parametrize("name", ["gateway.yaml", "bridge.yaml", "greengrass.yaml", "local.yaml"])
def test_the_examples_written_as_json_read_as_yaml_reads_them(name: str) -> None:
    data = parse_yaml((REPO / "config" / name).read_text())[0]
    for text in (json.dumps(data), json.dumps(data, indent=2), json.dumps(data, indent=4)):
        assert plain_json(text) == data == yaml_reads(text)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
DATA = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


PRINTABLE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=["Cs"])
)
"""Text as settings hold it (every generated text of `DATA` is mostly left to YAML)."""
SETTINGS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(-1e20, 1e20) | PRINTABLE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(PRINTABLE, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=examples(0.2))
@given(
    st.dictionaries(st.text(), DATA, max_size=6) | st.dictionaries(PRINTABLE, SETTINGS),
    st.sampled_from([None, 2]),
    st.booleans(),
)
def test_json_read_without_yaml_is_what_yaml_reads(
    data: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=ascii_only)
    plain = plain_json(text)
    if plain is not None:
        assert plain == yaml_reads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1e3}',  # YAML 1.1: the string "1e3"
        '{"a": 1.5e3}',  # an exponent without its sign: a string too
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": 1, "a": 2}',  # YAML names the key and its line
        json.dumps({"\u0301" * 171: 1}),  # over YAML's 1,024 characters of a key
        '{"a": "\\ud83d\\ude00"}',  # YAML keeps the two halves
        '{\n\t"a": 1\n}',
        '{"a": "x\x85y"}',  # a line break to YAML, folded
        '{"a": "x\u2028y"}',
        '{"a": "x\x7fy"}',  # a character YAML refuses
        '["a"]',
        "a: 1",
        '{"a": 1} x',
    ],
)
def test_what_yaml_would_read_otherwise_is_left_to_yaml(text: str) -> None:
    assert plain_json(text) is None


def test_every_character_yaml_refuses_or_folds_is_left_to_yaml() -> None:
    """The characters are listed, not written as the complement of what PyYAML's reader
    accepts: the same set, held against the reader's own pattern over all of Unicode."""
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    folded = {"\t", "\x85", "\u2028", "\u2029"}
    assert set(_NOT_ALIKE.findall(every)) == set(Reader.NON_PRINTABLE.findall(every)) | folded


def test_the_check_compiles_without_stepping_through_unicode() -> None:
    """It is compiled at every start that reads a JSON file (the benchmarks', the Device
    Client's): written as the complement of what YAML accepts, its compile stepped through some
    55,000 code points in Python, 132,180 traced events and 3.5 ms of CPU; listed, 7,967 events
    and 0.4 ms (issue 18)."""
    events = 0

    def count(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal events
        events += 1
        return count

    previous = sys.gettrace()
    re.purge()
    sys.settrace(count)
    try:
        re.compile(_NOT_ALIKE.pattern)
    finally:
        sys.settrace(previous)
    assert events < 20_000


LOAD = """
import json, sys
from pathlib import Path
from jobs_agent.config import ConfigError, load_config
config = load_config(Path(sys.argv[1]))
print(json.dumps({"thing": config.thing_name, "yaml": "yaml" in sys.modules}))
"""


def test_a_json_file_loads_without_pyyaml(tmp_path: Path) -> None:
    """A first start with a JSON file (no kept parse) imports no PyYAML: before, 0.9-1.0 MB
    resident for the agent's life (the startup benchmark's agents have such a file)."""
    path = tmp_path / "config.json"
    settings_ = {
        "thing_name": "gw-json",
        "connection": {"transport": "paho", "endpoint": "127.0.0.1", "port": 1883, "tls": False},
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "warning", "format": "json"},
    }
    path.write_text(json.dumps(settings_, indent=2))
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {"thing": "gw-json", "yaml": False}
    assert load_config(path) == load_config(path, cache=None)


def test_a_refused_setting_of_a_json_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "thing_name": "gw",\n  "connection": {"transport": "paho", "port": 0}\n}')
    with pytest.raises(ConfigError, match=r"connection\.port: .*\(line 3\)"):
        load_config(path)
