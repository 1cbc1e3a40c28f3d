"""statusDetails made acceptable to the service, in one place.

The service rejects a whole update (`InvalidRequest`) for one bad character in one value, and a
rejected final report is a lost outcome. So everything the agent sends goes through
`sanitize_status_details`, and the emulator refuses with `validate_status_details` exactly what
the service would refuse. The limits (reference: "Limits"): keys 1-128 chars of
`[a-zA-Z0-9:_-]`, values 1-1024 chars with no `\\p{C}` character, at most 10 pairs.

Choices, documented because operators read the result in the console:

* Line breaks and tabs become visible two-character escapes (`\\n`, `\\r`, `\\t`; CRLF is one
  `\\n`), so multi-line output stays readable on one line; every other `\\p{C}` character
  (other controls, format characters, surrogates, private use, unassigned) is removed.
* Lengths are counted in UTF-16 code units, as the service (Java) counts them, so a value full of
  emoji is not refused for being "1024 characters" that are 2048 units.
* Log-like values (`stdout`, `stderr`, `output`, `log`) keep their TAIL (the error is at the
  end), others (`reason`, `message`) their HEAD; a cut is marked with a leading or trailing `…`.
* Invalid key characters become `_`; a key that collides with an earlier one after that is
  dropped. Non-string values are JSON-encoded; None and empty values are dropped.
* At most 10 pairs: `reason` first, then the caller's order; the last ones are dropped.

Each map is checked once, where it enters: `sanitize_status_details` and a request model that
validated one return a `StatusDetails`, which the next layer (the Jobs client, the emulator's
service) takes as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jobs_agent.vocabulary import (
    STATUS_DETAILS_KEY_RE,
    STATUS_DETAILS_MAX_KEY_LENGTH,
    STATUS_DETAILS_MAX_PAIRS,
    STATUS_DETAILS_MAX_VALUE_LENGTH,
    StatusDetails,
)

MAX_PAIRS = STATUS_DETAILS_MAX_PAIRS
MAX_KEY_LENGTH = STATUS_DETAILS_MAX_KEY_LENGTH
MAX_VALUE_LENGTH = STATUS_DETAILS_MAX_VALUE_LENGTH
KEY_RE = STATUS_DETAILS_KEY_RE
DEFAULT_TAIL_KEYS: tuple[str, ...] = ("stdout", "stderr", "output", "log")
FIRST_KEYS: tuple[str, ...] = ("reason",)
ELLIPSIS = "…"

_INVALID_KEY_CHAR = re.compile(r"[^a-zA-Z0-9:_-]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ASCII_CLEAN: dict[int, str | None] = {
    **{code: None for code in (*range(0x20), 0x7F)},  # the ASCII part of \p{C}: Cc
    **{ord(ch): escape for ch, escape in _ESCAPES.items()},
}
"""`clean_value` of ASCII text as one `str.translate` table."""


def utf16_length(text: str) -> int:
    """Length as the service counts it (UTF-16 code units: astral characters count twice).
    Counted by the codec, not per character in Python (a 1 kB log tail was a thousand calls);
    a lone surrogate is one unit, as before."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def is_forbidden_char(ch: str) -> bool:
    """True for `\\p{C}`: control, format, surrogate, private use and unassigned.

    unicodedata is imported by the functions that read characters, not with this module: the
    agent loads this module at start but checks no text before its first job, and the table
    costs 0.23 MB resident for the agent's whole life (issue 18)."""
    from unicodedata import category

    return category(ch)[0] == "C"


def clean_value(text: str) -> str:
    """Make `text` single-line and free of `\\p{C}`, escaping line breaks and tabs visibly.

    Without a character to change (`isprintable`: no `\\p{C}`, no line break or tab, since
    none of them is printable) the text is returned as it is, and ASCII text is cleaned by one
    `translate`: only other text is looked at character by character (issue 18: a script's
    output was a Python call or two per character)."""
    if text.isprintable():
        return text
    text = text.replace("\r\n", "\n")
    if text.isascii():
        return text.translate(_ASCII_CLEAN)
    from unicodedata import category

    out: list[str] = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif category(ch)[0] != "C":
            out.append(ch)
    return "".join(out)


def cut_head(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """Keep the beginning; mark the cut with a trailing ellipsis. Limit in UTF-16 units."""
    if utf16_length(text) <= limit:
        return text
    budget = limit - 1
    kept: list[str] = []
    for ch in text:
        cost = 2 if ord(ch) > 0xFFFF else 1
        if cost > budget:
            break
        kept.append(ch)
        budget -= cost
    return "".join(kept) + ELLIPSIS


def cut_tail(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """Keep the end; mark the cut with a leading ellipsis. Limit in UTF-16 units."""
    if utf16_length(text) <= limit:
        return text
    budget = limit - 1
    kept: list[str] = []
    for ch in reversed(text):
        cost = 2 if ord(ch) > 0xFFFF else 1
        if cost > budget:
            break
        kept.append(ch)
        budget -= cost
    return ELLIPSIS + "".join(reversed(kept))


def clean_key(key: object) -> str:
    """A valid key for `key`, or "" if nothing usable is left (then the pair is dropped)."""
    text = key if isinstance(key, str) else str(key)
    return _INVALID_KEY_CHAR.sub("_", text)[:MAX_KEY_LENGTH]


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):  # circular structures
        return str(value)


def sanitize_status_details(
    details: Mapping[str, Any],
    *,
    tail_keys: Iterable[str] = DEFAULT_TAIL_KEYS,
    max_pairs: int = MAX_PAIRS,
) -> StatusDetails:
    """Return a statusDetails map the service accepts (see the module docstring for the rules).

    The result always passes `validate_status_details`.
    """
    tails = {k.lower() for k in tail_keys}
    ordered = sorted(
        details.items(),
        key=lambda item: 0 if clean_key(item[0]).lower() in FIRST_KEYS else 1,
    )  # stable: the caller's order is kept among the rest
    result = StatusDetails()
    for raw_key, raw_value in ordered:
        if len(result) >= max_pairs:
            break
        key = clean_key(raw_key)
        if not key or key in result:
            continue
        text = _as_text(raw_value)
        if text is None:
            continue
        text = clean_value(text)
        text = cut_tail(text) if key.lower() in tails else cut_head(text)
        if text:
            result[key] = text
    return result


def validate_status_details(obj: object, *, max_pairs: int = MAX_PAIRS) -> str | None:
    """Why `obj` would be refused as statusDetails by the service, or None if it is fine."""
    if isinstance(obj, StatusDetails) and len(obj) <= max_pairs:
        return None  # checked where it was made (validated once, at the edge)
    if not isinstance(obj, (dict, Mapping)):  # dict first: the ABC's check is a Python frame
        return "must be an object of string values"
    if len(obj) > max_pairs:
        return f"at most {max_pairs} pairs are allowed, got {len(obj)}"
    for key, value in obj.items():
        if not isinstance(key, str) or KEY_RE.fullmatch(key) is None:
            return f"key {key!r} must be 1-128 characters of [a-zA-Z0-9:_-]"
        if not isinstance(value, str):
            return f"value of {key!r} must be a string"
        if not value:
            return f"value of {key!r} must not be empty"
        if utf16_length(value) > MAX_VALUE_LENGTH:
            return f"value of {key!r} is longer than {MAX_VALUE_LENGTH} characters"
        printable = value.isprintable()  # no \p{C}: most values, checked in one call
        bad = None if printable else next((ch for ch in value if is_forbidden_char(ch)), None)
        if bad is not None:
            return f"value of {key!r} contains the control character U+{ord(bad):04X}"
    return None
