"""The configuration file's YAML is composed by libyaml's parser where PyYAML has it, and reads
exactly as the pure-Python parser reads it: the same data, the same line for every key, and a
faulty text refused in the pure parser's words (issue 18: a first start's parse)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs_agent import config_yaml
from jobs_agent.config_yaml import YamlProblem, parse_yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))
TEXTS = [path.read_text() for path in EXAMPLES] + [
    "a: &x {b: 1, c: [1, 2]}\nd: *x\n",
    "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14\nc: 1e3\nd: 0o17\ne: 017\nf: yes\ng: ~\n",
    "h: .inf\ni: -.NaN\nj: 12:30:00\nk: 0x1F\nl: 1_000\nm: +12\nn: 'on'\no: on\n",
    "s: |\n  line one\n  line two\nt: >\n  folded\n  text\n",
    "u: 'héllo ✓'\nv: \"esc\\u00e9\\n\"\nw: !!binary aGVsbG8=\nx: !!set {a, b}\n",
    "k: v # comment\n# c\nl:\n- 1\n- - 2\n  - 3\n",
    "a: 1\n",
    "",
    "# only a comment\n",
    "a:\n",
    "? complex\n: value\n",
]
FAULTY = [
    "a: [1, 2\n",
    "a: b: c\n",
    "\ta: 1\n",
    "a: 'x\n",
    "- a\nb: 1\n",
    "a: *nope\n",
    "a: 1\n a: 2\n",
    "a: 1\na: 2\n",
    "- just\n- a list\n",
]


def outcome(text: str) -> Any:
    try:
        return parse_yaml(text)
    except YamlProblem as exc:
        return type(exc).__name__, str(exc)


def pure_outcome(text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(config_yaml, "_LIBYAML_LOADER", None)
        return outcome(text)


@pytest.mark.parametrize("text", TEXTS + FAULTY)
def test_a_text_reads_as_the_pure_python_parser_reads_it(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert repr(outcome(text)) == repr(pure_outcome(text, monkeypatch))


def test_a_first_parse_makes_few_python_calls() -> None:
    """The example gateway.yaml (61 lines) in 572 Python calls, where the pure-Python
    parser took 14,339: counted, not timed."""
    if getattr(yaml, "CSafeLoader", None) is None:
        pytest.skip("PyYAML without libyaml")
    text = (REPO / "config" / "gateway.yaml").read_text()
    parse_yaml(text)  # imports done
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        data, where = parse_yaml(text)
    finally:
        sys.setprofile(None)
    assert (data["thing_name"], where["thing_name"]) == ("gw-001", "line 4")
    assert calls < 1_000, calls
