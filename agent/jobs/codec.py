"""A small codec from dataclass field metadata, for the Jobs API's payloads.

Each field of a model says, once, what it is called on the wire and how it is read (`wire`); a
model class says what it is called in errors and how strict it is. `decode` and `encode` do the
rest for every model, so no model writes its own `from_json`/`to_json`. `None` is never written:
the API omits what it does not have.

A reader is `read(obj, key, error)`: `error` is the exception class to raise (`ProtocolError`
for what the device receives, `InvalidRequestError` for what the emulator receives), so one set
of readers serves both strictnesses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

from jobs_agent.datamodel import model
from jobs_agent.jobs.errors import ProtocolError

Error = type[ProtocolError]
Reader = Callable[[Mapping[str, Any], str, Error], Any]
Writer = Callable[[Any], Any]
_WIRE = "jobs_agent.wire"


def _same(value: Any) -> Any:
    return value


@model
class Wire:
    """How one model field is named, read and written on the wire."""

    key: str
    read: Reader
    write: Writer = _same


def wire(
    key: str, read: Reader, write: Writer = _same, *, default: Any = None, required: bool = False
) -> Any:
    """A model field named `key` on the wire, read by `read` and written by `write`; a
    `required` one has no default (its reader raises when it is missing)."""
    metadata = {_WIRE: Wire(key, read, write)}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class WireModel:
    """Base of the payload models: `from_json` and `to_json` from the fields' `wire` specs."""

    __slots__ = ()
    WHAT: ClassVar[str] = "payload"
    """How errors name a payload of this model."""
    ERROR: ClassVar[Error] = ProtocolError

    @classmethod
    def from_json(cls, obj: object) -> Self:
        # Decoded JSON is a dict: asked first, it spares the ABC's check (two Python calls);
        # the class's decoder is a dict read once made (issue 18: calls per decode).
        decode = _DECODERS.get(cls) or _decoder(cls)
        o = obj if type(obj) is dict else as_object(obj, cls.WHAT, cls.ERROR)
        return decode(o)  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in _CACHE.get(type(self)) or _specs(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[spec.key] = value if spec.write is _same else spec.write(value)
        return out


_CACHE: dict[type, tuple[tuple[str, Wire], ...]] = {}
_DECODERS: dict[type, Callable[[Mapping[str, Any]], Any]] = {}
DECODER_FILE = "<decoder of "
"""How a decoder's code is named (its class's name follows, then ">")."""


def _decoder(cls: type[WireModel]) -> Callable[[Mapping[str, Any]], Any]:
    """`cls`'s decoder of a JSON object: one function that calls each field's reader, in the
    fields' order, and `cls` with what they read, written for the class as dataclasses writes
    its `__init__` (one `exec`). What it reads and raises is what the readers do; it spares
    the comprehension's frame, the dict of keyword arguments and three lookups per field
    that a loop over the specs makes at every decode (issue 18: about a third of a reply's
    decoding)."""
    made = _DECODERS.get(cls)
    if made is not None:
        return made
    specs = _specs(cls)
    # Positional arguments where the fields read are `__init__`'s parameters in order (every
    # model here): a call with keywords builds a dict of them at every decode.
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    parameters = [f.name for f in fields if f.init and not f.kw_only]
    positional = parameters == [name for name, _ in specs]
    names: dict[str, Any] = {"_cls": cls, "_error": cls.ERROR}
    arguments = []
    for number, (name, spec) in enumerate(specs):
        names[f"_read_{number}"] = spec.read
        names[f"_key_{number}"] = spec.key
        read = f"_read_{number}(o, _key_{number}, _error)"
        arguments.append(read if positional else f"{name}={read}")
    text = (
        f"def _make({', '.join(names)}):\n"
        f" def decode(o):\n  return _cls({', '.join(arguments)})\n"
        " return decode"
    )
    scope: dict[str, Any] = {}
    exec(compile(text, f"{DECODER_FILE}{cls.__qualname__}>", "exec"), {}, scope)  # noqa: S102
    made = scope["_make"](**names)
    _DECODERS[cls] = made
    return made  # type: ignore[no-any-return]


def _specs(cls: type) -> tuple[tuple[str, Wire], ...]:
    specs = _CACHE.get(cls)
    if specs is None:
        specs = tuple(
            (f.name, f.metadata[_WIRE]) for f in dataclasses.fields(cls) if _WIRE in f.metadata
        )
        _CACHE[cls] = specs
    return specs


# -- readers of plain JSON values --------------------------------------------------------------
def as_object(obj: object, what: str, error: Error = ProtocolError) -> Mapping[str, Any]:
    if not isinstance(obj, (dict, Mapping)):  # dict first: the ABC's check is a Python call
        raise error(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def text(o: Mapping[str, Any], key: str, error: Error) -> str | None:
    value = o.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"{key!r} must be a string")
    return value


def required_text(o: Mapping[str, Any], key: str, error: Error) -> str:
    value = text(o, key, error)
    if value is None:
        raise error(f"missing required field {key!r}")
    return value


def integer(o: Mapping[str, Any], key: str, error: Error) -> int | None:
    value = o.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise error(f"{key!r} must be an integer")
    if isinstance(value, float) and value.is_integer() and error is ProtocolError:
        return int(value)  # tolerate 3.0 from the service; requests must be exact
    if not isinstance(value, int):
        raise error(f"{key!r} must be an integer")
    return value


def flag(o: Mapping[str, Any], key: str, error: Error) -> bool | None:
    value = o.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise error(f"{key!r} must be a boolean")
    return value


def nested(model: type[WireModel]) -> tuple[Reader, Writer]:
    """Read and write a field that holds another model (or None)."""

    def read(o: Mapping[str, Any], key: str, error: Error) -> Any:
        value = o.get(key)
        return None if value is None else model.from_json(value)

    return read, lambda value: value.to_json()


def nested_list(model: type[WireModel]) -> tuple[Reader, Writer]:
    """Read and write a list of another model (absent: empty)."""

    def read(o: Mapping[str, Any], key: str, error: Error) -> tuple[Any, ...]:
        value = o.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise error(f"{key!r} must be a list")
        return tuple(model.from_json(item) for item in value)

    return read, lambda values: [value.to_json() for value in values]
