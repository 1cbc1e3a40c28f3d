"""The `iot` control plane over HTTP: each operation parses its request once (configs.py for
the job configurations), calls the service and serialises the botocore shape of its answer.

Routes, field names and status codes are botocore's `iot` model (rest-json); control-plane
timestamps are epoch seconds with a fraction (`DateType`). Job templates
(`control_api_templates`), the Software Package Catalog and streams (`control_api_catalog`) are
mixins of `ControlApi`; `api_params` reads the requests' fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.emulator.api_params import (
    Body,
    Query,
    bool_param,
    config_field,
    destinations_field,
    int_param,
    page,
    targets_field,
    text_field,
    time_value,
)
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
from jobs_agent.emulator.control_api_catalog import CatalogApi
from jobs_agent.emulator.control_api_templates import TemplatesApi
from jobs_agent.emulator.model import Execution, Job, JobStatus
from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.shapes import omit_none


class ControlApi(TemplatesApi, CatalogApi):
    """Things, groups, jobs, executions and events here; job templates in `TemplatesApi`, the
    Software Package Catalog and streams in `CatalogApi`."""

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
            createdAt=time_value(job.created_at),
            lastUpdatedAt=time_value(job.last_updated_at),
            completedAt=time_value(job.completed_at),
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
            queuedAt=time_value(e.queued_at),
            startedAt=time_value(e.started_at),
            lastUpdatedAt=time_value(e.last_updated_at),
            executionNumber=e.execution_number,
            versionNumber=e.version_number,
            approximateSecondsBeforeTimedOut=self.service.seconds_before_timed_out(e),
        )

    @staticmethod
    def execution_summary(e: Execution) -> dict[str, Any]:
        return omit_none(
            status=e.status.value,
            queuedAt=time_value(e.queued_at),
            startedAt=time_value(e.started_at),
            lastUpdatedAt=time_value(e.last_updated_at),
            executionNumber=e.execution_number,
            retryAttempt=e.retry_attempt,
        )

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
        query = text_field(body, "queryString") if dynamic else None
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
            "thingGroupMetadata": {"creationDate": time_value(group.created_at)},
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
            text_field(body, "thingGroupName")
            or (text_field(body, "thingGroupArn") or "").rsplit("/", 1)[-1]
        )
        thing = (
            text_field(body, "thingName") or (text_field(body, "thingArn") or "").rsplit("/", 1)[-1]
        )
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
            targets_field(body),
            text_field(body, "document"),
            namespace=text_field(body, "namespaceId"),
            description=text_field(body, "description"),
            target_selection=text_field(body, "targetSelection") or "SNAPSHOT",
            document_source=text_field(body, "documentSource"),
            job_template_arn=text_field(body, "jobTemplateArn"),
            document_parameters=parameters,
            timeout=config_field(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_config=config_field(body, "jobExecutionsRetryConfig", retry_criteria),
            presigned_url_config=config_field(
                body, "presignedUrlConfig", PresignedUrlConfig.from_json
            ),
            rollout=config_field(body, "jobExecutionsRolloutConfig", RolloutConfig.from_json),
            abort=config_field(body, "abortConfig", AbortConfig.from_json),
            scheduling=config_field(body, "schedulingConfig", SchedulingConfig.from_json),
            default_presign_role=False,
            destination_package_versions=destinations_field(body),
        )
        return omit_none(
            jobArn=self.service.job_arn(job.job_id), jobId=job.job_id, description=job.description
        )

    def update_job(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        self.service.update_job(
            job_id,
            namespace=query.get("namespaceId"),
            description=text_field(body, "description"),
            presigned_url_config=config_field(
                body, "presignedUrlConfig", PresignedUrlConfig.from_json
            ),
            rollout=config_field(body, "jobExecutionsRolloutConfig", RolloutConfig.from_json),
            abort=config_field(body, "abortConfig", AbortConfig.from_json),
            timeout=config_field(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_criteria=config_field(body, "jobExecutionsRetryConfig", retry_criteria),
        )
        return {}

    def associate_targets(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        job = self.service.associate_targets(
            job_id, targets_field(body), text_field(body, "comment"), query.get("namespaceId")
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
                createdAt=time_value(j.created_at),
                lastUpdatedAt=time_value(j.last_updated_at),
                completedAt=time_value(j.completed_at),
                isConcurrent=bool(j.pending_targets),
            )
            for j in items
        ]
        return omit_none(jobs=summaries, nextToken=token)

    def cancel_job(self, body: Body, query: Query, job_id: str) -> dict[str, Any]:
        job = self.service.cancel_job(
            job_id,
            force=bool(bool_param(query, "force")),
            reason_code=text_field(body, "reasonCode"),
            comment=text_field(body, "comment"),
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
