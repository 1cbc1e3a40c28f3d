"""What an operator calls (the `iot` control plane): jobs and the event configuration here;
things and thing groups (`control_things`), documents and job templates (`control_documents`)
and executions (`control_executions`) in the mixins `ControlPlane` is made of.

Requests arrive as typed values (configs.py parsed the JSON at the HTTP edge); what is checked
here depends on the service's state or clock: existence, target resolution, scheduling bounds.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from jobs_agent.emulator import events as ev
from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    TimeoutConfig,
    invalid,
    retry_criterion,
)
from jobs_agent.emulator.control_documents import DocumentsControl
from jobs_agent.emulator.control_executions import ExecutionsControl
from jobs_agent.emulator.control_things import ThingsControl
from jobs_agent.emulator.core import NO_COUNTS, Txn
from jobs_agent.emulator.errors import ControlError, not_found
from jobs_agent.emulator.model import (
    TERMINAL,
    ExecutionStatus,
    Job,
    JobStatus,
    RetryCriterion,
    Source,
)
from jobs_agent.emulator.new_job import NewJob
from jobs_agent.emulator.packages import PACKAGE_PLACEHOLDER
from jobs_agent.emulator.presign import has_placeholders
from jobs_agent.emulator.templates import JobTemplate

MAX_JOB_TARGETS = 100


class ControlPlane(ThingsControl, DocumentsControl, ExecutionsControl):
    """The control plane: jobs here; things, documents and executions in their mixins."""

    def _create_job(self, request: NewJob) -> Job:
        """CreateJob (`JobsService.create_job` is its public form)."""
        request.check()
        with self._lock:
            job, things, groups = self._new_job(request)
            txn = Txn()
            self._jobs[job.job_id] = job
            self._job_counts[job.job_id] = Counter()
            txn.jobs[job.job_id] = job
            for name in things:
                self._ensure_thing(name, txn)
            self._begin_rollout(txn, job, things + self.groups.members(groups))
            if job.scheduling is not None:
                for when in (job.scheduling.start_time, job.scheduling.end_time):
                    if when is not None:
                        self._arm_job_timer(when, job.job_id)
            self._maybe_complete(txn, job.job_id)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    def _new_job(self, request: NewJob) -> tuple[Job, list[str], list[str]]:
        """The job record CreateJob makes (not stored yet), its things and its groups."""
        template = self._template_for(request.job_template_arn)
        parsed, text, before = self._document_from(
            request.document,
            request.document_source,
            template,
            request.document_parameters,
            request.max_document_bytes,
        )
        if isinstance(template, JobTemplate):
            request.take_defaults(template)
        if template is not None and request.description is None:
            request.description = template.description
        destinations = (
            []
            if request.destination_package_versions is None
            else self.packages.resolve(request.destination_package_versions)
        )
        if destinations or PACKAGE_PLACEHOLDER in text:
            substituted = self.packages.substitute(text, destinations)
            if substituted != text:
                before = before or text
                text = substituted
                parsed = json.loads(text)
        placeholders = has_placeholders(text)
        if placeholders:
            request.presign_role()
        now = self.clock.now()
        if request.scheduling is not None:
            request.scheduling.check(now)
        if request.job_id in self._jobs:
            raise ControlError(
                "ResourceAlreadyExistsException", f"Job {request.job_id} already exists"
            )
        arns, things, groups = self._resolve_targets(request.targets)
        job = request.job(arns, groups, parsed, text, before, now, placeholders, destinations)
        return job, things, groups

    def job(self, job_id: str) -> Job:
        """DescribeJob: a snapshot of the job record."""
        with self._lock:
            return copy.copy(self._job(job_id))

    def job_counts(self, job_id: str) -> dict[ExecutionStatus, int]:
        """Current executions per status (`jobProcessDetails`)."""
        with self._lock:
            self._job(job_id)
            return {s: n for s, n in self._job_counts.get(job_id, NO_COUNTS).items() if n > 0}

    def job_process_details(self, job_id: str) -> dict[str, int]:
        """`jobProcessDetails`' numberOf...Things counters."""
        with self._lock:
            self._job(job_id)
            return self._counts_json(job_id)

    def scheduled_rollouts(self, job_id: str, count: int = 7) -> list[float]:
        """The next maintenance window starts (DescribeJob's `scheduledJobRollouts`)."""
        with self._lock:
            scheduling = self._job(job_id).scheduling
            now = self.clock.now()
            if scheduling is None:
                return []
            starts = sorted(
                s for w in scheduling.maintenance_windows for s in w.schedule.upcoming(now, count)
            )
            return starts[:count]

    def job_document(self, job_id: str, before_substitution: bool = False) -> str:
        """GetJobDocument: the document as stored. Presigned URL placeholders are NOT replaced
        ("placeholder URLs aren't replaced by presigned Amazon S3 URLs", Create and manage jobs
        by using the AWS CLI); `beforeSubstitution` shows a managed template's parameters."""
        with self._lock:
            job = self._job(job_id)
            if before_substitution and job.template_text is not None:
                return job.template_text
            return job.document_text

    def list_jobs(
        self,
        status: str | None = None,
        namespace: str | None = None,
        target_selection: str | None = None,
        thing_group: str | None = None,
    ) -> list[Job]:
        with self._lock:
            return [
                copy.copy(j)
                for j in self._jobs.values()
                if (status is None or j.status == status)
                and (namespace is None or j.namespace == namespace)
                and (target_selection is None or j.target_selection == target_selection)
                and (thing_group is None or thing_group in j.group_names)
            ]

    def update_job(
        self,
        job_id: str,
        *,
        namespace: str | None = None,
        description: str | None = None,
        presigned_url_config: PresignedUrlConfig | None = None,
        rollout: RolloutConfig | None = None,
        abort: AbortConfig | None = None,
        timeout: TimeoutConfig | None = None,
        retry_criteria: tuple[RetryCriterion, ...] | None = None,
    ) -> Job:
        """UpdateJob: the fields the guide names (description, presignedUrlConfig, rollout,
        abort, timeout; retry). A new timeout applies to executions not yet started."""
        with self._lock:
            job = self._job(job_id)
            if namespace is not None and job.namespace != namespace:
                raise not_found(f"Job {job_id}")
            txn = Txn()
            if description is not None:
                job.description = description
            if presigned_url_config is not None:
                job.presigned_role_arn = presigned_url_config.role_arn or job.presigned_role_arn
                job.presigned_expires_in_sec = presigned_url_config.expires_in_sec
            if rollout is not None:
                job.rollout = rollout
            if abort is not None:
                job.abort = abort
            if timeout is not None:
                job.in_progress_timeout_minutes = timeout.in_progress_timeout_minutes
            if retry_criteria is not None:
                job.retry_criteria = list(retry_criteria)
            job.last_updated_at = self.clock.now()
            txn.jobs[job_id] = job
            self._maybe_abort(txn, job)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    def associate_targets(
        self,
        job_id: str,
        targets: Iterable[str],
        comment: str | None = None,
        namespace: str | None = None,
    ) -> Job:
        """AssociateTargetsWithJob: a CONTINUOUS, IN_PROGRESS job gains targets (at most 100
        in all); their things get executions through the rollout."""
        with self._lock:
            job = self._job(job_id)
            if namespace is not None and job.namespace != namespace:
                raise not_found(f"Job {job_id}")
            if job.target_selection != "CONTINUOUS" or job.status is not JobStatus.IN_PROGRESS:
                raise invalid("targets can only be associated with an IN_PROGRESS CONTINUOUS job")
            arns, things, groups = self._resolve_targets(targets)
            new = [a for a in arns if a not in job.targets]
            if len(job.targets) + len(new) > MAX_JOB_TARGETS:
                raise ControlError(
                    "LimitExceededException", f"a job has at most {MAX_JOB_TARGETS} targets"
                )
            txn = Txn()
            job.targets.extend(new)
            job.group_names.extend(g for g in groups if g not in job.group_names)
            if comment is not None:
                job.comment = comment
            job.last_updated_at = self.clock.now()
            txn.jobs[job_id] = job
            self._begin_rollout(txn, job, things + self.groups.members(groups))
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    def cancel_job(
        self,
        job_id: str,
        force: bool = False,
        reason_code: str | None = None,
        comment: str | None = None,
    ) -> Job:
        """CancelJob: QUEUED executions become CANCELED; IN_PROGRESS ones only with `force`."""
        with self._lock:
            job = self._job(job_id)
            if job.status is JobStatus.COMPLETED:
                raise invalid(f"Job {job_id} is COMPLETED and cannot be canceled")
            if job.status is JobStatus.CANCELED and not force:
                return copy.copy(job)
            txn = Txn()
            self._cancel(txn, job, force=force, reason_code=reason_code, comment=comment)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

    def delete_job(self, job_id: str, force: bool = False, namespace: str | None = None) -> None:
        """DeleteJob: "By default, you can only delete a job that's in a terminal state
        (SUCCEEDED or CANCELED)"; an IN_PROGRESS (or SCHEDULED) job needs `force`."""
        with self._lock:
            job = self._job(job_id)
            if namespace is not None and job.namespace != namespace:
                raise not_found(f"Job {job_id}")
            if job.status in (JobStatus.IN_PROGRESS, JobStatus.SCHEDULED) and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    f"Job {job_id} is {job.status}; use force to delete it",
                )
            txn = Txn()
            now = self.clock.now()
            job.status = JobStatus.DELETION_IN_PROGRESS
            if self._event_config[ev.JOB]:
                txn.lifecycle.append(ev.job_event(job, "deletion_in_progress", now))
            scheduled = job.scheduling is not None
            for name in job.thing_names:
                for execution in self._executions.pop((job_id, name), []):
                    txn.deleted_executions.add(execution.key)
                    if execution.status in TERMINAL:
                        continue
                    key = (name, job.namespace)
                    self._queue(key).discard(execution, scheduled)
                    txn.notify.add(key)
                    txn.heads.add(key)
                    old = execution.status
                    execution.status = ExecutionStatus.REMOVED
                    execution.version_number += 1
                    execution.last_updated_at = now
                    self._record(txn, execution, old, Source.CONTROL)
                    txn.executions.pop(execution.key, None)
                self._thing_jobs.get(name, {}).pop(job_id, None)
            del self._jobs[job_id]
            self._job_counts.pop(job_id, None)
            txn.deleted_jobs.add(job_id)
            if self._event_config[ev.JOB]:
                txn.lifecycle.append(ev.job_event(job, "deleted", now))
            self._finish(txn)
        self._emit()

    # -- event configuration -------------------------------------------------------------------
    def update_event_configurations(self, enabled: Mapping[str, bool]) -> None:
        """UpdateEventConfigurations for the two kinds the Jobs service publishes."""
        with self._lock:
            for kind, value in enabled.items():
                if kind in self._event_config:
                    self._event_config[kind] = bool(value)

    def event_configurations(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._event_config)


def retry_criteria_from(
    values: Iterable[RetryCriterion | Mapping[str, Any]],
) -> tuple[RetryCriterion, ...]:
    """The library call's retry criteria (criterion objects or their JSON), checked as over
    HTTP: at most two."""
    criteria = tuple(v if isinstance(v, RetryCriterion) else retry_criterion(v) for v in values)
    if len(criteria) > 2:
        raise invalid("at most 2 retry criteria")
    for c in criteria:
        retry_criterion(c.to_json())
    return criteria
