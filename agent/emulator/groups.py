"""Thing groups, static and dynamic, as job targets.

A static group's members are added and removed by AddThingToThingGroup and
RemoveThingFromThingGroup; a dynamic group's members are the things whose registry data match
its fleet-indexing query, re-evaluated whenever a thing is created or its attributes change.
Jobs ask only "who is in this group now" and "which groups did this change affect", so the
service can roll out CONTINUOUS jobs to new members and mark executions of leavers REMOVED.

The query language is a subset of fleet indexing's: terms `thingName:VALUE` and
`attributes.NAME:VALUE` (a trailing `*` matches a prefix), joined by `AND` (or a space) or by
`OR`; parentheses and the other indexing fields are InvalidQueryException. docs/emulator.md says
so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from jobs_agent.emulator.errors import ControlError

_TERM = re.compile(r"(thingName|attributes\.[a-zA-Z0-9_.,@/:#-]+):(\S+)")


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    alternatives: tuple[tuple[tuple[str, str], ...], ...]
    """OR of ANDs of (field, value pattern)."""

    @classmethod
    def parse(cls, text: str) -> Query:
        if not isinstance(text, str) or not text.strip():
            raise ControlError("InvalidQueryException", "queryString must not be empty")
        alternatives = []
        for branch in re.split(r"\s+OR\s+", text.strip()):
            terms = []
            for word in re.split(r"\s+(?:AND\s+)?", branch.strip()):
                if word == "AND":
                    continue
                match = _TERM.fullmatch(word)
                if match is None:
                    raise ControlError(
                        "InvalidQueryException",
                        f"unsupported query term {word!r}: the emulator supports thingName:V "
                        "and attributes.NAME:V joined by AND / OR",
                    )
                terms.append((match.group(1), match.group(2)))
            alternatives.append(tuple(terms))
        return cls(text, tuple(alternatives))

    def matches(self, thing_name: str, attributes: Mapping[str, str]) -> bool:
        def term(field_name: str, pattern: str) -> bool:
            if field_name == "thingName":
                value: str | None = thing_name
            else:
                value = attributes.get(field_name.removeprefix("attributes."))
            if value is None:
                return False
            if pattern.endswith("*"):
                return value.startswith(pattern[:-1])
            return value == pattern

        return any(all(term(f, p) for f, p in branch) for branch in self.alternatives)


@dataclass(slots=True)
class ThingGroup:
    name: str
    created_at: float
    description: str | None = None
    query: Query | None = None
    members: set[str] = field(default_factory=set)
    version: int = 1

    @property
    def dynamic(self) -> bool:
        return self.query is not None


class GroupRegistry:
    """Groups and their members; the service calls it under its own lock."""

    def __init__(self) -> None:
        self.groups: dict[str, ThingGroup] = {}
        self._of_thing: dict[str, set[str]] = {}

    def get(self, name: str) -> ThingGroup:
        group = self.groups.get(name)
        if group is None:
            raise ControlError("ResourceNotFoundException", f"Thing group {name} not found")
        return group

    def create(self, group: ThingGroup, things: Mapping[str, Mapping[str, str]]) -> None:
        if group.name in self.groups:
            raise ControlError(
                "ResourceAlreadyExistsException", f"Thing group {group.name} already exists"
            )
        self.groups[group.name] = group
        if group.query is not None:
            for name, attributes in things.items():
                if group.query.matches(name, attributes):
                    self._join(group, name)

    def delete(self, name: str) -> set[str]:
        """Remove a group; returns its former members."""
        group = self.groups.pop(name, None)
        if group is None:
            return set()
        for thing in group.members:
            self._of_thing.get(thing, set()).discard(name)
        return set(group.members)

    def _join(self, group: ThingGroup, thing: str) -> bool:
        if thing in group.members:
            return False
        group.members.add(thing)
        self._of_thing.setdefault(thing, set()).add(group.name)
        return True

    def _leave(self, group: ThingGroup, thing: str) -> bool:
        if thing not in group.members:
            return False
        group.members.discard(thing)
        self._of_thing.get(thing, set()).discard(group.name)
        return True

    def add(self, group_name: str, thing: str) -> bool:
        group = self.get(group_name)
        if group.dynamic:
            raise ControlError(
                "InvalidRequestException", f"{group_name} is a dynamic group: its query decides"
            )
        return self._join(group, thing)

    def remove(self, group_name: str, thing: str) -> bool:
        group = self.get(group_name)
        if group.dynamic:
            raise ControlError(
                "InvalidRequestException", f"{group_name} is a dynamic group: its query decides"
            )
        return self._leave(group, thing)

    def thing_changed(
        self, thing: str, attributes: Mapping[str, str] | None
    ) -> tuple[list[str], list[str]]:
        """Re-evaluate the dynamic groups for `thing` (None: the thing was deleted, it leaves
        every group). Returns (groups joined, groups left)."""
        joined, left = [], []
        for group in self.groups.values():
            if attributes is None:
                if self._leave(group, thing):
                    left.append(group.name)
            elif group.query is not None:
                if group.query.matches(thing, attributes):
                    if self._join(group, thing):
                        joined.append(group.name)
                elif self._leave(group, thing):
                    left.append(group.name)
        return joined, left

    def groups_of(self, thing: str) -> set[str]:
        return set(self._of_thing.get(thing, ()))

    def members(self, names: Iterable[str]) -> list[str]:
        seen: dict[str, None] = {}
        for name in names:
            for thing in sorted(self.get(name).members):
                seen[thing] = None
        return list(seen)
