"""The `iot` control plane over HTTP: each operation parses its request once (configs.py for
the job configurations), calls the service and serialises the botocore shape of its answer.

Routes, field names and status codes are botocore's `iot` model (rest-json); control-plane
timestamps are epoch seconds with a fraction (`DateType`). The Software Package Catalog's
operations are here too (packages.py holds their rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    SchedulingConfig,
    TimeoutConfig,
    format_date_time,
    invalid,
    retry_criteria,
)
from jobs_agent.emulator.errors import ControlError
from jobs_agent.emulator.model import Execution, Job, JobStatus
from jobs_agent.emulator.packages import Package, PackageVersion
from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.shapes import omit_none
from jobs_agent.emulator.streams import Stream, parse_files
from jobs_agent.emulator.templates import JobTemplate, ManagedTemplate

Body = Mapping[str, Any]
Query = Mapping[str, str]


def _time(value: float | None) -> float | None:
    """Control-plane timestamps (DateType): epoch seconds, with the fraction botocore parses."""
    return None if value is None else round(value, 3)


def _str(body: Body, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    return value


def _config(body: Body, name: str, parse: Callable[[Any], Any]) -> Any:
    value = body.get(name)
    return None if value is None else parse(value)


def bool_param(query: Query, name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"{name} must be true or false")


def int_param(query: Query, name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid(f"{name} must be an integer") from None


def page(items: list[Any], query: Query) -> tuple[list[Any], str | None]:
    size = int_param(query, "maxResults") or 250
    if not 1 <= size <= 250:
        raise invalid("maxResults must be 1..250")
    token = query.get("nextToken")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise invalid("invalid nextToken") from None
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def _targets(body: Body) -> list[str]:
    targets = body.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise invalid("targets must be a non-empty list of ARNs")
    return targets


def _destinations(body: Body) -> list[str] | None:
    value = body.get("destinationPackageVersions")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid("destinationPackageVersions must be a list of package version ARNs")
    return value


def _package_page(items: list[Any], query: Query) -> tuple[list[Any], str | None]:
    """Software Package Catalog paging: maxResults 1..100 (PackageCatalogMaxResults)."""
    size = int_param(query, "maxResults") or 100
    if not 1 <= size <= 100:
        raise ControlError("ValidationException", "maxResults must be 1..100")
    return page(items, {**query, "maxResults": str(size)})


class ControlApi:
    def __init__(self, service: JobsService) -> None:
        self.service = service

    # -- shapes ---------------------------------------------------------------------------------
    def job_json(self, job: Job) -> dict[str, Any]:
        service = self.service
        details: dict[str, Any] = service.job_process_details(job.job_id)
        if job.pending_targets:
            details["processingTargets"] = [service.thing_arn(t) for t in job.pending_targets]
        rollouts = service.scheduled_rollouts(job.job_id)
        presigned = job.presigned_url_config()
        return omit_none(
            jobArn=service.job_arn(job.job_id),
            jobId=job.job_id,
            targetSelection=job.target_selection,
            status=job.status.value,
            forceCanceled=job.force_canceled if job.status is JobStatus.CANCELED else None,
            reasonCode=job.reason_code,
            comment=job.comment,
            targets=list(job.targets),
            description=job.description,
            presignedUrlConfig=None if presigned is None else presigned.to_json(),
            jobExecutionsRolloutConfig=None if job.rollout is None else job.rollout.to_json(),
            abortConfig=None if job.abort is None else job.abort.to_json(),
            createdAt=_time(job.created_at),
            lastUpdatedAt=_time(job.last_updated_at),
            completedAt=_time(job.completed_at),
            jobProcessDetails=details,
            timeoutConfig=None
            if job.in_progress_timeout_minutes is None
            else {"inProgressTimeoutInMinutes": job.in_progress_timeout_minutes},
            namespaceId=job.namespace,
            jobTemplateArn=job.template_arn,
            jobExecutionsRetryConfig={"criteriaList": [c.to_json() for c in job.retry_criteria]}
            if job.retry_criteria
            else None,
            documentParameters=job.document_parameters,
            isConcurrent=bool(job.pending_targets),
            schedulingConfig=None if job.scheduling is None else job.scheduling.to_json(),
            scheduledJobRollouts=[{"startTime": format_date_time(t)} for t in rollouts] or None,
            destinationPackageVersions=list(job.destination_package_versions) or None,
        )

    def execution_json(self, e: Execution) -> dict[str, Any]:
        return omit_none(
            jobId=e.job_id,
            status=e.status.value,
            forceCanceled=e.force_canceled if e.status.value == "CANCELED" else None,
            statusDetails={"detailsMap": dict(e.status_details)},
            thingArn=self.service.thing_arn(e.thing_name),
            queuedAt=_time(e.queued_at),
            startedAt=_time(e.started_at),
            lastUpdatedAt=_time(e.last_updated_at),
            executionNumber=e.execution_number,
            versionNumber=e.version_number,
            approximateSecondsBeforeTimedOut=self.service.seconds_before_timed_out(e),
        )

    @staticmethod
    def execution_summary(e: Execution) -> dict[str, Any]:
        return omit_none(
            status=e.status.value,
            queuedAt=_time(e.queued_at),
            startedAt=_time(e.started_at),
            lastUpdatedAt=_time(e.last_updated_at),
            executionNumber=e.execution_number,
            retryAttempt=e.retry_attempt,
        )

    def template_json(self, t: JobTemplate) -> dict[str, Any]:
        return omit_none(
            jobTemplateArn=self.service.template_arn(t.template_id),
            jobTemplateId=t.template_id,
            description=t.description,
            documentSource=t.document_source,
            document=t.document_text,
            createdAt=_time(t.created_at),
            presignedUrlConfig=None
            if t.presigned_url_config is None
            else t.presigned_url_config.to_json(),
            jobExecutionsRolloutConfig=None
            if t.rollout_config is None
            else t.rollout_config.to_json(),
            abortConfig=None if t.abort_config is None else t.abort_config.to_json(),
            timeoutConfig=None if t.timeout_config is None else t.timeout_config.to_json(),
            jobExecutionsRetryConfig={"criteriaList": [c.to_json() for c in t.retry_criteria]}
            if t.retry_criteria
            else None,
            maintenanceWindows=[w.to_json() for w in t.maintenance_windows] or None,
            destinationPackageVersions=list(t.destination_package_versions) or None,
        )

    def managed_json(self, t: ManagedTemplate, full: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "templateArn": t.arn(self.service.region),
            "templateName": t.name,
            "description": t.description,
            "environments": list(t.environments),
            "templateVersion": t.version,
        }
        if full:
            out["documentParameters"] = [p.to_json() for p in t.parameters]
            out["document"] = t.document_text
        return out

    # -- things and groups ------------------------------------------------------------------------
    def _thing_json(self, name: str) -> dict[str, Any]:
        return {
            "thingName": name,
            "thingArn": self.service.thing_arn(name),
            "thingId": name,
        }

    @staticmethod
    def _attributes(body: Body) -> tuple[dict[str, str] | None, bool]:
        payload = body.get("attributePayload") or {}
        if not isinstance(payload, Mapping):
            raise invalid("attributePayload must be an object")
        attributes = payload.get("attributes")
        if attributes is not None and not (
            isinstance(attributes, Mapping) and all(isinstance(v, str) for v in attributes.values())
        ):
            raise invalid("attributes must map to strings")
        return (None if attributes is None else dict(attributes)), bool(payload.get("merge"))

    def create_thing(self, body: Body, thing: str) -> dict[str, Any]:
        attributes, _ = self._attributes(body)
        self.service.create_thing(thing, attributes)
        return self._thing_json(thing)

    def describe_thing(self, thing: str) -> dict[str, Any]:
        found = self.service.describe_thing(thing)
        return {
            **self._thing_json(found.name),
            "defaultClientId": found.name,
            "attributes": dict(found.attributes),
            "version": found.version,
        }

    def update_thing(self, body: Body, thing: str) -> dict[str, Any]:
        attributes, merge = self._attributes(body)
        self.service.update_thing(thing, attributes or {}, merge)
        return {}

    def _group_json(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "thingGroupName": name,
            "thingGroupArn": self.service.group_arn(name),
            "thingGroupId": name,
            **extra,
        }

    def create_group(self, body: Body, name: str, dynamic: bool) -> dict[str, Any]:
        properties = body.get("thingGroupProperties") or {}
        description = (
            properties.get("thingGroupDescription") if isinstance(properties, Mapping) else None
        )
        query = _str(body, "queryString") if dynamic else None
        if dynamic and query is None:
            raise invalid("queryString is required")
        self.service.create_thing_group(name, description, query)
        if not dynamic:
            return self._group_json(name)
        return self._group_json(
            name, indexName="AWS_Things", queryString=query, queryVersion="2017-09-30"
        )

    def describe_group(self, name: str) -> dict[str, Any]:
        group = self.service.describe_thing_group(name)
        extra: dict[str, Any] = {
            "version": group.version,
            "thingGroupProperties": omit_none(thingGroupDescription=group.description),
            "thingGroupMetadata": {"creationDate": _time(group.created_at)},
        }
        if group.query is not None:
            extra.update(
                indexName="AWS_Things",
                queryString=group.query.text,
                queryVersion="2017-09-30",
                status="ACTIVE",
            )
        return self._group_json(name, **extra)

    def delete_group(self, name: str) -> dict[str, Any]:
        self.service.delete_thing_group(name)
        return {}

    def _group_and_thing(self, body: Body) -> tuple[str, str]:
        group = (
            _str(body, "thingGroupName") or (_str(body, "thingGroupArn") or "").rsplit("/", 1)[-1]
        )
        thing = _str(body, "thingName") or (_str(body, "thingArn") or "").rsplit("/", 1)[-1]
        if not group or not thing:
            raise invalid("a thing group and a thing are required")
        return group, thing

    def add_to_group(self, body: Body) -> dict[str, Any]:
        self.service.add_thing_to_group(*self._group_and_thing(body))
        return {}

    def remove_from_group(self, body: Body) -> dict[str, Any]:
        self.service.remove_thing_from_group(*self._group_and_thing(body))
        return {}

    def things_in_group(self, query: Query, name: str) -> dict[str, Any]:
        things, token = page(sorted(self.service.describe_thing_group(name).members), query)
        return omit_none(things=things, nextToken=token)

    # -- jobs -----------------------------------------------------------------------------------
    def create_job(self, body: Body, job_id: str) -> dict[str, Any]:
        parameters = body.get("documentParameters")
        if parameters is not None and not (
            isinstance(parameters, Mapping) and all(isinstance(v, str) for v in parameters.values())
        ):
            raise invalid("documentParameters must map names to strings")
        job = self.service.create_job(
            job_id,
            _targets(body),
            _str(body, "document"),
            namespace=_str(body, "namespaceId"),
            description=_str(body, "description"),
            target_selection=_str(body, "targetSelection") or "SNAPSHOT",
            document_source=_str(body, "documentSource"),
            job_template_arn=_str(body, "jobTemplateArn"),
            document_parameters=parameters,
            timeout=_config(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_config=_config(body, "jobExecutionsRetryConfig", retry_criteria),
            presigned_url_config=_config(body, "presignedUrlConfig", PresignedUrlConfig.from_json),
            rollout=_config(body, "jobExecutionsRolloutConfig", RolloutConfig.from_json),
            abort=_config(body, "abortConfig", AbortConfig.from_json),
            scheduling=_config(body, "schedulingConfig", SchedulingConfig.from_json),
            default_presign_role=False,
            destination_package_versions=_destinations(body),
        )
        return omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=job.description
        )

    def update_job(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        self.service.update_job(
            job_id,
            namespace=query.get("namespaceId"),
            description=_str(body, "description"),
            presigned_url_config=_config(body, "presignedUrlConfig", PresignedUrlConfig.from_json),
            rollout=_config(body, "jobExecutionsRolloutConfig", RolloutConfig.from_json),
            abort=_config(body, "abortConfig", AbortConfig.from_json),
            timeout=_config(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_criteria=_config(body, "jobExecutionsRetryConfig", retry_criteria),
        )
        return {}

    def associate_targets(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        job = self.service.associate_targets(
            job_id, _targets(body), _str(body, "comment"), query.get("namespaceId")
        )
        return omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=job.description
        )

    def describe_job(self, query: Query, job_id: str) -> dict[str, Any]:
        job = self.service.job(job_id)
        shape = self.job_json(job)
        if bool_param(query, "beforeSubstitution") and job.destination_package_versions_given:
            shape["destinationPackageVersions"] = list(job.destination_package_versions_given)
        return omit_none(job=shape, documentSource=job.document_source)

    def job_document(self, query: Query, job_id: str) -> dict[str, Any]:
        before = bool(bool_param(query, "beforeSubstitution"))
        return {"document": self.service.job_document(job_id, before)}

    def list_jobs(self, query: Query) -> dict[str, Any]:
        jobs = self.service.list_jobs(
            query.get("status"),
            query.get("namespaceId"),
            query.get("targetSelection"),
            query.get("thingGroupName"),
        )
        items, token = page(jobs, query)
        summaries = [
            omit_none(
                jobArn=self.service.job_arn(j.job_id),
                jobId=j.job_id,
                targetSelection=j.target_selection,
                status=j.status.value,
                createdAt=_time(j.created_at),
                lastUpdatedAt=_time(j.last_updated_at),
                completedAt=_time(j.completed_at),
                isConcurrent=bool(j.pending_targets),
            )
            for j in items
        ]
        return omit_none(jobs=summaries, nextToken=token)

    def cancel_job(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        job = self.service.cancel_job(
            job_id,
            force=bool(bool_param(query, "force")),
            reason_code=_str(body, "reasonCode"),
            comment=_str(body, "comment"),
        )
        return omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=job.description
        )

    def delete_job(self, query: Query, job_id: str) -> None:
        self.service.delete_job(
            job_id, force=bool(bool_param(query, "force")), namespace=query.get("namespaceId")
        )

    # -- executions -----------------------------------------------------------------------------
    def describe_execution(self, query: Query, thing: str, job_id: str) -> dict[str, Any]:
        execution = self.service.execution(job_id, thing, int_param(query, "executionNumber"))
        return {"execution": self.execution_json(execution)}

    def executions_for_thing(self, query: Query, thing: str) -> dict[str, Any]:
        executions = self.service.executions_for_thing(
            thing, query.get("status"), query.get("namespaceId"), query.get("jobId")
        )
        items, token = page(executions, query)
        return omit_none(
            executionSummaries=[
                {"jobId": e.job_id, "jobExecutionSummary": self.execution_summary(e)} for e in items
            ],
            nextToken=token,
        )

    def executions_for_job(self, query: Query, job_id: str) -> dict[str, Any]:
        executions = self.service.executions_for_job(job_id, query.get("status"))
        items, token = page(executions, query)
        return omit_none(
            executionSummaries=[
                {
                    "thingArn": self.service.thing_arn(e.thing_name),
                    "jobExecutionSummary": self.execution_summary(e),
                }
                for e in items
            ],
            nextToken=token,
        )

    def cancel_execution(self, body: Body, query: Query, thing: str, job_id: str) -> None:
        expected = body.get("expectedVersion")
        details = body.get("statusDetails")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise invalid("expectedVersion must be a number")
        if details is not None and not isinstance(details, dict):
            raise invalid("statusDetails must be a map")
        self.service.cancel_execution(
            job_id,
            thing,
            force=bool(bool_param(query, "force")),
            expected_version=expected,
            status_details=details,
        )

    def delete_execution(self, query: Query, thing: str, job_id: str, number: str) -> None:
        try:
            execution_number = int(number)
        except ValueError:
            raise invalid("executionNumber must be a number") from None
        self.service.delete_execution(
            job_id,
            thing,
            execution_number,
            force=bool(bool_param(query, "force")),
            namespace=query.get("namespaceId"),
        )

    # -- templates ------------------------------------------------------------------------------
    def create_template(self, body: Body, template_id: str) -> dict[str, Any]:
        description = _str(body, "description")
        if description is None:
            raise invalid("description is required")
        windows = body.get("maintenanceWindows")
        template = JobTemplate(
            template_id=template_id,
            description=description,
            document_text=_str(body, "document"),
            document_source=_str(body, "documentSource"),
            created_at=0.0,
            presigned_url_config=_config(body, "presignedUrlConfig", PresignedUrlConfig.from_json),
            rollout_config=_config(body, "jobExecutionsRolloutConfig", RolloutConfig.from_json),
            abort_config=_config(body, "abortConfig", AbortConfig.from_json),
            timeout_config=_config(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_criteria=_config(body, "jobExecutionsRetryConfig", retry_criteria) or (),
            maintenance_windows=()
            if windows is None
            else SchedulingConfig.from_json({"maintenanceWindows": windows}).maintenance_windows,
            destination_package_versions=tuple(_destinations(body) or ()),
        )
        created = self.service.create_job_template(template, _str(body, "jobArn"))
        return {
            "jobTemplateArn": self.service.template_arn(created.template_id),
            "jobTemplateId": created.template_id,
        }

    def describe_template(self, template_id: str) -> dict[str, Any]:
        return self.template_json(self.service.job_template(template_id))

    def list_templates(self, query: Query) -> dict[str, Any]:
        items, token = page(self.service.list_job_templates(), query)
        return omit_none(
            jobTemplates=[
                omit_none(
                    jobTemplateArn=self.service.template_arn(t.template_id),
                    jobTemplateId=t.template_id,
                    description=t.description,
                    createdAt=_time(t.created_at),
                )
                for t in items
            ],
            nextToken=token,
        )

    def delete_template(self, template_id: str) -> None:
        self.service.delete_job_template(template_id)

    def list_managed(self, query: Query) -> dict[str, Any]:
        items, token = page(self.service.managed_templates(query.get("templateName")), query)
        return omit_none(
            managedJobTemplates=[self.managed_json(t, full=False) for t in items], nextToken=token
        )

    def describe_managed(self, query: Query, name: str) -> dict[str, Any]:
        template = self.service.managed_template(name, query.get("templateVersion"))
        return self.managed_json(template, full=True)

    # -- events ---------------------------------------------------------------------------------
    def update_event_configurations(self, body: Body) -> dict[str, Any]:
        configurations = body.get("eventConfigurations") or {}
        if not isinstance(configurations, Mapping):
            raise invalid("eventConfigurations must be an object")
        enabled = {}
        for kind, value in configurations.items():
            if not isinstance(value, Mapping) or not isinstance(value.get("Enabled"), bool):
                raise invalid(f'eventConfigurations.{kind} must be {{"Enabled": true|false}}')
            enabled[kind] = value["Enabled"]
        self.service.update_event_configurations(enabled)
        return {}

    def describe_event_configurations(self) -> dict[str, Any]:
        return {
            "eventConfigurations": {
                kind: {"Enabled": value}
                for kind, value in self.service.event_configurations().items()
            }
        }

    # -- software package catalog ----------------------------------------------------------------
    def _package_json(self, p: Package, full: bool) -> dict[str, Any]:
        out = omit_none(
            packageName=p.name,
            packageArn=self.service.packages.package_arn(p.name) if full else None,
            description=p.description if full else None,
            defaultVersionName=p.default_version,
            creationDate=_time(p.created_at),
            lastModifiedDate=_time(p.modified_at),
        )
        return out

    def _version_json(self, v: PackageVersion, full: bool) -> dict[str, Any]:
        packages = self.service.packages
        if not full:
            return omit_none(
                packageName=v.package,
                versionName=v.version,
                status=v.status.value,
                creationDate=_time(v.created_at),
                lastModifiedDate=_time(v.modified_at),
            )
        return omit_none(
            packageVersionArn=packages.version_arn(v.package, v.version),
            packageName=v.package,
            versionName=v.version,
            description=v.description,
            attributes=dict(v.attributes),
            artifact=v.artifact,
            status=v.status.value,
            creationDate=_time(v.created_at),
            lastModifiedDate=_time(v.modified_at),
            recipe=v.recipe,
        )

    def create_package(self, body: Body, query: Query, name: str) -> dict[str, Any]:
        package = self.service.packages.create_package(
            name, _str(body, "description"), query.get("clientToken")
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
            description=_str(body, "description"),
            default_version=_str(body, "defaultVersionName"),
            unset_default_version=bool(unset),
        )
        return {}

    def list_packages(self, query: Query) -> dict[str, Any]:
        items, token = _package_page(self.service.packages.list_packages(), query)
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
            description=_str(body, "description"),
            attributes=attributes,
            artifact=body.get("artifact"),
            recipe=_str(body, "recipe"),
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
            description=_str(body, "description"),
            attributes=attributes,
            artifact=body.get("artifact"),
            action=_str(body, "action"),
            recipe=_str(body, "recipe"),
        )
        return {}

    def list_versions(self, query: Query, name: str) -> dict[str, Any]:
        versions = self.service.packages.list_versions(name, query.get("status"))
        items, token = _package_page(versions, query)
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
            _str(body, "description"),
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
                createdAt=_time(stream.created_at),
                lastUpdatedAt=_time(stream.updated_at),
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
            role_arn=_str(body, "roleArn"),
            description=_str(body, "description"),
        )
        return self._stream_summary(stream)

    def delete_stream(self, stream_id: str) -> dict[str, Any]:
        self.service.streams.delete(stream_id)
        return {}
