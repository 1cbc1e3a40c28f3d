"""The control plane's job templates over HTTP: a customer's own (Create, Describe, List,
Delete) and the AWS managed ones (List, Describe).
"""

from __future__ import annotations

from typing import Any

from jobs_agent.emulator.api_params import (
    Body,
    Query,
    config_field,
    destinations_field,
    page,
    text_field,
    time_value,
)
from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    SchedulingConfig,
    TimeoutConfig,
    invalid,
    retry_criteria,
)
from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.shapes import omit_none
from jobs_agent.emulator.templates import JobTemplate, ManagedTemplate


class TemplatesApi:
    service: JobsService

    def template_json(self, t: JobTemplate) -> dict[str, Any]:
        return omit_none(
            jobTemplateArn=self.service.template_arn(t.template_id),
            jobTemplateId=t.template_id,
            description=t.description,
            documentSource=t.document_source,
            document=t.document_text,
            createdAt=time_value(t.created_at),
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

    def create_template(self, body: Body, template_id: str) -> dict[str, Any]:
        description = text_field(body, "description")
        if description is None:
            raise invalid("description is required")
        windows = body.get("maintenanceWindows")
        template = JobTemplate(
            template_id=template_id,
            description=description,
            document_text=text_field(body, "document"),
            document_source=text_field(body, "documentSource"),
            created_at=0.0,
            presigned_url_config=config_field(
                body, "presignedUrlConfig", PresignedUrlConfig.from_json
            ),
            rollout_config=config_field(
                body, "jobExecutionsRolloutConfig", RolloutConfig.from_json
            ),
            abort_config=config_field(body, "abortConfig", AbortConfig.from_json),
            timeout_config=config_field(body, "timeoutConfig", TimeoutConfig.from_json),
            retry_criteria=config_field(body, "jobExecutionsRetryConfig", retry_criteria) or (),
            maintenance_windows=()
            if windows is None
            else SchedulingConfig.from_json({"maintenanceWindows": windows}).maintenance_windows,
            destination_package_versions=tuple(destinations_field(body) or ()),
        )
        created = self.service.create_job_template(template, text_field(body, "jobArn"))
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
                    createdAt=time_value(t.created_at),
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
