"""A configuration file written as JSON, read without PyYAML when YAML would read it alike.

JSON is YAML's flow style, and the AWS IoT Device Client's configuration, provisioning tools and
the benchmarks write it so. For such a file the `json` module gives the very data PyYAML would
give, at a first start too, so the agent never imports PyYAML (0.9-1.0 MB resident for its whole
life, and its import and parse before the first request; issue 18). Where the two could differ
the text is handed to the YAML reader as before (`plain_json` returns None): a float YAML 1.1
reads as a string (`1e3`), NaN or Infinity, a key given twice (YAML names its line) or too long
for YAML, a surrogate pair escape, a tab, a character YAML takes for a line break inside a
string or refuses. The settings read here carry no lines: a setting they make the agent refuse
is read again by the YAML reader, whose error names the line (`config.load_config`).
"""

from __future__ import annotations

import json
import re
from typing import Any

_YAML_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+(?:[eE][-+][0-9]+)?\Z")
"""The JSON floats PyYAML's YAML 1.1 resolver also reads as floats (a dot, a signed exponent)."""

_NOT_ALIKE = re.compile(
    # what YAML refuses (C0 and C1 controls but a tab and line ends, surrogates, \ufffe, \uffff),
    # a tab, and what YAML folds as a line break inside a string (\x85, \u2028, \u2029)
    r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u2028\u2029]"
    r"|\\u[dD][89abAB]",  # a surrogate pair's escape: YAML keeps its halves apart
)
"""The characters listed as they are, not as the complement of those PyYAML's reader accepts
(its NON_PRINTABLE), which is the same set: compiling the complement walked some 55,000 code
points in Python, 3.5 ms of CPU at every start that reads a JSON file (0.4 ms listed)."""


class _Unlike(ValueError):
    """A part of the text that YAML would read otherwise."""


_KEY_CHARACTERS = 170
"""YAML reads a key of at most 1,024 characters of text: this many, each escaped in 6."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Unlike("a key given twice")
    if any(len(key) > _KEY_CHARACTERS for key in result):
        raise _Unlike("a key longer than YAML reads")
    return result


def _float(literal: str) -> float:
    if not _YAML_FLOAT.match(literal):
        raise _Unlike(literal)
    return float(literal)


def _constant(name: str) -> Any:
    raise _Unlike(name)


def plain_json(text: str) -> dict[str, Any] | None:
    """The settings of a file that is a JSON object YAML reads alike, else None."""
    if not text.lstrip(" \n\r").startswith("{") or _NOT_ALIKE.search(text):
        return None
    try:
        data = json.loads(
            text, object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant
        )
    except ValueError:  # not JSON, unlike YAML, or an integer past Python's digit limit
        return None
    return data if isinstance(data, dict) else None
