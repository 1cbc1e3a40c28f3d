"""The control plane's Software Package Catalog (packages, versions, the package configuration;
packages.py holds their rules) and streams (MQTT-based file delivery) over HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.emulator.api_params import (
    Body,
    Query,
    bool_param,
    package_page,
    page,
    text_field,
    time_value,
)
from jobs_agent.emulator.errors import ControlError
from jobs_agent.emulator.packages import Package, PackageVersion
from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.shapes import omit_none
from jobs_agent.emulator.streams import Stream, parse_files


class CatalogApi:
    service: JobsService

    # -- software package catalog ----------------------------------------------------------------
    def _package_json(self, p: Package, full: bool) -> dict[str, Any]:
        out = omit_none(
            packageName=p.name,
            packageArn=self.service.packages.package_arn(p.name) if full else None,
            description=p.description if full else None,
            defaultVersionName=p.default_version,
            creationDate=time_value(p.created_at),
            lastModifiedDate=time_value(p.modified_at),
        )
        return out

    def _version_json(self, v: PackageVersion, full: bool) -> dict[str, Any]:
        packages = self.service.packages
        if not full:
            return omit_none(
                packageName=v.package,
                versionName=v.version,
                status=v.status.value,
                creationDate=time_value(v.created_at),
                lastModifiedDate=time_value(v.modified_at),
            )
        return omit_none(
            packageVersionArn=packages.version_arn(v.package, v.version),
            packageName=v.package,
            versionName=v.version,
            description=v.description,
            attributes=dict(v.attributes),
            artifact=v.artifact,
            status=v.status.value,
            creationDate=time_value(v.created_at),
            lastModifiedDate=time_value(v.modified_at),
            recipe=v.recipe,
        )

    def create_package(self, body: Body, query: Query, name: str) -> dict[str, Any]:
        package = self.service.packages.create_package(
            name, text_field(body, "description"), query.get("clientToken")
        )
        return omit_none(
            packageName=package.name,
            packageArn=self.service.packages.package_arn(package.name),
            description=package.description,
        )

    def get_package(self, name: str) -> dict[str, Any]:
        return self._package_json(self.service.packages.get_package(name), full=True)

    def update_package(self, body: Body, name: str) -> dict[str, Any]:
        unset = body.get("unsetDefaultVersion")
        if unset is not None and not isinstance(unset, bool):
            raise ControlError("ValidationException", "unsetDefaultVersion must be a boolean")
        self.service.packages.update_package(
            name,
            description=text_field(body, "description"),
            default_version=text_field(body, "defaultVersionName"),
            unset_default_version=bool(unset),
        )
        return {}

    def list_packages(self, query: Query) -> dict[str, Any]:
        items, token = package_page(self.service.packages.list_packages(), query)
        return omit_none(
            packageSummaries=[self._package_json(p, full=False) for p in items], nextToken=token
        )

    def delete_package(self, name: str) -> dict[str, Any]:
        self.service.packages.delete_package(name)
        return {}

    def create_version(self, body: Body, query: Query, name: str, version: str) -> dict[str, Any]:
        attributes = body.get("attributes")
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ControlError("ValidationException", "attributes must be a map")
        created = self.service.packages.create_version(
            name,
            version,
            description=text_field(body, "description"),
            attributes=attributes,
            artifact=body.get("artifact"),
            recipe=text_field(body, "recipe"),
            client_token=query.get("clientToken"),
        )
        shape = self._version_json(created, full=True)
        return {
            k: shape[k]
            for k in (
                "packageVersionArn",
                "packageName",
                "versionName",
                "description",
                "attributes",
                "status",
            )
            if k in shape
        }

    def get_version(self, name: str, version: str) -> dict[str, Any]:
        return self._version_json(self.service.packages.get_version(name, version), full=True)

    def update_version(self, body: Body, name: str, version: str) -> dict[str, Any]:
        attributes = body.get("attributes")
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ControlError("ValidationException", "attributes must be a map")
        self.service.packages.update_version(
            name,
            version,
            description=text_field(body, "description"),
            attributes=attributes,
            artifact=body.get("artifact"),
            action=text_field(body, "action"),
            recipe=text_field(body, "recipe"),
        )
        return {}

    def list_versions(self, query: Query, name: str) -> dict[str, Any]:
        versions = self.service.packages.list_versions(name, query.get("status"))
        items, token = package_page(versions, query)
        return omit_none(
            packageVersionSummaries=[self._version_json(v, full=False) for v in items],
            nextToken=token,
        )

    def delete_version(self, name: str, version: str) -> dict[str, Any]:
        self.service.packages.delete_version(name, version)
        return {}

    def get_package_configuration(self) -> dict[str, Any]:
        enabled, role = self.service.packages.configuration()
        return {"versionUpdateByJobsConfig": omit_none(enabled=enabled, roleArn=role)}

    def update_package_configuration(self, body: Body) -> dict[str, Any]:
        config = body.get("versionUpdateByJobsConfig") or {}
        if not isinstance(config, Mapping):
            raise ControlError("ValidationException", "versionUpdateByJobsConfig is an object")
        enabled = config.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ControlError("ValidationException", "enabled must be a boolean")
        role = config.get("roleArn")
        if role is not None and not isinstance(role, str):
            raise ControlError("ValidationException", "roleArn must be a string")
        self.service.packages.update_configuration(enabled, role)
        return {}

    # -- streams (MQTT-based file delivery) --------------------------------------------------------
    def _stream_summary(self, stream: Stream) -> dict[str, Any]:
        return omit_none(
            streamId=stream.stream_id,
            streamArn=self.service.streams.arn(stream.stream_id),
            description=stream.description,
            streamVersion=stream.version,
        )

    def create_stream(self, body: Body, stream_id: str) -> dict[str, Any]:
        role = body.get("roleArn")
        stream = self.service.streams.create(
            stream_id,
            parse_files(body.get("files")),
            role if isinstance(role, str) else "",
            text_field(body, "description"),
        )
        return self._stream_summary(stream)

    def describe_stream(self, stream_id: str) -> dict[str, Any]:
        stream = self.service.streams.describe(stream_id)
        return {
            "streamInfo": omit_none(
                streamId=stream.stream_id,
                streamArn=self.service.streams.arn(stream.stream_id),
                streamVersion=stream.version,
                description=stream.description,
                files=[f.to_json() for f in stream.files],
                createdAt=time_value(stream.created_at),
                lastUpdatedAt=time_value(stream.updated_at),
                roleArn=stream.role_arn,
            )
        }

    def list_streams(self, query: Query) -> dict[str, Any]:
        ascending = bool(bool_param(query, "isAscendingOrder"))
        items, token = page(self.service.streams.list_streams(ascending), query)
        return omit_none(streams=[self._stream_summary(s) for s in items], nextToken=token)

    def update_stream(self, body: Body, stream_id: str) -> dict[str, Any]:
        files = body.get("files")
        stream = self.service.streams.update(
            stream_id,
            files=None if files is None else parse_files(files),
            role_arn=text_field(body, "roleArn"),
            description=text_field(body, "description"),
        )
        return self._stream_summary(stream)

    def delete_stream(self, stream_id: str) -> dict[str, Any]:
        self.service.streams.delete(stream_id)
        return {}
