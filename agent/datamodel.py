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

Asked for a frozen class, dataclasses compiles its pair anyway (an `exec` of text each, 98 of
the 190 functions compiled on an idle agent's path to its first request, issue 18). So a frozen
model that derives from no dataclass is asked for as a plain class, and `@model` makes it
frozen itself: the shared pair, the `__init__` dataclasses writes for a frozen class (the same
text, fields set through `object.__setattr__`), a slotted class's `__getstate__` and
`__setstate__`, and `__dataclass_params__` marked frozen, so that dataclasses applies its
inheritance rules to the classes below it as to any frozen dataclass. A model below another
dataclass, or with an `InitVar`, is made frozen by dataclasses as before (its pair compiled,
then replaced).

A model's `__init__` (the text dataclasses writes, frozen or not) is compiled at the class's
first call rather than when it is defined (`_FirstInit`): 40 of the 56 models an idle agent
defines are made by nothing before its first request. A model with an `InitVar` keeps
dataclasses' own `__init__`, one whose class body defines one keeps that.
"""

from __future__ import annotations

import dataclasses
import reprlib
import sys
from collections.abc import Callable
from operator import attrgetter
from types import MemberDescriptorType, MethodType
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
    own_init = _no_initvar(cls)
    ours = frozen and own_init and _frozen_here(cls)
    documented = bool(own.get("__doc__"))  # before dataclasses writes one
    made: Any = dataclasses.dataclass(
        cls,
        init=not own_init,
        repr=False,
        eq=False,
        frozen=frozen and not ours,
        slots=slots,
        kw_only=kw_only,
    )
    fields = dataclasses.fields(made)
    if ours:
        made.__dataclass_params__.frozen = True
    if own_init:
        _give_init(made, fields, frozen=frozen, slots=slots, documented=documented)
    made.__model__ = None  # its `_Plan`, made at the first use of a shared method
    if "__repr__" in shared:
        made.__repr__ = _repr
    if "__eq__" in shared:
        made.__eq__ = _eq
    if not explicit_hash:
        made.__hash__ = _hash if frozen else None
    if frozen and _only_object_sets(made):
        made.__setattr__ = _frozen_setattr
        made.__delattr__ = _frozen_delattr
    return made  # type: ignore[no-any-return]


def _no_initvar(cls: type) -> bool:
    """Whether no field of `cls` or of a dataclass above it is an `InitVar` (which `_init`
    does not take: such a class keeps dataclasses' own `__init__`)."""
    types = [*cls.__dict__.get("__annotations__", {}).values()]  # noqa: RUF063 (as dataclasses)
    for klass in cls.__mro__[1:]:
        types += [f.type for f in getattr(klass, "__dataclass_fields__", {}).values()]
    return not any("InitVar" in (t if isinstance(t, str) else repr(t)) for t in types)


def _frozen_here(cls: type) -> bool:
    """Whether `@model` freezes `cls` itself rather than asking dataclasses to: a class with no
    dataclass above it (dataclasses refuses a non-frozen class below a frozen one, as the
    models are marked), no class above it that sets attributes its own way, and no
    `__setattr__` or `__delattr__` of its own (which dataclasses refuses on a frozen class).
    Any other keeps dataclasses' own freezing."""
    return not any(hasattr(klass, "__dataclass_fields__") for klass in cls.__mro__[1:]) and all(
        not {"__setattr__", "__delattr__"} & vars(klass).keys() for klass in cls.__mro__[:-1]
    )


def _give_init(
    made: Any,
    fields: tuple[dataclasses.Field[Any], ...],
    *,
    frozen: bool,
    slots: bool,
    documented: bool,
) -> None:
    """Give `made`, built by dataclasses without an `__init__`, the one dataclasses would have
    written (compiled at its first call, `_FirstInit`), and what else dataclasses adds with it:
    a slotted frozen class's `__getstate__`/`__setstate__` (its state put back around the
    frozen `__setattr__`), the docstring of an undocumented class (its signature), and
    `__dataclass_params__.init`. A field without a default after one with a default is refused
    now, as dataclasses refuses it."""
    seen_default = False
    for f in fields:
        if f.init and not f.kw_only and _has_default(f):
            seen_default = True
        elif f.init and not f.kw_only and seen_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
    if "__init__" not in vars(made):  # one of the class body's own is kept, as dataclasses does
        made.__init__ = _FirstInit(made, fields, frozen=frozen, slots=slots)
    made.__dataclass_params__.init = True
    if frozen and slots and "__getstate__" not in vars(made):  # its own is kept, as dataclasses
        made.__getstate__ = _getstate
    if frozen and slots and "__setstate__" not in vars(made):
        made.__setstate__ = _setstate
    if not documented:
        import inspect  # dataclasses has it loaded

        made.__doc__ = made.__name__ + str(inspect.signature(made)).replace(" -> None", "")


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


class _FirstInit:
    """A model's `__init__` until its first call (or a read of its signature), which compiles
    the one dataclasses would have written and puts it on the class in its place: a model the
    agent defines but does not make before its first request costs no compile (an `exec` of
    text, the largest part of defining a dataclass; issue 18). `inspect.signature` of the class
    reads `__signature__`, which compiles it too."""

    __slots__ = ("_cls", "_fields", "_frozen", "_slots")

    def __init__(
        self, cls: type, fields: tuple[dataclasses.Field[Any], ...], *, frozen: bool, slots: bool
    ) -> None:
        self._cls, self._fields, self._frozen, self._slots = cls, fields, frozen, slots

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else MethodType(self, instance)

    def __call__(self, instance: Any, /, *args: Any, **kwargs: Any) -> None:
        self.compiled()(instance, *args, **kwargs)

    def compiled(self) -> Callable[..., None]:
        """The class's `__init__`, compiled and set on the class at the first ask (two threads
        asking at once both compile it, and one of the two stays)."""
        init = vars(self._cls).get("__init__")
        if init is self or init is None:
            init = _init(self._cls, self._fields, frozen=self._frozen, slots=self._slots)
            init.__qualname__ = f"{self._cls.__qualname__}.__init__"
            type.__setattr__(self._cls, "__init__", init)
        return init

    @property
    def __signature__(self) -> Any:
        import inspect  # dataclasses has it loaded

        return inspect.signature(self.compiled())


class _Factory:
    """The default of a parameter whose field has a default factory (`<factory>`, as
    dataclasses prints its own)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def _init(
    cls: type, fields: tuple[dataclasses.Field[Any], ...], *, frozen: bool, slots: bool
) -> Callable[..., None]:
    """The `__init__` dataclasses writes, written the same way (one `exec`, the same
    parameters, annotations and body: each field set, through `object.__setattr__` on a frozen
    class (through its slot on a slotted one, `_slot`), defaults and factories alike,
    `__post_init__` last), for the fields it found."""
    me = "__dataclass_self__" if any(f.name == "self" for f in fields) else "self"
    names: dict[str, Any] = {
        "__dataclass_builtins_object__": object,
        "_HAS_DEFAULT_FACTORY": _FACTORY,
        "_return_type": None,
    }
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        param, value = _init_field(f, names, slots=slots)
        if param:
            (keyword if f.kw_only else positional).append(param)
        slot = _slot(cls, f.name) if value and frozen and slots else None
        if slot is not None:
            names[f"__dataclass_set_{f.name}"] = slot.__set__
            body.append(f"__dataclass_set_{f.name}({me},{value})")
        elif value and frozen:
            body.append(f"__dataclass_builtins_object__.__setattr__({me},{f.name!r},{value})")
        elif value:
            body.append(f"{me}.{f.name}={value}")
    if hasattr(cls, "__post_init__"):
        body.append(f"{me}.__post_init__()")
    params = ",".join([me, *positional, *(["*", *keyword] if keyword else [])])
    lines = "\n".join(f"  {line}" for line in body or ["pass"])
    text = (
        f"def __create_fn__({', '.join(names)}):\n"
        f" def __init__({params})->_return_type:\n{lines}\n return __init__"
    )
    module = sys.modules.get(cls.__module__)
    made: dict[str, Any] = {}
    # Without this module's `from __future__ import annotations`, which would make the
    # annotations the names `_type_...` instead of the fields' types.
    code = compile(text, "<string>", "exec", dont_inherit=True)
    exec(code, vars(module) if module is not None else {}, made)  # noqa: S102
    return made["__create_fn__"](**names)  # type: ignore[no-any-return]


def _slot(cls: type, name: str) -> Any:
    """The slot that holds the field `name` of the slotted class `cls` (the first class along
    its MRO that has the name: a slot's member descriptor), or None if that is not a slot.

    A frozen slotted model's `__init__` sets each field through its slot's `__set__`, where
    dataclasses writes `object.__setattr__`: the same store (the generic setattr finds the same
    descriptor and calls it), without looking the name up along the MRO and checking the
    instance's base each time. About 40 % less per instance of a model of four fields (timeit),
    and a job makes several (its replies, requests, topics and messages; issue 18)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            found = vars(klass)[name]
            return found if isinstance(found, MemberDescriptorType) else None
    return None


def _init_field(
    f: dataclasses.Field[Any], names: dict[str, Any], *, slots: bool
) -> tuple[str, str]:
    """A field's parameter of `__init__` and the value its line sets ("" for none), with the
    names they read added to `names`, as dataclasses writes them."""
    names[f"_type_{f.name}"] = f.type
    factory = f.default_factory is not dataclasses.MISSING
    default = f.default is not dataclasses.MISSING
    if factory or default:
        names[f"_dflt_{f.name}"] = f.default_factory if factory else f.default
    if not f.init:
        # A default is the class attribute, read there, except on a slotted class.
        value = f"_dflt_{f.name}()" if factory else (f"_dflt_{f.name}" if default and slots else "")
        return "", value
    if factory:
        param = f"{f.name}:_type_{f.name}=_HAS_DEFAULT_FACTORY"
        return param, f"_dflt_{f.name}() if {f.name} is _HAS_DEFAULT_FACTORY else {f.name}"
    return f"{f.name}:_type_{f.name}" + (f"=_dflt_{f.name}" if default else ""), f.name


def _getstate(self: Any) -> list[Any]:
    return [getattr(self, f.name) for f in dataclasses.fields(self)]


def _setstate(self: Any, state: list[Any]) -> None:
    for field, value in zip(dataclasses.fields(self), state, strict=False):
        object.__setattr__(self, field.name, value)


def _only_object_sets(cls: type) -> bool:
    """Whether every class above `cls` that sets attributes its own way is a model with the
    shared frozen methods: then the generated methods' `super().__setattr__` is `object`'s."""
    return all(
        klass is object
        or vars(klass).get("__setattr__") is _frozen_setattr
        or not {"__setattr__", "__delattr__"} & vars(klass).keys()
        for klass in cls.__mro__[1:]
    )


def _values(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple of an instance's values of `names`: what the generated methods compare and
    hash (`attrgetter` of one name gives the value itself, not its 1-tuple)."""
    if len(names) == 1:
        (name,) = names
        return lambda instance: (getattr(instance, name),)
    if not names:
        return lambda instance: ()
    return attrgetter(*names)


class _Plan:
    """What the shared methods read of a model's fields: made from `dataclasses.fields` at the
    first call of one of them on the model (or a class below it that is not a model), and kept
    in the model's `__model__`, which is None until then. Four class attributes set when the
    class was defined cost 1.9 kB a class (the class's dict grows past its first size:
    tracemalloc, a model of five fields 6.1 -> 4.2 kB), for methods most models of an idle
    agent never call (issue 18)."""

    __slots__ = ("compared", "fields", "hashed", "shown")

    def __init__(self, model: type) -> None:
        fields = dataclasses.fields(model)
        self.shown = tuple(f.name for f in fields if f.repr)
        self.compared = _values([f.name for f in fields if f.compare])
        hashed = [f.name for f in fields if (f.compare if f.hash is None else f.hash)]
        self.hashed = _values(hashed)
        self.fields = frozenset(f.name for f in fields)


def _plan(cls: type) -> _Plan:
    """The plan of the model `cls` is or is below (the nearest class that `@model` made),
    made now if it was not yet (two threads making it at once both make it; one stays)."""
    model = next(klass for klass in cls.__mro__ if "__model__" in vars(klass))
    plan = vars(model)["__model__"]
    if plan is None:
        plan = _Plan(model)
        type.__setattr__(model, "__model__", plan)
    return plan  # type: ignore[no-any-return]


@reprlib.recursive_repr()  # "..." for a model inside itself, as dataclasses' own
def _repr(self: Any) -> str:
    plan = self.__model__ or _plan(self.__class__)
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in plan.shown)
    return f"{self.__class__.__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        compared = (self.__model__ or _plan(self.__class__)).compared
        return compared(self) == compared(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash((self.__model__ or _plan(self.__class__)).hashed(self))


def _frozen(cls: type, name: str) -> bool:
    """Whether the shared pair refuses to set or delete `name` on an instance of `cls`: any
    name on a frozen model itself, its fields on a class below it that is not one (as the
    generated pair: `type(self) is cls or name in fields`)."""
    return "__model__" in vars(cls) or name in _plan(cls).fields


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    if _frozen(self.__class__, name):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: Any, name: str) -> None:
    if _frozen(self.__class__, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)
