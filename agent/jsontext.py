"""JSON text of the agent's own plain data, with the standard library's C encoder built once.

`json.dumps(value)` and `JSONEncoder.encode(value)` build a new C encoder (`_json.make_encoder`)
and a dict to detect cycles at every call, through two Python frames: about 25 k instructions
for a request's payload, 17 k of which an encoder built once does not spend (issue 18: a
plugin job encodes four times, its two requests and the two records the store writes).

The text is the same, byte for byte, as `JSONEncoder(separators=..., ensure_ascii=...).encode`
(ASCII by default, keys in their order, NaN and infinities as JavaScript names, a value it
cannot encode refused with the same `TypeError`). One thing differs: the encoder keeps no record
of the containers it is in, so a container that holds itself raises `RecursionError` instead of
`ValueError`. Use it only for values that cannot: JSON just decoded, copies of it, and the
agent's own models' dicts.
"""

from __future__ import annotations

import json.encoder
from collections.abc import Callable
from typing import Any

Encode = Callable[[Any], str]


def encoder(separators: tuple[str, str], *, ensure_ascii: bool = True) -> Encode:
    """`JSONEncoder(separators=separators, ensure_ascii=ensure_ascii).encode` for acyclic values
    (see the module), its C encoder built now; the standard encoder itself where Python has no
    C one (`_json`)."""
    reference = json.JSONEncoder(separators=separators, ensure_ascii=ensure_ascii)
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference.encode
    item, key = separators
    encode = make(
        None,  # no cycle check (the module's docstring)
        reference.default,
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring,
        None,  # no indent
        key,
        item,
        False,  # keys in their order
        False,  # a key that is not a str, int, float, bool or None is refused
        True,  # NaN and infinities allowed, as by default
    )

    def text(value: Any) -> str:
        return "".join(encode(value, 0))

    return text


dumps: Encode = encoder((", ", ": "))
"""`json.dumps(value)` with its defaults, for acyclic values."""

compact: Encode = encoder((",", ":"))
"""`json.dumps(value, separators=(",", ":"))`, for acyclic values."""
