"""`@model` behaves as `@dataclass` would, with `__repr__`, `__eq__` and `__hash__` shared by every
model instead of compiled for each (issue 18: 2.7 kB per class, kept for the agent's whole life).

Each shape below is declared twice, once with each decorator, under the same name; the twins
must print, compare, hash, refuse assignment, copy, pickle and `replace` alike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from jobs_agent.datamodel import model

Decorator = Callable[..., Any]


def shapes(decorate: Callable[..., Decorator]) -> dict[str, type]:
    """Every kind of model the agent declares, made with `decorate(frozen=..., slots=...)`."""

    @decorate(frozen=True, slots=True)
    class Ref:
        namespace: str | None
        job_id: str
        number: int = 1

    @decorate(frozen=True, slots=False)
    class Options:
        endpoint: str
        secret: str = dataclasses.field(default="", repr=False)
        tags: tuple[str, ...] = ()
        note: str = dataclasses.field(default="", compare=False)
        weight: float = dataclasses.field(default=0.0, hash=False)

    @decorate(frozen=True, slots=True)
    class One:
        value: float

    @decorate(frozen=True, slots=False)
    class Empty:
        pass

    @decorate(frozen=False, slots=True)
    class Stats:
        sent: int = 0
        items: list[int] = dataclasses.field(default_factory=list)

    @decorate(frozen=False, slots=False)
    class Holder:
        inner: Any = None

    @decorate(frozen=True, slots=False)
    class Own:
        key: str
        other: int = 0

        def __eq__(self, value: object) -> bool:
            return isinstance(value, Own) and value.key == self.key

        def __hash__(self) -> int:
            return hash(self.key)

        def __repr__(self) -> str:
            return f"<{self.key}>"

    @decorate(frozen=True, slots=False)
    class Base:
        a: int

    @decorate(frozen=True, slots=False)
    class Derived(Base):
        b: str = "x"

    return dict(locals())


def _dataclass(frozen: bool, slots: bool) -> Decorator:
    return dataclasses.dataclass(frozen=frozen, slots=slots)


def _model(frozen: bool, slots: bool) -> Decorator:
    return model(frozen=frozen, slots=slots)


MODELS = shapes(_model)
DATACLASSES = shapes(_dataclass)
NAN = math.nan
SAMPLES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("Ref", (None, "job-1"), {}),
    ("Ref", ("ns", "job-1", 2), {}),
    ("Ref", ("ns", "job-2", 2), {}),
    ("Options", ("host",), {"secret": "s", "tags": ("a", "b"), "note": "n", "weight": 1.5}),
    ("Options", ("host",), {"secret": "t", "tags": ("a", "b"), "note": "m", "weight": 2.5}),
    ("One", (1.0,), {}),
    ("One", (NAN,), {}),
    ("Empty", (), {}),
    ("Stats", (3, [1, 2]), {}),
    ("Stats", (), {}),
    ("Holder", (), {}),
    ("Own", ("k", 1), {}),
    ("Own", ("k", 2), {}),
    ("Base", (1,), {}),
    ("Derived", (1, "y"), {}),
]


def both(index: int) -> tuple[Any, Any]:
    name, args, kwargs = SAMPLES[index]
    return MODELS[name](*args, **kwargs), DATACLASSES[name](*args, **kwargs)


def hash_or_error(value: Any) -> Any:
    try:
        return hash(value)
    except TypeError as exc:
        return str(exc)


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: SAMPLES[i][0])
def test_a_model_prints_compares_and_hashes_as_its_dataclass_twin(index: int) -> None:
    ours, theirs = both(index)
    assert repr(ours) == repr(theirs)
    assert hash_or_error(ours) == hash_or_error(theirs)
    for other in range(len(SAMPLES)):
        our_other, their_other = both(other)
        assert (ours == our_other) == (theirs == their_other), SAMPLES[other]
        assert (ours != our_other) == (theirs != their_other), SAMPLES[other]
    assert (ours == ours) == (theirs == theirs)  # NaN inside: the same object compares equal
    stranger = object()
    assert ours.__eq__(stranger) == theirs.__eq__(stranger)  # NotImplemented, unless its own
    assert [f.name for f in dataclasses.fields(ours)] == [
        f.name for f in dataclasses.fields(theirs)
    ]
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: SAMPLES[i][0])
def test_a_model_is_frozen_copied_and_pickled_as_its_twin(index: int) -> None:
    ours, theirs = both(index)
    frozen = type(theirs).__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert type(ours).__dataclass_params__.frozen == frozen  # type: ignore[attr-defined]
    field = next(iter(dataclasses.fields(ours)), None)
    if field is not None and frozen:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ours, field.name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(ours, field.name)
    for made in (copy.copy(ours), copy.deepcopy(ours), dataclasses.replace(ours)):
        assert repr(made) == repr(ours) and (made == ours) == (theirs == theirs)
    assert hasattr(ours, "__slots__") == hasattr(theirs, "__slots__")


def test_a_model_pickles_when_its_module_holds_it() -> None:
    from jobs_agent.vocabulary import ExecutionRef

    ref = ExecutionRef("ns", "job-1", 3)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert hash(ExecutionRef(None, "job-1", 3)) == hash(ExecutionRef("", "job-1", 3))


def test_a_model_inside_itself_prints_as_dataclasses_would() -> None:
    ours, theirs = MODELS["Holder"](), DATACLASSES["Holder"]()
    ours.inner, theirs.inner = ours, theirs
    assert repr(ours) == repr(theirs)
    assert repr(ours).endswith("Holder(inner=...)")


def test_models_share_their_methods() -> None:
    """The saving itself: one `__repr__`, `__eq__` and `__hash__` for every model."""
    ref, options = MODELS["Ref"], MODELS["Options"]
    assert ref.__repr__ is options.__repr__
    assert ref.__eq__ is options.__eq__
    assert ref.__hash__ is options.__hash__
    assert DATACLASSES["Ref"].__repr__ is not DATACLASSES["Options"].__repr__
