"""How an option's value is checked: a rule in the metadata of the dataclass field that holds it.

The owner of a set of options (a transport backend, the `jobs:` and `log:` sections) declares
each one as `option(default, rule)`; the configuration loader (`jobs_agent.config`) reads the
rules from the fields to check a section and to word its errors, so an option, its default and
what it accepts are written once, where the option lives. Nothing here knows any option.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model

_RULE = "jobs_agent.rule"
_SECRET_FLAG = "jobs_agent.secret"  # noqa: S105 -- a metadata key, not a password


@model
class Rule:
    """What a value must be (`expected`, shown to the operator) and how it is converted;
    `convert` raises ValueError or TypeError for a value that does not fit."""

    expected: str
    convert: Callable[[Any], Any]
    explains: bool = False
    """The converter's ValueError message is complete (names the key below the option and what
    was wrong): the loader shows it, with the line, instead of `expected`."""


def option(
    default: Any = None,
    rule: Rule | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field checked by `rule` (its default, or a `factory` for a mutable one); a
    `secret` one is never shown, not even when wrong."""
    metadata = {_RULE: rule, _SECRET_FLAG: secret}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule_of(field: dataclasses.Field[Any]) -> Rule | None:
    rule = field.metadata.get(_RULE)
    return rule if isinstance(rule, Rule) else None


def is_secret(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get(_SECRET_FLAG))


# -- rules -------------------------------------------------------------------------------------
def int_in(low: int, high: int) -> Rule:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError
        return value

    return Rule(f"an integer from {low} to {high}", convert)


def number_in(low: float, high: float) -> Rule:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if not low <= value <= high:
            raise ValueError
        return float(value)

    return Rule(f"a number from {low:g} to {high:g}", convert)


def choice(*choices: str) -> Rule:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError
        return value.lower()

    return Rule("one of " + ", ".join(choices), convert)


def pattern(regex: re.Pattern[str], description: str, *, allow_empty: bool = False) -> Rule:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        if value == "" and allow_empty:
            return value
        if not regex.fullmatch(value):
            raise ValueError
        return value

    return Rule(description, convert)


def string() -> Rule:
    def convert(value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)

    return Rule("a string", convert)


def boolean() -> Rule:
    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value

    return Rule("true or false", convert)


def path(*, optional: bool) -> Rule:
    def convert(value: Any) -> Path | None:
        if value is None or value == "":
            if optional:
                return None
            raise ValueError
        if not isinstance(value, str):
            raise ValueError
        return Path(value).expanduser()

    return Rule("a file system path" + (" or null" if optional else ""), convert)


def optional(rule: Rule) -> Rule:
    def convert(value: Any) -> Any:
        return None if value is None else rule.convert(value)

    return Rule(rule.expected + " or null", convert)


def list_of(rule: Rule, *, non_empty: bool = False) -> Rule:
    def convert(value: Any) -> tuple[Any, ...]:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ValueError
        if non_empty and not value:
            raise ValueError
        return tuple(rule.convert(item) for item in value)

    return Rule(f"a list of {rule.expected}" + (" (not empty)" if non_empty else ""), convert)


def plugin_map() -> Rule:
    target = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")

    def convert(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError
        result: dict[str, str] = {}
        for name, spec in value.items():
            if not isinstance(name, str) or not isinstance(spec, str) or not target.fullmatch(spec):
                raise ValueError
            result[name] = spec
        return result

    return Rule('a mapping of handler names to "package.module:Class"', convert)


CLIENT_ID = pattern(
    re.compile(r"[\x21-\x7e]{1,128}"), "1 to 128 printable characters", allow_empty=True
)
"""An MQTT client id as AWS IoT takes it; empty means: the thing name."""
