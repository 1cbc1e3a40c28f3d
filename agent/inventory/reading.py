"""What every inventory source is, and the reading of them all in order.

The sources themselves (a file, a command, a plugin: `jobs_agent.inventory.sources`) are loaded
only when the configuration lists one; without any, an agent reads just its own record of its
jobs (`engine/packages.py`), so an idle agent does not carry their code (issue 18). A package and
the inventory's error are declared here too, so that an idle agent does not load the package
model either (`inventory.model`: a job document's `installs` and destinations).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

import structlog

from jobs_agent.datamodel import model

log = structlog.get_logger("jobs_agent.inventory")

MAX_SOURCE_BYTES = 64 * 1024


class InventoryError(ValueError):
    """A package entry that cannot be used; the message names where it is and why.

    It, a package (`PackageVersion`) and a set of them (`Packages`) are declared here, with what
    reads them (every source, the agent's own record, the configuration's checks), and not in
    `inventory.model` (which gives them too): the checks of what a job document says it installs
    load with the first job's packages, not at every start (issue 18)."""


@model(slots=True)
class PackageVersion:
    """One package as installed (or to be installed); `version` None: not installed."""

    name: str
    version: str | None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_reported(self) -> dict[str, Any] | None:
        """This package's entry in `$package`'s `reported` section: only `version` and
        `attributes` (the catalog's keywords), or null for a package that is not installed."""
        if self.version is None:
            return None
        entry: dict[str, Any] = {"version": self.version}
        if self.attributes:
            entry["attributes"] = dict(self.attributes)
        return entry


Packages = dict[str, PackageVersion]


class InventorySource(abc.ABC):
    @abc.abstractmethod
    def describe(self) -> str:
        """How the source is named in errors and logs (`file /etc/...`)."""

    @abc.abstractmethod
    async def read(self) -> Packages:
        """The packages the source lists; `InventoryError` with the reason otherwise."""

    def _parse(self, data: bytes) -> Packages:
        if len(data) > MAX_SOURCE_BYTES:
            raise InventoryError(f"{self.describe()}: more than {MAX_SOURCE_BYTES} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InventoryError(f"{self.describe()}: not JSON in UTF-8 ({exc})") from None
        from jobs_agent.inventory.model import parse_packages

        return parse_packages(value, self.describe())


@model(slots=True)
class InventoryReading:
    """The merged packages of every source that could be read, and why the others could not."""

    packages: Packages
    errors: tuple[str, ...] = ()


async def read_inventory(sources: Sequence[InventorySource]) -> InventoryReading:
    """Read every source in order; a later source's entry replaces an earlier one's. A source
    that fails is logged and left out (its packages are then unknown, never "removed")."""
    packages: Packages = {}
    errors: list[str] = []
    for source in sources:
        try:
            found = await source.read()
        except InventoryError as exc:
            log.error("inventory source failed", source=source.describe(), error=str(exc))
            errors.append(str(exc))
            continue
        for name, package in found.items():
            earlier = packages.get(name)
            if earlier is not None and earlier != package:
                log.info(
                    "inventory source overrides an earlier one",
                    package=name,
                    source=source.describe(),
                )
            packages[name] = package
    return InventoryReading(packages, tuple(errors))
