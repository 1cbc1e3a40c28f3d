"""statusDetails sanitising: whatever goes in, what comes out is accepted by the service."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent.jobs import status_details
from jobs_agent.jobs.status_details import (
    MAX_VALUE_LENGTH,
    clean_value,
    sanitize_status_details,
    utf16_length,
    validate_status_details,
)

CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("plain strings pass", {"reason": "ok", "step": "2/3"}, {"reason": "ok", "step": "2/3"}),
    ("newlines escaped visibly", {"stdout": "a\nb\r\nc"}, {"stdout": "a\\nb\\nc"}),
    ("tab and lone CR escaped", {"m": "a\tb\rc"}, {"m": "a\\tb\\rc"}),
    ("other controls removed", {"m": "a\x00b\x1b[31mc\x7f"}, {"m": "ab[31mc"}),
    ("format chars removed", {"m": "a\u200bb\ufeffc"}, {"m": "abc"}),
    (
        "non-strings JSON-encoded",
        {"n": 3, "b": True, "l": [1, "x"]},
        {
            "n": "3",
            "b": "true",
            "l": '[1,"x"]',
        },
    ),
    ("None and empty dropped", {"a": None, "b": "", "c": "\x00", "d": "x"}, {"d": "x"}),
    ("bad key chars replaced", {"exit code": "1", "a/b": "2"}, {"exit_code": "1", "a_b": "2"}),
    ("empty key dropped", {"": "v", "k": "v"}, {"k": "v"}),
    ("colliding key keeps first", {"a b": "1", "a_b": "2"}, {"a_b": "1"}),
    ("long key cut", {"k" * 200: "v"}, {"k" * 128: "v"}),
    ("non-ASCII kept", {"m": "température ✓"}, {"m": "température ✓"}),
]


@pytest.mark.parametrize(("name", "given_details", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sanitize_table(name: str, given_details: dict[str, Any], expected: dict[str, str]) -> None:
    assert sanitize_status_details(given_details) == expected


def test_log_keys_keep_the_tail_others_the_head() -> None:
    out = "".join(f"line {i}\n" for i in range(1000))
    result = sanitize_status_details({"stdout": out, "stderr": out, "reason": out, "message": out})
    for key in ("stdout", "stderr"):
        assert len(result[key]) == MAX_VALUE_LENGTH
        assert result[key].startswith("…")
        assert result[key].endswith("line 999\\n")
    for key in ("reason", "message"):
        assert len(result[key]) == MAX_VALUE_LENGTH
        assert result[key].startswith("line 0\\nline 1\\n")
        assert result[key].endswith("…")


def test_tail_keys_are_configurable() -> None:
    result = sanitize_status_details({"trace": "x" * 2000 + "END"}, tail_keys=("trace",))
    assert result["trace"].endswith("END")


def test_length_counts_utf16_units() -> None:
    emoji = "\U0001f600"
    assert utf16_length(emoji) == 2
    result = sanitize_status_details({"stdout": emoji * 600})
    assert utf16_length(result["stdout"]) <= MAX_VALUE_LENGTH
    assert validate_status_details({"m": emoji * 513}) is not None
    assert validate_status_details({"m": emoji * 512}) is None


def test_at_most_ten_pairs_reason_first() -> None:
    details = {f"k{i}": str(i) for i in range(15)}
    details["reason"] = "why"
    result = sanitize_status_details(details)
    assert len(result) == 10
    assert next(iter(result)) == "reason"
    assert list(result)[1:] == [f"k{i}" for i in range(9)]


@pytest.mark.parametrize(
    ("details", "problem"),
    [
        ("text", "object"),
        ({"k": 1}, "string"),
        ({"k": ""}, "empty"),
        ({"bad key": "v"}, "key"),
        ({"": "v"}, "key"),
        ({"k" * 129: "v"}, "key"),
        ({"k": "x" * 1025}, "longer"),
        ({"k": "a\nb"}, "U+000A"),
        ({"k": "a\u200bb"}, "U+200B"),
        ({f"k{i}": "v" for i in range(11)}, "at most"),
    ],
)
def test_validate_names_the_problem(details: object, problem: str) -> None:
    message = validate_status_details(details)
    assert message is not None and problem in message


def test_validate_accepts_limits() -> None:
    assert validate_status_details({}) is None
    assert validate_status_details({"k" * 128: "x" * 1024, "a:b_c-D": "v"}) is None


_keys = st.one_of(st.text(max_size=140), st.integers(), st.text(alphabet="abc:_-", max_size=3))
_values = st.one_of(
    st.none(),
    st.text(max_size=1500),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.text(max_size=20), max_size=5),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=15), st.lists(st.text(max_size=8), max_size=3))
def test_sanitized_output_always_validates(details: dict[Any, Any], tails: list[str]) -> None:
    result = sanitize_status_details(details, tail_keys=tails)
    assert validate_status_details(result) is None
    # nothing usable is lost: a valid pair that fits passes through unchanged
    for key, value in details.items():
        if (
            key == "reason"
            and isinstance(value, str)
            and validate_status_details({key: value}) is None
        ):
            assert result["reason"] == value


# -- the per-character work is only for text that needs it (issue 18) -------------------------
def _clean_one_by_one(text: str) -> str:
    """`clean_value` as it was: every character looked at in Python."""
    text = text.replace("\r\n", "\n")
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(
        escapes.get(ch, ch)
        for ch in text
        if ch in escapes or not unicodedata.category(ch).startswith("C")
    )


def test_every_character_is_cleaned_and_counted_as_before() -> None:
    """All of Unicode but planes 4-13 (unassigned, like many code points tested here), in lines
    with line breaks and tabs: the fast paths (`isprintable`, ASCII
    `translate`, the UTF-16 codec) give what the per-character rules give, and no printable
    character is one the service refuses (`validate_status_details` trusts `isprintable`)."""
    codes = [*range(0x40000), *range(0xE0000, sys.maxunicode + 1)]
    everything = [chr(code) for code in codes]
    text = "\r\n".join(
        "".join(everything[i : i + 997]) + "\t" for i in range(0, len(everything), 997)
    )
    assert clean_value(text) == _clean_one_by_one(text)
    assert utf16_length(text) == len(text) + len(codes) - 0x10000  # astral ones count twice
    ascii_text = "\r\n".join(everything[:128])
    assert clean_value(ascii_text) == _clean_one_by_one(ascii_text)
    refused = [ch for ch in everything if ch.isprintable() and status_details.is_forbidden_char(ch)]
    assert refused == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_cleaned_as_before(text: str) -> None:
    assert clean_value(text) == _clean_one_by_one(text)
    assert utf16_length(text) == len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def test_a_scripts_output_is_not_cleaned_character_by_character(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kilobyte of ASCII output with line breaks, as a script prints it, is cleaned,
    counted and checked without a Python call per character."""
    looked_at: list[str] = []
    original = status_details.is_forbidden_char
    monkeypatch.setattr(
        status_details, "is_forbidden_char", lambda ch: looked_at.append(ch) or original(ch)
    )
    output = "".join(f"line {n}: done\tok\r\n" for n in range(60))
    result = sanitize_status_details({"stdout": output, "reason": "exit code 0"})
    assert validate_status_details(result) is None
    assert result["stdout"].endswith("line 59: done\\tok\\n")
    assert looked_at == []
