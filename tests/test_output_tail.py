"""A step's output tail as a statusDetails value (`output.single_line`), held to what it was.

Round 17 made it cheaper (no `Pattern.sub`, whose template with a backslash imported `re` at
every call; `unicodedata` only for text `str.isprintable` says holds a character to drop), so
its answer is compared with the definition it had: line breaks (CRLF, CR, LF) a literal `\\n`,
tabs a space, every character of Unicode category C dropped, the last `limit` kept.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent.dispatch.output import single_line

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def as_defined(text: str, limit: int) -> str:
    text = _LINE_BREAK.sub("\\\\n", text.strip()).replace("\t", " ")
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return text[-limit:] if len(text) > limit else text


TRICKY = st.sampled_from(["\r", "\n", "\r\n", "\t", " ", "\\", "\x00", "\x85", "\u200b", "\u2028"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(TRICKY, st.characters()), max_size=30).map("".join), st.integers(0, 40))
def test_a_tail_is_one_line_as_it_was_defined(text: str, limit: int) -> None:
    assert single_line(text, limit) == as_defined(text, limit)


def test_line_breaks_tabs_and_control_characters() -> None:
    assert single_line("a\r\r\nb\rc\nd\te\x07f\u200bg\u2028h\n") == "a\\n\\nb\\nc\\nd efg\u2028h"
    assert single_line("plain text") == "plain text"
    assert single_line("0123456789", 4) == "6789"
