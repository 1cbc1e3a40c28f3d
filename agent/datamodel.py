"""`@model`: a dataclass whose `__repr__`, `__eq__` and `__hash__` (and a frozen one's
`__setattr__` and `__delattr__`) are shared by every model.

`dataclasses` compiles those three for every class, functions of its own kept for the process's
whole life: 2.7 kB of the 11.5 kB a frozen class of five fields costs (tracemalloc; an idle
agent defines 72; issue 18), for about 0.5 us more a call here. They are written once and read
the class's fields (`dataclasses.fields`, in declaration order, with their `repr`, `compare` and
`hash` flags, as the generated ones do): what they return is what the generated ones would,
hash values included. A frozen class's `__setattr__` and `__delattr__` (which its `__init__`
goes around) are replaced by one pair for all: 3.2 kB a class, and for a slotted class the class
it was made from, which the generated pair keeps alive (Python 3.11); they refuse what the
generated pair refuses, and on a slotted class a name that is not a field too (with
`FrozenInstanceError`, where the generated pair fails with a `TypeError`). Where a class above
the model sets attributes its own way the generated pair stays. `dataclasses` still makes the
rest (`__init__`, the fields, `__match_args__`, slots), so `dataclasses.fields`, `replace`,
`asdict` and `is_dataclass` see a dataclass, and mypy one (`dataclass_transform`). A method
the class body defines is kept, as dataclasses keeps it. Unusual uses (`order=True`,
`eq=False`) keep `@dataclass`.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def model(cls: type[_T], /) -> type[_T]: ...


@overload
def model(
    *, frozen: bool = True, slots: bool = False, kw_only: bool = False
) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def model(
    cls: type[_T] | None = None,
    /,
    *,
    frozen: bool = True,
    slots: bool = False,
    kw_only: bool = False,
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """A dataclass (frozen unless `frozen=False`) with the shared methods of this module."""

    def wrap(cls: type[_T]) -> type[_T]:
        return _build(cls, frozen=frozen, slots=slots, kw_only=kw_only)

    return wrap if cls is None else wrap(cls)


def _build(cls: type[_T], *, frozen: bool, slots: bool, kw_only: bool) -> type[_T]:
    own = cls.__dict__
    # An explicit __hash__ is kept, as dataclasses keeps it (a class body that defines __eq__
    # alone has __hash__ = None in its namespace, which is not explicit).
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    shared = [name for name in ("__repr__", "__eq__") if name not in own]
    made: Any = dataclasses.dataclass(
        cls, repr=False, eq=False, frozen=frozen, slots=slots, kw_only=kw_only
    )
    fields = dataclasses.fields(made)
    made.__model_repr__ = tuple(f.name for f in fields if f.repr)
    made.__model_compared__ = _values([f.name for f in fields if f.compare])
    if "__repr__" in shared:
        made.__repr__ = _repr
    if "__eq__" in shared:
        made.__eq__ = _eq
    if not explicit_hash:
        hashed = [f.name for f in fields if (f.compare if f.hash is None else f.hash)]
        made.__model_hashed__ = _values(hashed)
        made.__hash__ = _hash if frozen else None
    if frozen and _only_object_sets(made):
        made.__model_frozen__ = frozenset(f.name for f in fields)
        made.__setattr__ = _frozen_setattr
        made.__delattr__ = _frozen_delattr
    return made  # type: ignore[no-any-return]


def _only_object_sets(cls: type) -> bool:
    """Whether every class above `cls` that sets attributes its own way is a model with the
    shared frozen methods: then the generated methods' `super().__setattr__` is `object`'s."""
    return all(
        klass is object
        or "__model_frozen__" in vars(klass)
        or not {"__setattr__", "__delattr__"} & vars(klass).keys()
        for klass in cls.__mro__[1:]
    )


def _values(names: list[str]) -> staticmethod[[Any], tuple[Any, ...]]:
    """The tuple of an instance's values of `names`: what the generated methods compare and
    hash (`attrgetter` of one name gives the value itself, not its 1-tuple)."""
    if len(names) == 1:
        (name,) = names
        return staticmethod(lambda instance: (getattr(instance, name),))
    if not names:
        return staticmethod(lambda instance: ())
    return staticmethod(attrgetter(*names))


@reprlib.recursive_repr()  # "..." for a model inside itself, as dataclasses' own
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__model_repr__)
    return f"{self.__class__.__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return self.__model_compared__(self) == self.__model_compared__(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self.__model_hashed__(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    cls = self.__class__
    if "__model_frozen__" in vars(cls) or name in cls.__model_frozen__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: Any, name: str) -> None:
    cls = self.__class__
    if "__model_frozen__" in vars(cls) or name in cls.__model_frozen__:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)
