"""`@model` behaves as `@dataclass` would, with `__repr__`, `__eq__` and `__hash__` shared by every
model instead of compiled for each (issue 18: 2.7 kB per class, kept for the agent's whole life).

Each shape below is declared twice, once with each decorator, under the same name; the twins
must print, compare, hash, refuse assignment, copy, pickle and `replace` alike.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
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

    @decorate(frozen=True, slots=False)
    class Defaults:
        a: int
        items: tuple[int, ...] = dataclasses.field(default_factory=tuple)
        b: str = "x"
        late: int = dataclasses.field(default=7, init=False)
        c: int = dataclasses.field(default=3, kw_only=True)
        d: list[int] = dataclasses.field(default_factory=list, kw_only=True)

    @decorate(frozen=True, slots=True)
    class Selfish:
        self: str
        seen: list[str] = dataclasses.field(default_factory=list)
        size: int = dataclasses.field(default=0, init=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "size", len(self.self))

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
    ("Defaults", (1,), {}),
    ("Defaults", (1, (2, 3), "y"), {"c": 4, "d": [5]}),
    ("Selfish", ("me",), {}),
    ("Selfish", (), {"self": "you", "seen": ["a"]}),
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
    # A frozen model's `__setattr__` and `__delattr__` too (3.2 kB a class, and for a slotted
    # one the class it was made from, which the generated pair kept alive).
    assert ref.__setattr__ is options.__setattr__ is MODELS["Derived"].__setattr__
    assert ref.__delattr__ is options.__delattr__
    assert MODELS["Stats"].__setattr__ is object.__setattr__  # not frozen: the usual one


def outcome(action: Callable[..., Any], *args: Any) -> tuple[str, str]:
    try:
        action(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "", ""


@pytest.mark.parametrize("name", ["Options", "Empty", "Own", "Base", "Derived", "Defaults"])
def test_a_frozen_model_refuses_changes_as_its_twin(name: str) -> None:
    """Assigning or deleting a field, or any other name, fails as on the dataclass; a plain
    subclass may still set names that are not fields (as dataclasses allows)."""
    index = next(i for i, sample in enumerate(SAMPLES) if sample[0] == name)
    ours, theirs = both(index)
    names = [f.name for f in dataclasses.fields(ours)] + ["other_name"]
    for attribute in names:
        assert outcome(setattr, ours, attribute, 1) == outcome(setattr, theirs, attribute, 1)
        assert outcome(delattr, ours, attribute) == outcome(delattr, theirs, attribute)
    args, kwargs = SAMPLES[index][1:]
    our_sub = type("Sub", (MODELS[name],), {})(*args, **kwargs)
    their_sub = type("Sub", (DATACLASSES[name],), {})(*args, **kwargs)
    for attribute in names:
        assert outcome(setattr, our_sub, attribute, 2) == outcome(setattr, their_sub, attribute, 2)
    assert our_sub.other_name == their_sub.other_name == 2
    assert outcome(delattr, our_sub, "other_name") == ("", "")
    assert outcome(delattr, our_sub, "other_name")[0] == "AttributeError"


@pytest.mark.parametrize("name", ["Ref", "One", "Selfish"])
def test_a_slotted_frozen_model_refuses_every_change(name: str) -> None:
    """Fields as the dataclass; any other name is refused as frozen too, where Python 3.11's
    generated method fails with a TypeError (it holds the class from before the slots)."""
    index = next(i for i, sample in enumerate(SAMPLES) if sample[0] == name)
    ours, theirs = both(index)
    for field in dataclasses.fields(ours):
        assert outcome(setattr, ours, field.name, 1) == outcome(setattr, theirs, field.name, 1)
        assert outcome(delattr, ours, field.name) == outcome(delattr, theirs, field.name)
    assert outcome(setattr, ours, "other_name", 1) == (
        "FrozenInstanceError",
        "cannot assign to field 'other_name'",
    )


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"decorate"}))
def test_a_model_is_made_and_called_as_its_twin(name: str) -> None:
    """The class as a caller or a reader of it sees it: the `__init__` (signature, annotations,
    name, the errors of a wrong call), the docstring dataclasses writes for an undocumented
    class, `__match_args__` and what `__dataclass_params__` says of `frozen` and `init`."""
    ours, theirs = MODELS[name], DATACLASSES[name]
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    assert ours.__init__.__annotations__ == theirs.__init__.__annotations__
    assert ours.__init__.__qualname__ == theirs.__init__.__qualname__
    assert ours.__doc__ == theirs.__doc__
    assert ours.__match_args__ == theirs.__match_args__  # type: ignore[attr-defined]
    for flag in ("frozen", "init"):
        our_params = ours.__dataclass_params__  # type: ignore[attr-defined]
        their_params = theirs.__dataclass_params__  # type: ignore[attr-defined]
        assert getattr(our_params, flag) == getattr(their_params, flag)
    for args, kwargs in [((), {}), ((1, 2, 3, 4, 5, 6), {}), ((1,), {"unknown": 1})]:
        assert outcome(partial(ours, *args, **kwargs)) == outcome(partial(theirs, *args, **kwargs))
    for _, args, kwargs in filter(lambda sample: sample[0] == name, SAMPLES):
        our_one, their_one = ours(*args, **kwargs), theirs(*args, **kwargs)
        assert vars_of(our_one) == vars_of(their_one)


def vars_of(instance: Any) -> dict[str, Any]:
    """Every attribute the instance holds itself (slots or `__dict__`)."""
    names = getattr(type(instance), "__slots__", None) or vars(instance)
    return {name: getattr(instance, name, "<unset>") for name in names}


def test_a_default_factory_makes_a_new_value_for_each_instance() -> None:
    first, second = MODELS["Defaults"](1), MODELS["Defaults"](2)
    assert first.d == second.d == [] and first.d is not second.d
    assert (first.late, first.c, first.b, first.items) == (7, 3, "x", ())


@pytest.mark.parametrize("frozen_base", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("base_kind", ["model", "dataclass"])
@pytest.mark.parametrize("kind", ["model", "dataclass"])
def test_a_class_derived_from_a_model_follows_dataclasses_rules_on_frozen(
    frozen_base: bool, frozen: bool, base_kind: str, kind: str
) -> None:
    """A frozen class may not derive from a non-frozen dataclass, nor a non-frozen one from a
    frozen one, whichever of `@model` and `@dataclass` made either: what is refused, with what
    message, and what is accepted are what two dataclasses give."""
    makers = {"model": _model, "dataclass": _dataclass}

    def derive(base_maker: Callable[..., Decorator], maker: Callable[..., Decorator]) -> Any:
        base = base_maker(frozen=frozen_base, slots=False)(
            type("Base", (), {"__annotations__": {"a": "int"}})
        )
        derived = maker(frozen=frozen, slots=False)(
            type("Derived", (base,), {"__annotations__": {"b": "int"}, "b": 0})
        )
        instance = derived(1)
        return outcome(setattr, instance, "a", 2), outcome(setattr, instance, "b", 2)

    def made(base_maker: Callable[..., Decorator], maker: Callable[..., Decorator]) -> Any:
        try:
            return derive(base_maker, maker)
        except TypeError as exc:
            return str(exc)

    assert made(makers[base_kind], makers[kind]) == made(_dataclass, _dataclass)


def test_a_frozen_class_with_its_own_setattr_is_refused_as_dataclasses_refuses_it() -> None:
    def own_setattr(self: Any, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def make(decorate: Callable[..., Decorator]) -> tuple[str, str]:
        return outcome(
            decorate(frozen=True, slots=False), type("Own", (), {"__setattr__": own_setattr})
        )

    assert (
        make(_model)
        == make(_dataclass)
        == (
            "TypeError",
            "Cannot overwrite attribute __setattr__ in class Own",
        )
    )


def test_a_frozen_model_above_a_class_that_sets_attributes_its_own_way_is_frozen() -> None:
    """The class above keeps setting what is not a field; the model's fields stay frozen."""

    class Guarded:
        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

    def make(decorate: Callable[..., Decorator]) -> Any:
        made = decorate(frozen=True, slots=False)(
            type("Above", (Guarded,), {"__annotations__": {"a": "int"}})
        )(1)
        return outcome(setattr, made, "a", 2), outcome(setattr, made, "b", 2), made.a

    assert make(_model) == make(_dataclass)


def test_a_slotted_frozen_model_pickles_and_copies() -> None:
    """A slotted frozen class has no `__dict__` to restore: its state is put back around the
    frozen `__setattr__`, as dataclasses does for its own."""
    from jobs_agent.vocabulary import ExecutionRef

    ref = ExecutionRef("ns", "job-1", 3)
    for made in (pickle.loads(pickle.dumps(ref)), copy.copy(ref), copy.deepcopy(ref)):
        assert made == ref and made is not ref
        assert (made.namespace, made.job_id, made.execution_number) == ("ns", "job-1", 3)


COUNT_COMPILES = """
import sys
from tests.test_datamodel import _dataclass, _model, shapes

texts = []


def compiled(event, args):
    if event == "compile" and args[1] == "<string>":
        texts.append(args[0])


sys.addaudithook(compiled)
for decorate in (_model, _dataclass):
    texts.clear()
    made = shapes(decorate)
    print(len(texts), sum(" def __setattr__(" in str(text) for text in texts), len(made) - 1)
"""


def test_a_frozen_model_compiles_its_init_alone() -> None:
    """dataclasses compiles a frozen class's `__setattr__` and `__delattr__` (an `exec` of text
    each), which `@model` replaces with its shared pair: 98 of the 190 functions compiled on an
    idle agent's path to its first request (issue 18). A frozen model that derives from no
    dataclass is made as a plain one with the `__init__` dataclasses would write for it, one
    text compiled a class; one that derives from another dataclass keeps dataclasses' frozen
    making (which refuses a plain class below a frozen one), so its pair is compiled and
    replaced as before. Counted in a process of its own (an audit hook stays for good), the
    texts compiled as `<string>` (`inspect.signature` parses one more of its own for the
    docstring of a class with no `__init__` and none)."""
    out = subprocess.run(
        [sys.executable, "-c", COUNT_COMPILES],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    ).stdout
    (ours, our_pairs, classes), (_, their_pairs, _) = (
        tuple(map(int, line.split())) for line in out.splitlines()
    )
    frozen = [name for name, cls in MODELS.items() if name != "decorate" and is_frozen(cls)]
    assert their_pairs == len(frozen) == 9
    assert our_pairs == 1  # Derived(Base)
    assert ours == classes + 2 * our_pairs, out


def is_frozen(cls: type) -> bool:
    return bool(cls.__dataclass_params__.frozen)  # type: ignore[attr-defined]


def test_a_model_misdeclared_or_with_an_initvar_is_made_as_dataclasses_makes_it() -> None:
    """A field without a default after one with a default is refused with dataclasses' words;
    an `InitVar` (which a frozen model leaves to dataclasses' own making) reaches
    `__post_init__` as on the twin."""

    def misdeclared(decorate: Callable[..., Decorator]) -> tuple[str, str]:
        body = {"__annotations__": {"a": "int", "b": "int"}, "a": 0}
        return outcome(decorate(frozen=True, slots=False), type("Bad", (), body))

    assert (
        misdeclared(_model)
        == misdeclared(_dataclass)
        == (
            "TypeError",
            "non-default argument 'b' follows default argument",
        )
    )

    def post_init(self: Any, scale: int) -> None:
        object.__setattr__(self, "a", self.a * scale)

    def with_initvar(decorate: Callable[..., Decorator]) -> Any:
        body = {"__annotations__": {"a": "int", "scale": "dataclasses.InitVar[int]"}}
        made = decorate(frozen=True, slots=False)(
            type("Scaled", (), {**body, "__post_init__": post_init})
        )
        instance = made(2, 3)
        return instance.a, str(inspect.signature(made)), outcome(setattr, instance, "a", 1)

    assert with_initvar(_model) == with_initvar(_dataclass)
    assert with_initvar(_model)[0] == 6


COUNT_FIRST_CALL = """
import inspect, sys
from jobs_agent.datamodel import model

texts = []


def compiled(event, args):
    if event == "compile" and args[1] == "<string>":
        texts.append(args[0])


sys.addaudithook(compiled)


@model(slots=True)
class Ref:
    "A documented model: dataclasses writes it no docstring from its signature."

    namespace: str | None
    job_id: str = "j"


@model(frozen=False)
class Stats:
    "Another, not frozen."

    sent: int = 0


made = len(texts)
Ref(None)
Ref("ns", "x")
first = len(texts)
signature = str(inspect.signature(Stats))
second = len(texts)
Stats()
Stats(2)
print(made, first, second, len(texts), signature, Ref.__init__.__qualname__, sep=";")
"""


def test_a_models_init_is_compiled_at_its_first_call() -> None:
    """Defining a documented model compiles nothing: its `__init__` (the text dataclasses would
    have compiled when the class was defined) is compiled at the first call, or the first read
    of the class's signature, once. 40 of the 56 models an idle agent defines are not made
    before its first request (issue 18)."""
    out = subprocess.run(
        [sys.executable, "-c", COUNT_FIRST_CALL],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    made, first, second, last, signature, name = out.strip().split(";")
    assert (int(made), int(first), int(second), int(last)) == (0, 1, 2, 2), out
    assert signature == "(sent: int = 0) -> None"
    assert name == "Ref.__init__"


def documented(decorate: Callable[..., Decorator]) -> dict[str, type]:
    """Models with docstrings, whose `__init__` waits for its first call."""

    @decorate(frozen=True, slots=True)
    class Ref:
        """A reference."""

        namespace: str | None
        job_id: str = "j"
        seen: list[str] = dataclasses.field(default_factory=list)

    @decorate(frozen=True, slots=False)
    class Base:
        """A base."""

        a: int

    @decorate(frozen=True, slots=False)
    class Derived(Base):
        """Below it."""

        b: str = "x"

    @decorate(frozen=False, slots=False)
    class Stats:
        """Counts."""

        sent: int = 0

    return {"Ref": Ref, "Base": Base, "Derived": Derived, "Stats": Stats}


@pytest.mark.parametrize("name", ["Ref", "Base", "Derived", "Stats"])
def test_a_model_not_yet_made_reads_and_makes_as_its_twin(name: str) -> None:
    """Before its first call a model's signature is its twin's; a plain subclass makes the
    first instance; the compiled `__init__` then on the class is the twin's, bytecode and all."""
    ours, theirs = documented(_model)[name], documented(_dataclass)[name]
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    ours, theirs = documented(_model)[name], documented(_dataclass)[name]  # not yet compiled
    args = {"Ref": (None,), "Base": (1,), "Derived": (1,), "Stats": ()}[name]
    our_sub = type("Sub", (ours,), {})(*args)
    their_sub = type("Sub", (theirs,), {})(*args)
    assert repr(our_sub) == repr(their_sub) and vars_of(our_sub) == vars_of(their_sub)
    assert vars_of(ours(*args)) == vars_of(theirs(*args))
    init, their_init = vars(ours)["__init__"], vars(theirs)["__init__"]
    assert init.__qualname__ == their_init.__qualname__
    if name == "Ref":  # frozen and slotted: the same parameters, its fields set through its slots
        assert init.__code__.co_varnames == their_init.__code__.co_varnames
    else:
        assert init.__code__.co_code == their_init.__code__.co_code
    assert init.__annotations__ == their_init.__annotations__
    assert outcome(ours, 1, 2, 3, 4) == outcome(theirs, 1, 2, 3, 4)


def slotted_family(decorate: Callable[..., Decorator]) -> dict[str, type]:
    """Frozen slotted models: one below another (as the Jobs replies are), one with defaults, a
    factory and a `__post_init__`, and a field that is set but not a parameter."""

    @decorate(frozen=True, slots=True)
    class Reply:
        """A reply."""

        execution: str | None = None
        client_token: str | None = None

    @decorate(frozen=True, slots=True)
    class StartReply(Reply):
        """Below it."""

        timestamp: float = 0.0

    @decorate(frozen=True, slots=True)
    class Filled:
        """Defaults, a factory, a field out of `__init__` and a post-init check."""

        a: int
        items: tuple[int, ...] = dataclasses.field(default_factory=tuple)
        late: int = dataclasses.field(default=7, init=False)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    return {"Reply": Reply, "StartReply": StartReply, "Filled": Filled}


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("Reply", ("e", "t")),
        ("StartReply", ("e", None, 2.5)),
        ("Filled", (1, (2,))),
        ("Filled", (-1,)),
    ],
)
def test_a_frozen_slotted_model_sets_its_fields_through_its_slots(
    name: str, args: tuple[Any, ...]
) -> None:
    """Its `__init__` stores each field through the field's slot, not `object.__setattr__`
    (which looks the name up along the MRO for every field of every instance: a job makes
    several such instances; issue 18), and what it makes is what its twin makes: the same
    values, equality, refusal to change, copies and plain subclasses."""
    ours, theirs = slotted_family(_model)[name], slotted_family(_dataclass)[name]
    assert outcome(ours, *args) == outcome(theirs, *args)
    if args[0] == -1:
        return
    made, twin = ours(*args), theirs(*args)
    assert "__setattr__" not in vars(ours)["__init__"].__code__.co_names
    assert vars_of(made) == vars_of(twin) and repr(made) == repr(twin)
    assert made == ours(*args) and hash(made) == hash(ours(*args))
    first = dataclasses.fields(ours)[0].name
    assert outcome(setattr, made, first, "x") == outcome(setattr, twin, first, "x")
    assert vars_of(dataclasses.replace(made)) == vars_of(twin)
    assert vars_of(copy.copy(made)) == vars_of(copy.deepcopy(twin))
    our_sub, their_sub = type("Sub", (ours,), {})(*args), type("Sub", (theirs,), {})(*args)
    assert vars_of(our_sub) == vars_of(their_sub)


@pytest.mark.parametrize("frozen", [True, False])
def test_a_model_with_an_init_of_its_own_keeps_it(frozen: bool) -> None:
    def own_init(self: Any, value: int) -> None:
        object.__setattr__(self, "a", value * 2)

    def make(decorate: Callable[..., Decorator]) -> Any:
        body = {"__annotations__": {"a": "int"}, "__init__": own_init, "__doc__": "Its own."}
        made = decorate(frozen=frozen, slots=False)(type("Own", (), body))
        return made.__init__ is own_init, made(2).a, str(inspect.signature(made))

    assert make(_model) == make(_dataclass)
    assert make(_model)[:2] == (True, 4)


def test_a_model_holds_what_its_shared_methods_read_only_once_one_is_called() -> None:
    """Defining a model adds one name to its class (`__model__`, None) for the shared methods,
    not the four tuples and getters they read (1.9 kB a class of five fields: its dict grows
    past its first size; issue 18): those are made at the first print, comparison, hash or
    refused change, for the model and kept there; a class below a model that is not one reads
    its model's, and a model below another makes its own."""
    made = documented(_model)
    ref, base, derived = made["Ref"], made["Base"], made["Derived"]
    for cls in made.values():
        assert vars(cls)["__model__"] is None
        assert {name for name in vars(cls) if name.startswith("__model")} == {"__model__"}
    assert repr(ref(None)).endswith("Ref(namespace=None, job_id='j', seen=[])")
    assert vars(ref)["__model__"] is not None
    assert vars(base)["__model__"] is vars(derived)["__model__"] is None
    below = type("Below", (base,), {})
    assert hash(below(1)) == hash(base(1))  # the plan made is the model's, for both
    assert vars(base)["__model__"] is not None and "__model__" not in vars(below)
    assert derived(1, "y") == derived(1, "y") and derived(1, "y") != derived(1, "z")
    assert vars(derived)["__model__"] is not vars(base)["__model__"]
    assert vars(derived)["__model__"].shown == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made["Base"](1).a = 2
