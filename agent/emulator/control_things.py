"""The control plane's things and thing groups (static and dynamic), and how a job's targets
resolve to them; membership changes roll CONTINUOUS jobs out (or back).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping

from jobs_agent.emulator.configs import (
    invalid,
)
from jobs_agent.emulator.core import ServiceCore, Txn
from jobs_agent.emulator.errors import ControlError, not_found
from jobs_agent.emulator.groups import Query, ThingGroup
from jobs_agent.emulator.model import (
    TERMINAL,
    ExecutionStatus,
    Job,
    JobStatus,
    Source,
    Thing,
)
from jobs_agent.vocabulary import is_thing_name

_THING_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):thing/([a-zA-Z0-9:_-]{1,128})")
_GROUP_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):thinggroup/([a-zA-Z0-9:_-]{1,128})")


class ThingsControl(ServiceCore):
    # -- things and groups -------------------------------------------------------------------
    def create_thing(self, thing_name: str, attributes: dict[str, str] | None = None) -> Thing:
        if not is_thing_name(thing_name):
            raise invalid(f"invalid thing name {thing_name!r}")
        with self._lock:
            txn = Txn()
            existing = self._things.get(thing_name)
            if existing is not None:
                if attributes and attributes != existing.attributes:
                    raise ControlError(
                        "ResourceAlreadyExistsException",
                        f"Thing {thing_name} already exists with different attributes",
                    )
                return copy.copy(existing)
            thing = self._ensure_thing(thing_name, txn)
            if attributes:
                thing.attributes = dict(attributes)
            self._membership(
                txn, thing_name, *self.groups.thing_changed(thing_name, thing.attributes)
            )
            self._finish(txn)
            result = copy.copy(thing)
        self._emit()
        return result

    def describe_thing(self, thing_name: str) -> Thing:
        with self._lock:
            thing = self._things.get(thing_name)
            if thing is None:
                raise not_found(f"Thing {thing_name}")
            return copy.copy(thing)

    def update_thing(
        self, thing_name: str, attributes: Mapping[str, str], merge: bool = False
    ) -> Thing:
        """UpdateThing's attributePayload: replace the attributes (or merge them; an empty value
        removes one when merging). Dynamic groups follow."""
        with self._lock:
            thing = self._things.get(thing_name)
            if thing is None:
                raise not_found(f"Thing {thing_name}")
            txn = Txn()
            if merge:
                merged = {**thing.attributes, **attributes}
                thing.attributes = {k: v for k, v in merged.items() if v != ""}
            else:
                thing.attributes = dict(attributes)
            thing.version += 1
            txn.things[thing_name] = thing
            self._membership(
                txn, thing_name, *self.groups.thing_changed(thing_name, thing.attributes)
            )
            self._finish(txn)
            result = copy.copy(thing)
        self._emit()
        return result

    def create_thing_group(
        self, name: str, description: str | None = None, query: str | None = None
    ) -> ThingGroup:
        """CreateThingGroup, or CreateDynamicThingGroup with a fleet-indexing `query`."""
        if not is_thing_name(name):
            raise invalid(f"invalid thing group name {name!r}")
        parsed = None if query is None else Query.parse(query)
        with self._lock:
            txn = Txn()
            group = ThingGroup(name, self.clock.now(), description, parsed)
            self.groups.create(group, {t.name: t.attributes for t in self._things.values()})
            for thing in sorted(group.members):
                self._membership(txn, thing, [name], [])
            self._save_group(txn, group)
            self._finish(txn)
            result = copy.copy(group)
        self._emit()
        return result

    def _save_group(self, txn: Txn, group: ThingGroup) -> None:
        txn.records[("group", group.name)] = {
            "name": group.name,
            "created_at": group.created_at,
            "description": group.description,
            "query": None if group.query is None else group.query.text,
            "members": sorted(group.members),
            "version": group.version,
        }

    def describe_thing_group(self, name: str) -> ThingGroup:
        with self._lock:
            group = copy.copy(self.groups.get(name))
            group.members = set(group.members)
            return group

    def delete_thing_group(self, name: str) -> None:
        with self._lock:
            txn = Txn()
            for thing in sorted(self.groups.delete(name)):
                self._membership(txn, thing, [], [name])
            txn.records[("group", name)] = None
            self._finish(txn)
        self._emit()

    def add_thing_to_group(self, group_name: str, thing_name: str) -> None:
        with self._lock:
            txn = Txn()
            if thing_name not in self._things:
                raise not_found(f"Thing {thing_name}")
            if self.groups.add(group_name, thing_name):
                self._membership(txn, thing_name, [group_name], [])
            self._save_group(txn, self.groups.get(group_name))
            self._finish(txn)
        self._emit()

    def remove_thing_from_group(self, group_name: str, thing_name: str) -> None:
        with self._lock:
            txn = Txn()
            if self.groups.remove(group_name, thing_name):
                self._membership(txn, thing_name, [], [group_name])
            self._save_group(txn, self.groups.get(group_name))
            self._finish(txn)
        self._emit()

    def _membership(self, txn: Txn, thing: str, joined: Iterable[str], left: Iterable[str]) -> None:
        """A thing joined or left groups: CONTINUOUS jobs targeting them roll out to it, or
        mark its pending execution REMOVED once it is no longer a target at all."""
        joined, left = set(joined), set(left)
        if not joined and not left:
            return
        for job in self._jobs.values():
            if job.target_selection != "CONTINUOUS" or job.status not in (
                JobStatus.IN_PROGRESS,
                JobStatus.SCHEDULED,
            ):
                continue
            groups = set(job.group_names)
            if joined & groups:
                self._begin_rollout(txn, job, [thing])
            elif left & groups and not self._is_target(job, thing):
                if thing in job.pending_targets:
                    job.pending_targets.remove(thing)
                execution = self._current(job.job_id, thing)
                if execution is not None and execution.status not in TERMINAL:
                    self._set_status(txn, execution, ExecutionStatus.REMOVED, Source.CONTROL)

    def _is_target(self, job: Job, thing: str) -> bool:
        if self.thing_arn(thing) in job.targets:
            return True
        return bool(self.groups.groups_of(thing) & set(job.group_names))

    def _resolve_targets(self, targets: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """(target ARNs as AWS reports them, thing names, group names)."""
        arns: list[str] = []
        things: list[str] = []
        groups: list[str] = []
        for target in targets:
            if not isinstance(target, str):
                raise invalid("targets must be thing or thing group ARNs")
            group = _GROUP_ARN.fullmatch(target)
            if group is not None:
                self.groups.get(group.group(3))
                groups.append(group.group(3))
                arns.append(self.group_arn(group.group(3)))
                continue
            if is_thing_name(target) and not target.startswith("arn:"):
                name = target
            else:
                match = _THING_ARN.fullmatch(target)
                if match is None:
                    raise invalid(f"target {target!r} is not a thing or thing group ARN")
                name = match.group(3)
            things.append(name)
            arns.append(self.thing_arn(name))
        return arns, things, groups
