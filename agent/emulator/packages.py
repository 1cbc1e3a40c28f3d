"""AWS IoT Device Management's Software Package Catalog: packages, package versions and the
account's package configuration, and what they change in a job.

Pages (developer guide): "Preparing to use Software Package Catalog" (version lifecycle, default
version, version attributes, the reserved named shadow), "Preparing AWS IoT Jobs" (substitution
parameters, `$default`, naming packages when deploying, `$null`); API reference: CreatePackage,
CreatePackageVersion, UpdatePackage, UpdatePackageVersion, the Delete/Get/List operations,
UpdatePackageConfiguration, VersionUpdateByJobsConfig, CreateJob's `destinationPackageVersions`.

* A version is created `DRAFT`; `PUBLISH` moves DRAFT or DEPRECATED to `PUBLISHED`, `DEPRECATE`
  PUBLISHED to `DEPRECATED`. Attributes and the artifact change only while DRAFT, the recipe
  while DRAFT or PUBLISHED, the description always. Only a PUBLISHED or DEPRECATED version may be
  a package's default version or a job's destination.
* Deleting: a package only once it has no versions ("you must delete the package versions
  first"), a version only if it is not the package's default; deleting something absent
  succeeds (neither operation lists ResourceNotFoundException).
* Attributes: keys `[a-zA-Z0-9:_-]+`, values without control characters, 3 KB in all.
* CreateJob `destinationPackageVersions`: up to 25 version ARNs
  `arn:aws:iot:REGION:ACCOUNT:package/NAME/version/VERSION`, VERSION may be `$default` (the
  package's default version) or `$null` (the package is removed from `$package`). The job
  document's substitution parameters are resolved when the job is created:
  `${aws:iot:package:P:version:V:attributes:KEY}` (one attribute),
  `${aws:iot:package:P:version:V:attributes}` (all of them, as a JSON object; it must be a whole
  JSON string value), `${aws:iot:package:P:version:V:artifact-location:s3-presigned-url}` (the
  artifact's S3 object, then presigned on every delivery like any presigned URL placeholder),
  with `P` and `V` empty for the job's single package and `$default` allowed; every package and
  version the document names must be among the destinations.
* When such an execution SUCCEEDS and the package configuration's
  `versionUpdateByJobsConfig.enabled` is true (it is false until UpdatePackageConfiguration),
  the Jobs service updates the thing's `$package` shadow: `reported.<package>.version` for each
  destination (attributes untouched, "Version attributes ... will not be automatically added to
  the reserved named shadow"), `reported.<package>: null` for `$null`. A destination version
  deleted meanwhile makes that update fail ("you will receive an error message when the job
  successfully completes and attempts to update the reserved named shadow"): the emulator logs
  it, counts `PackageShadowUpdateFailed` and leaves the shadow alone.

This module is longer than 500 lines because it holds the Software Package Catalog's whole rule
set (names, versions, lifecycle, attributes, artifacts, the package configuration, parameter
substitution into job documents) beside the pages it cites; its HTTP front end is in
control_api_catalog.py.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from jobs_agent.emulator.clock import Clock
from jobs_agent.emulator.errors import ControlError
from jobs_agent.vocabulary import (
    DEFAULT_VERSION,
    MAX_DESTINATION_PACKAGE_VERSIONS,
    MAX_PACKAGE_ATTRIBUTES_BYTES,
    NULL_VERSION,
    PACKAGE_ATTRIBUTE_KEY_RE,
    PACKAGE_NAME_RE,
    VERSION_NAME_RE,
)

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

MAX_DESCRIPTION = 1024
MAX_RECIPE = 3072
MAX_PAGE = 100
PACKAGE_PLACEHOLDER = "${aws:iot:package:"
_VERSION_ARN = re.compile(
    r"arn:aws[a-z-]*:iot:(?P<region>[a-z0-9-]*):(?P<account>\d*):package/"
    r"(?P<package>[^/]+)/version/(?P<version>[^/]+)"
)
_PLACEHOLDER = re.compile(
    r"\$\{aws:iot:package:(?P<package>[^:}]*):version:(?P<version>[^:}]*):"
    r"(?:(?P<attributes>attributes)(?::(?P<key>[^}]+))?"
    r"|(?P<artifact>artifact-location:s3-presigned-url))\}"
)


def validation(message: str) -> ControlError:
    return ControlError("ValidationException", message)


def not_found(message: str) -> ControlError:
    return ControlError("ResourceNotFoundException", message)


def conflict(message: str) -> ControlError:
    return ControlError("ConflictException", message)


class VersionStatus(StrEnum):
    DRAFT = "DRAFT"
    PUBLISHED = "PUBLISHED"
    DEPRECATED = "DEPRECATED"


DEPLOYABLE = frozenset({VersionStatus.PUBLISHED, VersionStatus.DEPRECATED})


@dataclass(slots=True)
class Package:
    name: str
    description: str | None
    created_at: float
    modified_at: float
    default_version: str | None = None
    client_token: str | None = None


@dataclass(slots=True)
class PackageVersion:
    package: str
    version: str
    description: str | None
    attributes: dict[str, str]
    created_at: float
    modified_at: float
    status: VersionStatus = VersionStatus.DRAFT
    artifact: dict[str, Any] | None = None
    """`{"s3Location": {"bucket", "key", "version"?}}`"""
    recipe: str | None = None
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """One resolved `destinationPackageVersions` entry (`version` None for `$null`)."""

    package: str
    version: str | None
    arn: str
    """The ARN as resolved (`$default` replaced by the version it named)."""


@dataclass(slots=True)
class _Writes:
    records: dict[tuple[str, str], Any] = field(default_factory=dict)


def _no_control(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] != "C" for c in text)


def check_description(description: str | None) -> None:
    if description is None:
        return
    if len(description) > MAX_DESCRIPTION:
        raise validation(f"description is longer than {MAX_DESCRIPTION} characters")
    if description and not _no_control(description):
        raise validation("description must not contain control characters")


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not PACKAGE_ATTRIBUTE_KEY_RE.fullmatch(key):
            raise validation(f"attribute key {key!r} must match [a-zA-Z0-9:_-]+")
        if not isinstance(value, str) or not _no_control(value):
            raise validation(f"attribute {key} must be a non-empty string without controls")
        out[key] = value
    size = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
    if size > MAX_PACKAGE_ATTRIBUTES_BYTES:
        raise validation(
            f"attributes take {size} bytes; at most {MAX_PACKAGE_ATTRIBUTES_BYTES} in all"
        )
    return out


def check_artifact(artifact: Any) -> dict[str, Any] | None:
    if artifact is None:
        return None
    location = artifact.get("s3Location") if isinstance(artifact, Mapping) else None
    if not isinstance(location, Mapping):
        raise validation("artifact must be {s3Location: {bucket, key, version}}")
    bucket, key = location.get("bucket"), location.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise validation("artifact.s3Location needs a bucket and a key")
    version = location.get("version")
    if version is not None and not isinstance(version, str):
        raise validation("artifact.s3Location.version must be a string")
    return {"s3Location": {k: v for k, v in location.items() if k in ("bucket", "key", "version")}}


def destinations_of(arns: Iterable[str]) -> list[Destination]:
    """The destinations a job stored (its resolved ARNs) taken apart again."""
    out = []
    for arn in arns:
        match = _VERSION_ARN.fullmatch(arn)
        if match is not None:
            version = match.group("version")
            out.append(
                Destination(
                    match.group("package"), None if version == NULL_VERSION else version, arn
                )
            )
    return out


class PackageCatalog:
    """The account's packages and versions (thread-safe; one lock, copies out)."""

    def __init__(
        self,
        clock: Clock,
        *,
        region: str,
        account_id: str,
        store: StateStore | None = None,
    ) -> None:
        self.clock = clock
        self.region = region
        self.account_id = account_id
        self._store = store
        self._lock = threading.RLock()
        self._packages: dict[str, Package] = {}
        self._versions: dict[tuple[str, str], PackageVersion] = {}
        self._update_by_jobs = False
        self._role_arn: str | None = None

    # -- ARNs and persistence ---------------------------------------------------------------------
    def package_arn(self, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:package/{name}"

    def version_arn(self, name: str, version: str) -> str:
        return f"{self.package_arn(name)}/version/{version}"

    def load(self, records: Mapping[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            for data in records.get("package", []):
                package = Package(**data)
                self._packages[package.name] = package
            for data in records.get("package-version", []):
                version = PackageVersion(**{**data, "status": VersionStatus(data["status"])})
                self._versions[(version.package, version.version)] = version
            for data in records.get("package-configuration", []):
                self._update_by_jobs = bool(data.get("enabled"))
                self._role_arn = data.get("roleArn")

    def _save(self, writes: _Writes) -> None:
        if self._store is not None and writes.records:
            self._store.save(records=writes.records)

    @staticmethod
    def _record(obj: Package | PackageVersion) -> dict[str, Any]:
        data = asdict(obj)
        if isinstance(obj, PackageVersion):
            data["status"] = obj.status.value
        return data

    def _package(self, name: str) -> Package:
        package = self._packages.get(name)
        if package is None:
            raise not_found(f"Package {name} not found")
        return package

    def _version(self, name: str, version: str) -> PackageVersion:
        found = self._versions.get((name, version))
        if found is None:
            raise not_found(f"Package version {name}/{version} not found")
        return found

    # -- packages ---------------------------------------------------------------------------------
    def create_package(
        self, name: str, description: str | None = None, client_token: str | None = None
    ) -> Package:
        """CreatePackage; the same clientToken again returns the package (idempotent)."""
        if not PACKAGE_NAME_RE.fullmatch(name):
            raise validation(f"packageName {name!r} must match [a-zA-Z0-9-_.]+ (1..128)")
        check_description(description)
        with self._lock:
            existing = self._packages.get(name)
            if existing is not None:
                if client_token is not None and existing.client_token == client_token:
                    return copy.copy(existing)
                raise conflict(f"Package {name} already exists")
            now = self.clock.now()
            package = Package(name, description, now, now, client_token=client_token)
            self._packages[name] = package
            self._save(_Writes({("package", name): self._record(package)}))
            return copy.copy(package)

    def get_package(self, name: str) -> Package:
        with self._lock:
            return copy.copy(self._package(name))

    def update_package(
        self,
        name: str,
        *,
        description: str | None = None,
        default_version: str | None = None,
        unset_default_version: bool = False,
    ) -> None:
        """UpdatePackage: the description; the default version (PUBLISHED or DEPRECATED)."""
        check_description(description)
        if default_version is not None and unset_default_version:
            raise validation("defaultVersionName and unsetDefaultVersion exclude each other")
        with self._lock:
            package = self._package(name)
            if default_version is not None:
                version = self._version(name, default_version)
                if version.status not in DEPLOYABLE:
                    raise conflict(
                        f"version {default_version} is {version.status}: only a published or "
                        "deprecated version can be the default"
                    )
                package.default_version = default_version
            if unset_default_version:
                package.default_version = None
            if description is not None:
                package.description = description
            package.modified_at = self.clock.now()
            self._save(_Writes({("package", name): self._record(package)}))

    def list_packages(self) -> list[Package]:
        with self._lock:
            return [copy.copy(p) for _, p in sorted(self._packages.items())]

    def delete_package(self, name: str) -> None:
        with self._lock:
            if name not in self._packages:
                return
            if any(package == name for package, _ in self._versions):
                raise validation(f"Package {name} has versions: delete them first")
            del self._packages[name]
            self._save(_Writes({("package", name): None}))

    # -- versions ---------------------------------------------------------------------------------
    def create_version(
        self,
        name: str,
        version: str,
        *,
        description: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        artifact: Any = None,
        recipe: str | None = None,
        client_token: str | None = None,
    ) -> PackageVersion:
        if not VERSION_NAME_RE.fullmatch(version):
            raise validation(f"versionName {version!r} must match [a-zA-Z0-9-_.]+ (1..64)")
        check_description(description)
        checked = check_attributes(attributes or {})
        location = check_artifact(artifact)
        if recipe is not None and len(recipe) > MAX_RECIPE:
            raise validation(f"recipe is longer than {MAX_RECIPE} characters")
        with self._lock:
            if name not in self._packages:
                # CreatePackageVersion lists no ResourceNotFoundException.
                raise validation(f"Package {name} does not exist")
            existing = self._versions.get((name, version))
            if existing is not None:
                if client_token is not None and existing.client_token == client_token:
                    return copy.copy(existing)
                raise conflict(f"Package version {name}/{version} already exists")
            now = self.clock.now()
            created = PackageVersion(
                name,
                version,
                description,
                checked,
                now,
                now,
                artifact=location,
                recipe=recipe,
                client_token=client_token,
            )
            self._versions[(name, version)] = created
            self._save(_Writes({("package-version", f"{name}/{version}"): self._record(created)}))
            return copy.copy(created)

    def get_version(self, name: str, version: str) -> PackageVersion:
        with self._lock:
            return copy.copy(self._version(name, version))

    def update_version(
        self,
        name: str,
        version: str,
        *,
        description: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        artifact: Any = None,
        action: str | None = None,
        recipe: str | None = None,
    ) -> None:
        """UpdatePackageVersion: edits as the lifecycle allows, then `action`."""
        check_description(description)
        checked = None if attributes is None else check_attributes(attributes)
        location = check_artifact(artifact)
        if recipe is not None and len(recipe) > MAX_RECIPE:
            raise validation(f"recipe is longer than {MAX_RECIPE} characters")
        if action not in (None, "PUBLISH", "DEPRECATE"):
            raise validation(f"action must be PUBLISH or DEPRECATE, not {action!r}")
        with self._lock:
            found = self._version(name, version)
            if (checked is not None or location is not None) and (
                found.status is not VersionStatus.DRAFT
            ):
                raise conflict(
                    f"{name}/{version} is {found.status}: attributes and the artifact change "
                    "only while the version is a draft"
                )
            if recipe is not None and found.status is VersionStatus.DEPRECATED:
                raise conflict(f"{name}/{version} is DEPRECATED: its recipe no longer changes")
            if action == "PUBLISH":
                if found.status is VersionStatus.PUBLISHED:
                    raise conflict(f"{name}/{version} is already PUBLISHED")
                found.status = VersionStatus.PUBLISHED
            elif action == "DEPRECATE":
                if found.status is not VersionStatus.PUBLISHED:
                    raise conflict(
                        f"{name}/{version} is {found.status}: only a published "
                        "version can be deprecated"
                    )
                found.status = VersionStatus.DEPRECATED
            if description is not None:
                found.description = description
            if checked is not None:
                found.attributes = checked
            if location is not None:
                found.artifact = location
            if recipe is not None:
                found.recipe = recipe
            found.modified_at = self.clock.now()
            self._save(_Writes({("package-version", f"{name}/{version}"): self._record(found)}))

    def list_versions(self, name: str, status: str | None = None) -> list[PackageVersion]:
        if status is not None and status not in VersionStatus.__members__:
            raise validation(f"status must be DRAFT, PUBLISHED or DEPRECATED, not {status!r}")
        with self._lock:
            if name not in self._packages:
                raise validation(f"Package {name} does not exist")
            return [
                copy.copy(v)
                for (package, _), v in sorted(self._versions.items())
                if package == name and (status is None or v.status == status)
            ]

    def delete_version(self, name: str, version: str) -> None:
        with self._lock:
            if (name, version) not in self._versions:
                return
            package = self._packages.get(name)
            if package is not None and package.default_version == version:
                raise validation(
                    f"{name}/{version} is the package's default version: name another default "
                    "or unset it first"
                )
            del self._versions[(name, version)]
            self._save(_Writes({("package-version", f"{name}/{version}"): None}))

    # -- configuration ----------------------------------------------------------------------------
    def configuration(self) -> tuple[bool, str | None]:
        with self._lock:
            return self._update_by_jobs, self._role_arn

    def update_configuration(self, enabled: bool | None, role_arn: str | None) -> None:
        if role_arn is not None and not 20 <= len(role_arn) <= 2048:
            raise validation("roleArn must be 20..2048 characters")
        with self._lock:
            if enabled is not None:
                self._update_by_jobs = enabled
            if role_arn is not None:
                self._role_arn = role_arn
            record = {"enabled": self._update_by_jobs, "roleArn": self._role_arn}
            self._save(_Writes({("package-configuration", "config"): record}))

    # -- jobs -------------------------------------------------------------------------------------
    def resolve(self, arns: Sequence[Any]) -> list[Destination]:
        """CreateJob's destinationPackageVersions, checked (InvalidRequestException and
        ResourceNotFoundException, CreateJob's own error shapes)."""
        if not isinstance(arns, Sequence) or isinstance(arns, str):
            raise ControlError("InvalidRequestException", "destinationPackageVersions is a list")
        if len(arns) > MAX_DESTINATION_PACKAGE_VERSIONS:
            raise ControlError(
                "InvalidRequestException",
                f"at most {MAX_DESTINATION_PACKAGE_VERSIONS} destinationPackageVersions",
            )
        out: list[Destination] = []
        with self._lock:
            for arn in arns:
                match = _VERSION_ARN.fullmatch(arn) if isinstance(arn, str) else None
                if match is None:
                    raise ControlError(
                        "InvalidRequestException", f"{arn!r} is not a package version ARN"
                    )
                name, version = match.group("package"), match.group("version")
                if any(d.package == name for d in out):
                    raise ControlError(
                        "InvalidRequestException", f"package {name} is named more than once"
                    )
                if version == NULL_VERSION:
                    self._package_for_job(name)
                    out.append(Destination(name, None, arn))
                    continue
                if version == DEFAULT_VERSION:
                    package = self._package_for_job(name)
                    if package.default_version is None:
                        raise ControlError(
                            "InvalidRequestException", f"package {name} has no default version"
                        )
                    version = package.default_version
                found = self._versions.get((name, version))
                if found is None:
                    raise not_found(f"Package version {name}/{version} not found")
                if found.status not in DEPLOYABLE:
                    raise ControlError(
                        "InvalidRequestException",
                        f"{name}/{version} is {found.status}: a job deploys only a published "
                        "or deprecated version",
                    )
                out.append(Destination(name, version, self.version_arn(name, version)))
        return out

    def _package_for_job(self, name: str) -> Package:
        package = self._packages.get(name)
        if package is None:
            raise not_found(f"Package {name} not found")
        return package

    def substitute(self, text: str, destinations: Iterable[Destination]) -> str:
        """The job document with its package substitution parameters resolved (see the module
        docstring); InvalidRequestException for a package the destinations do not name."""
        chosen = {d.package: d for d in destinations}

        def whole(match: re.Match[str]) -> str:
            found = self._placeholder_version(match, chosen)
            return json.dumps(found.attributes, separators=(",", ":"))

        def inside(match: re.Match[str]) -> str:
            return _value_inside(self._placeholder_version(match, chosen), match)

        with self._lock:
            whole_values = re.compile('"' + _PLACEHOLDER.pattern + '"')
            text = whole_values.sub(
                lambda m: whole(m) if m.group("attributes") and not m.group("key") else m.group(0),
                text,
            )
            return _PLACEHOLDER.sub(inside, text)

    def _placeholder_version(
        self, match: re.Match[str], chosen: Mapping[str, Destination]
    ) -> PackageVersion:
        """The package version a placeholder names, held against the destinations."""
        name, version = match.group("package"), match.group("version")
        if not name:
            installed = [d for d in chosen.values() if d.version is not None]
            if len(installed) != 1:
                raise ControlError(
                    "InvalidRequestException",
                    f"{match.group(0)} names no package: it needs exactly one "
                    "destination package version",
                )
            name = installed[0].package
        destination = chosen.get(name)
        if destination is None or destination.version is None:
            raise ControlError(
                "InvalidRequestException",
                f"the job document uses package {name}, which destinationPackageVersions "
                "does not name",
            )
        if not version:
            version = destination.version
        elif version == DEFAULT_VERSION:
            version = self._package_for_job(name).default_version or ""
        if version != destination.version:
            raise ControlError(
                "InvalidRequestException",
                f"the job document uses {name} version {version}, destinationPackageVersions "
                f"names {destination.version}",
            )
        return self._version(name, version)

    def shadow_report(self, destinations: Iterable[Destination]) -> dict[str, Any] | None:
        """The `$package` update a succeeded execution makes, None when the configuration does
        not ask for it; ControlError when a destination version no longer exists."""
        with self._lock:
            if not self._update_by_jobs:
                return None
            reported: dict[str, Any] = {}
            for destination in destinations:
                if destination.version is None:
                    reported[destination.package] = None
                    continue
                if (destination.package, destination.version) not in self._versions:
                    raise not_found(
                        f"package version {destination.package}/{destination.version} was "
                        "deleted: the reserved named shadow is not updated"
                    )
                reported[destination.package] = {"version": destination.version}
            return {"state": {"reported": reported}}


def _value_inside(found: PackageVersion, match: re.Match[str]) -> str:
    """What a placeholder inside a JSON string becomes: an artifact's presigned-URL
    placeholder, or one attribute's value."""
    if match.group("artifact"):
        if found.artifact is None:
            raise ControlError(
                "InvalidRequestException", f"{found.package}/{found.version} has no artifact"
            )
        location = found.artifact["s3Location"]
        url = f"https://{location['bucket']}.s3.amazonaws.com/{location['key']}"
        return "${aws:iot:s3-presigned-url:" + url + "}"
    key = match.group("key")
    if key is None:
        raise ControlError(
            "InvalidRequestException",
            f"{match.group(0)} (all attributes) must be a whole JSON string value",
        )
    if key not in found.attributes:
        raise ControlError(
            "InvalidRequestException", f"{found.package}/{found.version} has no attribute {key}"
        )
    return json.dumps(found.attributes[key])[1:-1]
