"""The agent's JSON text with an encoder built once (`jobs_agent.jsontext`, issue 18): the same
text as the standard library's, value for value, and its errors, but for a container that holds
itself (which none of its callers can give it)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent import jsontext

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(derandomize=True, max_examples=300)
@given(VALUES)
def test_the_text_is_the_standard_library_s(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value)
    assert jsontext.compact(value) == json.dumps(value, separators=(",", ":"))


UNICODE_COMPACT = jsontext.encoder((",", ":"), ensure_ascii=False)


@settings(derandomize=True, max_examples=300)
@given(VALUES)
def test_the_unicode_text_is_the_standard_library_s(value: Any) -> None:
    """`ensure_ascii=False` (the router's size check of a document): characters beyond ASCII
    as they are, escapes only where JSON needs them."""
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert UNICODE_COMPACT(value) == expected
    assert UNICODE_COMPACT(value).encode() == expected.encode()


def test_the_unicode_text_keeps_what_ascii_escapes() -> None:
    value = {"é": '\u2028\x00"\\ ü', "k": ["ß", math.inf]}
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert UNICODE_COMPACT(value) == expected
    assert "é" in expected and "\\u00e9" not in expected
    assert UNICODE_COMPACT("top é") == json.dumps("top é", ensure_ascii=False)


@pytest.mark.parametrize(
    "value",
    [
        {"é": '\u2028\x00"\\', 3: 2.5, 2.0: None, False: [math.inf, -math.inf], None: ()},
        OrderedDict([("b", 1), ("a", 2)]),
        "plain text at the top",
        10**40,
        [],
        {},
    ],
)
def test_keys_and_values_the_json_module_converts_are_converted_alike(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value)
    assert jsontext.compact(value) == json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("value", [{"a": object()}, {(1, 2): "tuple key"}, {"a": {1, 2}}, b"x"])
def test_what_the_json_module_refuses_is_refused_in_its_words(value: Any) -> None:
    with pytest.raises(TypeError) as standard:
        json.dumps(value)
    with pytest.raises(TypeError) as ours:
        jsontext.dumps(value)
    assert str(ours.value) == str(standard.value)
    # a refused value leaves nothing behind: the next encode of the same objects works
    assert jsontext.compact({"again": [1, 2]}) == '{"again":[1,2]}'


def test_a_container_that_holds_itself_is_the_one_difference() -> None:
    """No caller can hand one over (decoded JSON and the agent's own models' dicts); the
    module's docstring says so."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        json.dumps(loop)
    with pytest.raises(RecursionError):
        jsontext.dumps(loop)
