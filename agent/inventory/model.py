"""What is installed, and what a job says it installs: the words of the Software Package Catalog.

A package version is a package name (`[a-zA-Z0-9._-]`, 1-128), a version name (the same
characters, 1-64) and attributes (keys `[a-zA-Z0-9:_-]+`, values without control characters,
3 KB in all): the catalog's own limits (API_CreatePackageVersion.html), so whatever the agent
reports could also be a catalog entry. Everything is checked here, at the edge; a bad entry is
an `InventoryError` naming its path.

The job document names what the job installs (the agent's addition; docs/handlers.md):

    "installs": {"firmware": {"version": "2.1.0", "attributes": {"channel": "stable"}}}

the very shape of the `$package` shadow's `reported` section (`null` for a package the job
removes). A job deployed with CreateJob's `destinationPackageVersions` is different: AWS IoT
Jobs writes `$package` itself when the execution succeeds, and the agent must stay silent. The
device cannot see that list: the job execution a device receives (DescribeJobExecution,
StartNextPendingJobExecution, notify-next; API_iot-jobs-data_JobExecution.html) has no such
field, and the job document's package substitution parameters resolve to attribute values and
artifact URLs, not to the list. So the document carries a copy:

    "destinationPackageVersions": [
        "arn:aws:iot:eu-west-1:123456789012:package/firmware/version/2.1.0"]

Present and not empty, it means: AWS reports, the agent does not; the versions it names are the
targets of the "already installed" check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from jobs_agent.datamodel import model

# The error, one package and a set of them, declared with what reads them: importable from here.
from jobs_agent.inventory.reading import InventoryError as InventoryError
from jobs_agent.inventory.reading import Packages as Packages
from jobs_agent.inventory.reading import PackageVersion as PackageVersion
from jobs_agent.vocabulary import (
    DEFAULT_VERSION,
    MAX_DESTINATION_PACKAGE_VERSIONS,
    MAX_PACKAGE_ATTRIBUTES_BYTES,
    NULL_VERSION,
    PACKAGE_ATTRIBUTE_KEY_RE,
    PACKAGE_NAME_RE,
    VERSION_NAME_RE,
)

INSTALLS_KEY = "installs"
DESTINATIONS_KEY = "destinationPackageVersions"
_VERSION_ARN = re.compile(
    r"arn:aws[a-z-]*:iot:[a-z0-9-]+:\d{12}:package/(?P<package>[^/]+)/version/(?P<version>[^/]+)"
)


def _no_control(text: str) -> bool:
    from unicodedata import category  # when a package is read, not at start (issue 18)

    return bool(text) and not any(category(c)[0] == "C" for c in text)


def check_package_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not PACKAGE_NAME_RE.fullmatch(name):
        raise InventoryError(f"{where}: package name {name!r} is not 1-128 of [a-zA-Z0-9._-]")
    return name


def check_attributes(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InventoryError(f"{where}: expected an object of strings")
    out: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not PACKAGE_ATTRIBUTE_KEY_RE.fullmatch(key):
            raise InventoryError(f"{where}: attribute name {key!r} is not [a-zA-Z0-9:_-]+")
        if not isinstance(text, str) or not _no_control(text):
            raise InventoryError(
                f"{where}.{key}: expected a non-empty string without control characters"
            )
        out[key] = text
    size = len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PACKAGE_ATTRIBUTES_BYTES:
        raise InventoryError(f"{where}: {size} bytes of attributes, more than 3 KB")
    return out


def package_entry(name: str, entry: Any, where: str) -> PackageVersion:
    """One `{"version", "attributes"}` entry (null: not installed); nothing else is allowed."""
    if entry is None:
        return PackageVersion(name, None)
    if not isinstance(entry, Mapping):
        raise InventoryError(f"{where}: expected an object with version and attributes, or null")
    unknown = sorted(str(k) for k in entry if k not in ("version", "attributes"))
    if unknown:
        raise InventoryError(f"{where}.{unknown[0]}: unknown key (only version and attributes)")
    version = entry.get("version")
    if not isinstance(version, str) or not VERSION_NAME_RE.fullmatch(version):
        raise InventoryError(
            f"{where}.version: expected a version name of 1-64 [a-zA-Z0-9._-], got {version!r}"
        )
    return PackageVersion(
        name, version, check_attributes(entry.get("attributes"), f"{where}.attributes")
    )


def parse_packages(data: Any, where: str) -> Packages:
    """`{"<package>": {"version", "attributes"} | null, ...}`: the shape of `$package`."""
    if not isinstance(data, Mapping):
        raise InventoryError(f"{where}: expected an object of packages")
    return {
        check_package_name(name, where): package_entry(name, entry, f"{where}.{name}")
        for name, entry in data.items()
    }


@model(slots=True)
class Destination:
    """One `destinationPackageVersions` ARN; `version` is `$default` or `$null` as given."""

    arn: str
    package: str
    version: str

    @property
    def known(self) -> PackageVersion | None:
        """The version the device can hold against its inventory (None for `$default`, whose
        version only the service knows, and `$null`, an uninstall: absence from a local
        inventory is no proof that a package is gone)."""
        if self.version in (DEFAULT_VERSION, NULL_VERSION):
            return None
        return PackageVersion(self.package, self.version)


def parse_destinations(data: Any, where: str = DESTINATIONS_KEY) -> tuple[Destination, ...]:
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_DESTINATION_PACKAGE_VERSIONS:
        raise InventoryError(f"{where}: expected a list of 1 to 25 package version ARNs")
    found: list[Destination] = []
    for index, arn in enumerate(data):
        match = _VERSION_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if match is None:
            raise InventoryError(
                f"{where}[{index}]: expected arn:aws:iot:REGION:ACCOUNT:package/NAME/version/"
                f"VERSION, got {arn!r}"
            )
        package = check_package_name(match["package"], f"{where}[{index}]")
        version = match["version"]
        if version not in (DEFAULT_VERSION, NULL_VERSION) and not VERSION_NAME_RE.fullmatch(
            version
        ):
            raise InventoryError(f"{where}[{index}]: version name {version!r} is not valid")
        if any(d.package == package for d in found):
            raise InventoryError(f"{where}[{index}]: package {package} is named twice")
        found.append(Destination(arn, package, version))
    return tuple(found)


@model(slots=True)
class JobPackages:
    """What a job document says about software packages (see the module docstring)."""

    installs: Packages = field(default_factory=dict)
    destinations: tuple[Destination, ...] = ()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> JobPackages:
        """Raises `InventoryError` naming the path: the engine REJECTS such a document."""
        installs = (
            parse_packages(document[INSTALLS_KEY], INSTALLS_KEY) if INSTALLS_KEY in document else {}
        )
        destinations = (
            parse_destinations(document[DESTINATIONS_KEY]) if DESTINATIONS_KEY in document else ()
        )
        if destinations:
            named = {d.package: d for d in destinations}
            for name, package in installs.items():
                destination = named.get(name)
                if destination is None:
                    raise InventoryError(
                        f"{INSTALLS_KEY}.{name}: not in {DESTINATIONS_KEY}; with"
                        f" {DESTINATIONS_KEY} AWS IoT Jobs reports the packages, so list every"
                        " one there"
                    )
                if destination.known is not None and destination.version != package.version:
                    raise InventoryError(
                        f"{INSTALLS_KEY}.{name}.version: {package.version} but"
                        f" {DESTINATIONS_KEY} deploys {destination.version}"
                    )
        return cls(installs, destinations)

    @property
    def reported_by_jobs(self) -> bool:
        """AWS IoT Jobs writes `$package` for this job: the agent stays silent."""
        return bool(self.destinations)

    def to_report(self) -> Packages:
        """What the agent reports to `$package` when the job SUCCEEDS (nothing when AWS does)."""
        return {} if self.reported_by_jobs else dict(self.installs)

    def targets(self) -> list[PackageVersion] | None:
        """The versions the job installs, for the "already installed" check; None when any of
        them cannot be checked on the device (`$default`, `$null`, a removal) or there are
        none."""
        if self.destinations:
            known = [d.known for d in self.destinations]
            if any(k is None for k in known):
                return None
            targets = [k for k in known if k is not None]
        else:
            targets = list(self.installs.values())
        if not targets or any(t.version is None for t in targets):
            return None
        return targets


def already_installed(job: JobPackages, installed: Mapping[str, PackageVersion]) -> bool:
    """True when every version the job installs is the installed version of its package.

    Versions are compared as names, exactly: the catalog orders nothing ("2.0" and "2.0.0" are
    different versions), and a downgrade is a change like any other. Attributes are not
    compared: they describe a version, they do not make another one.
    """
    targets = job.targets()
    if targets is None:
        return False
    for target in targets:
        have = installed.get(target.name)
        if have is None or have.version != target.version:
            return False
    return True
