"""The device's software inventory in the reserved named shadow `$package`.

The document is exactly the one the Software Package Catalog documents
(preparing-to-use-software-package-catalog.html, "Reserved named shadow"):

    {"state": {"reported": {"<package>": {"version": "<version>", "attributes": {...}}}}}

with nothing but `version` and `attributes` per package ("Update requests that include other
keywords ... will receive an error response"), and `null` for a package that is gone.

Reporting is a read, a difference and a conditional write:

* `get` the shadow, and send only the packages whose version differs or whose attributes are
  missing or different: a report that changes nothing sends nothing, so reporting is
  idempotent and repeating it (a retry, every start-up) costs one `get`.
* The write carries the version read (`ShadowVersionConflict` when AWS IoT Jobs or anyone else
  wrote meanwhile: read again, decide again, a few times).
* Packages the agent does not list are left alone: AWS writes `$package` for jobs with
  `destinationPackageVersions`, an operator may write it too; only a package the agent knows to
  be gone (`version` None) is removed. Attributes merge like any shadow value: the agent adds
  and changes attribute keys, it never removes one (the shadow's merge has no way to without
  removing the whole package).
* Size: the service keeps at most 8 KB of desired and reported state, after the merge
  (diagnosing-shadows.html). The report is planned against what the shadow already holds:
  removals first, then the packages the caller names first (the job that just succeeded),
  then the rest by name; a package that would push the document over the limit is left out
  whole (never cut), logged, and returned in `omitted`. The size is counted as the emulator
  counts it (the compact JSON of both sections), which is never less than what AWS counts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from jobs_agent.datamodel import model
from jobs_agent.inventory.model import PackageVersion
from jobs_agent.shadow.client import ShadowClient, ShadowDocument
from jobs_agent.shadow.errors import ShadowNotFound, ShadowVersionConflict
from jobs_agent.shadow.topics import PACKAGE_SHADOW

log = structlog.get_logger("jobs_agent.inventory")

MAX_STATE_BYTES = 8192
ATTEMPTS = 3
"""Reads and writes in a row before a report gives up on a shadow that keeps changing."""


@model(slots=True)
class ReportPlan:
    """What one inventory report will write to the `$package` shadow."""

    patch: dict[str, Any]
    """The `reported` section to send: package -> `{"version", "attributes"}` or None."""
    omitted: tuple[str, ...]
    """Packages left out because the shadow would exceed `MAX_STATE_BYTES`."""
    size: int
    """The state's size after the merge, in bytes."""


@model(slots=True)
class ReportResult:
    """What one inventory report wrote, and the shadow's version after it."""

    sent: dict[str, Any]
    """What was written (empty: the shadow already said it all)."""
    omitted: tuple[str, ...]
    version: int | None
    """The shadow's version afterwards (None: there is no shadow)."""


def reported_document(patch: Mapping[str, Any]) -> dict[str, Any]:
    """The update request's body without its client token."""
    return {"state": {"reported": dict(patch)}}


def _differs(current: Any, package: PackageVersion) -> bool:
    if package.version is None:
        return current is not None
    if not isinstance(current, Mapping) or current.get("version") != package.version:
        return True
    attributes = current.get("attributes")
    have = attributes if isinstance(attributes, Mapping) else {}
    return any(have.get(key) != value for key, value in package.attributes.items())


def _merged(section: dict[str, Any], name: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    """`section` after the shadow service merged `{name: entry}` into it."""
    out = dict(section)
    if entry is None:
        out.pop(name, None)
        return out
    current = out.get(name)
    merged = dict(current) if isinstance(current, Mapping) else {}
    merged["version"] = entry["version"]
    if "attributes" in entry:
        old = merged.get("attributes")
        merged["attributes"] = {**(old if isinstance(old, Mapping) else {}), **entry["attributes"]}
    out[name] = merged
    return out


def _size(desired: Mapping[str, Any] | None, reported: Mapping[str, Any]) -> int:
    state = {"desired": desired, "reported": reported}
    return len(json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def plan_report(
    current: ShadowDocument | None,
    packages: Mapping[str, PackageVersion],
    priority: Sequence[str] = (),
    limit: int = MAX_STATE_BYTES,
) -> ReportPlan:
    """What to send so that `$package` says `packages` (see the module docstring)."""
    reported: dict[str, Any] = copy.deepcopy(dict(current.reported or {})) if current else {}
    desired = current.desired if current else None
    first = {name: index for index, name in enumerate(priority)}

    def order(name: str) -> tuple[int, int, str]:
        removal = packages[name].version is None
        return (0 if removal else 1, first.get(name, len(first)), name)

    patch: dict[str, Any] = {}
    omitted: list[str] = []
    for name in sorted(packages, key=order):
        package = packages[name]
        if not _differs(reported.get(name), package):
            continue
        entry = package.to_reported()
        trial = _merged(reported, name, entry)
        if _size(desired, trial) > limit:
            omitted.append(name)
            continue
        reported = trial
        patch[name] = entry
    return ReportPlan(patch, tuple(omitted), _size(desired, reported))


async def report_packages(
    shadows: ShadowClient,
    packages: Mapping[str, PackageVersion],
    *,
    priority: Sequence[str] = (),
) -> ReportResult:
    """Make `$package` say `packages`. Raises the shadow client's errors (`ShadowTimeout`:
    try again later; `ShadowForbidden`: the IoT policy lacks the `$package` topics; ...)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            current: ShadowDocument | None = await shadows.get(PACKAGE_SHADOW)
        except ShadowNotFound:
            current = None
        plan = plan_report(current, packages, priority)
        if plan.omitted:
            log.warning(
                "packages left out of $package: the shadow would exceed its size limit",
                packages=list(plan.omitted),
                limit_bytes=MAX_STATE_BYTES,
            )
        version = current.version if current is not None else None
        if not plan.patch:
            return ReportResult({}, plan.omitted, version)
        try:
            updated = await shadows.update(
                PACKAGE_SHADOW, {"reported": plan.patch}, version=version
            )
        except ShadowVersionConflict:
            if attempt == ATTEMPTS:
                raise
            log.info("$package changed while it was reported; reading it again")
            continue
        log.info(
            "software inventory reported", packages=sorted(plan.patch), version=updated.version
        )
        return ReportResult(plan.patch, plan.omitted, updated.version)
    raise AssertionError("unreachable")  # pragma: no cover
