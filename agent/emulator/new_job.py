"""A CreateJob request on its way to a job record: the rules it can check on its own, the defaults
a job template gives it, and the record it becomes (the control plane supplies what depends on
the service's state: the document, the targets, the clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    SchedulingConfig,
    TimeoutConfig,
    invalid,
)
from jobs_agent.emulator.model import Job, JobStatus, RetryCriterion
from jobs_agent.emulator.templates import JobTemplate
from jobs_agent.vocabulary import is_job_id, is_namespace

EMULATOR_PRESIGN_ROLE = "arn:aws:iam::123456789012:role/jobs-emulator-presign"
"""The role `create_job` (the library call) assumes when a document has presigned URL
placeholders and no presignedUrlConfig was given; CreateJob over HTTP refuses instead."""
TARGET_SELECTIONS = ("SNAPSHOT", "CONTINUOUS")


@dataclass
class NewJob:
    job_id: str
    targets: list[str]
    document: dict[str, Any] | str | None
    max_document_bytes: int
    namespace: str | None = None
    description: str | None = None
    target_selection: str = "SNAPSHOT"
    document_source: str | None = None
    job_template_arn: str | None = None
    document_parameters: Mapping[str, str] | None = None
    timeout: TimeoutConfig | None = None
    retry_criteria: tuple[RetryCriterion, ...] | None = None
    presigned_url_config: PresignedUrlConfig | None = None
    rollout: RolloutConfig | None = None
    abort: AbortConfig | None = None
    scheduling: SchedulingConfig | None = None
    default_presign_role: bool = True
    destination_package_versions: list[str] | None = None

    def check(self) -> None:
        """What CreateJob refuses before it looks at anything else."""
        if not is_job_id(self.job_id):
            raise invalid(f"invalid jobId {self.job_id!r}")
        if self.namespace is not None and not is_namespace(self.namespace):
            raise invalid(f"invalid namespaceId {self.namespace!r}")
        if self.target_selection not in TARGET_SELECTIONS:
            raise invalid(f"invalid targetSelection {self.target_selection!r}")
        if not self.targets:
            raise invalid("targets must not be empty")

    def take_defaults(self, template: JobTemplate) -> None:
        """What the request leaves out, a job template gives."""
        self.timeout = self.timeout or template.timeout_config
        self.retry_criteria = self.retry_criteria or template.retry_criteria or None
        self.presigned_url_config = self.presigned_url_config or template.presigned_url_config
        self.rollout = self.rollout or template.rollout_config
        self.abort = self.abort or template.abort_config
        if template.maintenance_windows and self.scheduling is None:
            self.scheduling = SchedulingConfig(maintenance_windows=template.maintenance_windows)
        if self.destination_package_versions is None and template.destination_package_versions:
            self.destination_package_versions = list(template.destination_package_versions)

    def presign_role(self) -> None:
        """The document has presigned URL placeholders: a role must sign them."""
        config = self.presigned_url_config
        if config is not None and config.role_arn:
            return
        if not self.default_presign_role:
            raise invalid(
                "the document has presigned URL placeholders: presignedUrlConfig.roleArn "
                "is required"
            )
        expires = config.expires_in_sec if config else 3600
        self.presigned_url_config = PresignedUrlConfig(EMULATOR_PRESIGN_ROLE, expires)

    def job(
        self,
        arns: list[str],
        groups: list[str],
        parsed: dict[str, Any],
        text: str,
        before: str | None,
        now: float,
        placeholders: bool,
        destinations: Sequence[Any],
    ) -> Job:
        """The job record (targets resolved, the document as it will be delivered)."""
        scheduled = self.scheduling is not None and self.scheduling.start_time is not None
        presigned = self.presigned_url_config
        resolved = [d.arn for d in destinations]
        given = self.destination_package_versions
        return Job(
            job_id=self.job_id,
            targets=arns,
            thing_names=[],
            document=parsed,
            document_text=text,
            namespace=self.namespace,
            description=self.description,
            in_progress_timeout_minutes=None
            if self.timeout is None
            else self.timeout.in_progress_timeout_minutes,
            retry_criteria=list(self.retry_criteria or ()),
            presigned_expires_in_sec=3600 if presigned is None else presigned.expires_in_sec,
            created_at=now,
            last_updated_at=now,
            status=JobStatus.SCHEDULED if scheduled else JobStatus.IN_PROGRESS,
            has_presigned_urls=placeholders,
            target_selection=self.target_selection,
            group_names=groups,
            presigned_role_arn=None if presigned is None else presigned.role_arn,
            document_source=self.document_source,
            template_arn=self.job_template_arn,
            document_parameters=None
            if self.document_parameters is None
            else dict(self.document_parameters),
            template_text=before,
            rollout=self.rollout,
            abort=self.abort,
            scheduling=self.scheduling,
            destination_package_versions=resolved,
            destination_package_versions_given=None
            if given is None or given == resolved
            else list(given),
        )
