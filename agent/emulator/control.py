"""What an operator calls (the `iot` control plane): things and thing groups, jobs, executions,
job templates, the event configuration.

Requests arrive as typed values (configs.py parsed the JSON at the HTTP edge); what is checked
here depends on the service's state or clock: existence, target resolution, scheduling bounds.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs_agent.emulator import events as ev
from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    SchedulingConfig,
    TimeoutConfig,
    invalid,
    retry_criterion,
)
from jobs_agent.emulator.core import NO_COUNTS, ServiceCore, Txn, snapshot
from jobs_agent.emulator.data_plane import check_status_details
from jobs_agent.emulator.errors import ControlError
from jobs_agent.emulator.groups import Query, ThingGroup
from jobs_agent.emulator.model import (
    TERMINAL,
    Execution,
    ExecutionStatus,
    Job,
    JobStatus,
    RetryCriterion,
    Source,
    Thing,
)
from jobs_agent.emulator.packages import PACKAGE_PLACEHOLDER
from jobs_agent.emulator.presign import has_placeholders
from jobs_agent.emulator.templates import (
    MANAGED_TEMPLATES,
    JobTemplate,
    ManagedTemplate,
    managed_template,
    parse_template_arn,
    render,
)
from jobs_agent.vocabulary import is_job_id, is_namespace, is_thing_name

_THING_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):thing/([a-zA-Z0-9:_-]{1,128})")
_GROUP_ARN = re.compile(r"arn:aws[a-z-]*:iot:([a-z0-9-]*):(\d*):thinggroup/([a-zA-Z0-9:_-]{1,128})")
_S3_URL = (
    re.compile(
        r"https://(?P<bucket>[a-z0-9.-]+)\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com/(?P<key>.+)"
    ),
    re.compile(
        r"https://s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com/(?P<bucket>[a-z0-9.-]+)/(?P<key>.+)"
    ),
    re.compile(r"s3://(?P<bucket>[a-z0-9.-]+)/(?P<key>.+)"),
)
MAX_JOB_TARGETS = 100
EMULATOR_PRESIGN_ROLE = "arn:aws:iam::123456789012:role/jobs-emulator-presign"
"""The role `create_job` (the library call) assumes when a document has presigned URL
placeholders and no presignedUrlConfig was given; CreateJob over HTTP refuses instead."""


def not_found(what: str) -> ControlError:
    return ControlError("ResourceNotFoundException", f"{what} not found")


class ControlPlane(ServiceCore):
    @property
    def s3_root(self) -> Path | None:
        """Where S3 objects are read from besides `put_s3_object` (`BUCKET/KEY` below it):
        `jobs-agent sim serve --s3-dir`."""
        return self.s3.root

    @s3_root.setter
    def s3_root(self, value: Path | None) -> None:
        self.s3.root = value

    # -- things and groups -------------------------------------------------------------------
    def create_thing(self, thing_name: str, attributes: dict[str, str] | None = None) -> Thing:
        if not is_thing_name(thing_name):
            raise invalid(f"invalid thing name {thing_name!r}")
        with self._lock:
            txn = Txn()
            existing = self._things.get(thing_name)
            if existing is not None:
                if attributes and attributes != existing.attributes:
                    raise ControlError(
                        "ResourceAlreadyExistsException",
                        f"Thing {thing_name} already exists with different attributes",
                    )
                return copy.copy(existing)
            thing = self._ensure_thing(thing_name, txn)
            if attributes:
                thing.attributes = dict(attributes)
            self._membership(
                txn, thing_name, *self.groups.thing_changed(thing_name, thing.attributes)
            )
            self._finish(txn)
            result = copy.copy(thing)
        self._emit()
        return result

    def describe_thing(self, thing_name: str) -> Thing:
        with self._lock:
            thing = self._things.get(thing_name)
            if thing is None:
                raise not_found(f"Thing {thing_name}")
            return copy.copy(thing)

    def update_thing(
        self, thing_name: str, attributes: Mapping[str, str], merge: bool = False
    ) -> Thing:
        """UpdateThing's attributePayload: replace the attributes (or merge them; an empty value
        removes one when merging). Dynamic groups follow."""
        with self._lock:
            thing = self._things.get(thing_name)
            if thing is None:
                raise not_found(f"Thing {thing_name}")
            txn = Txn()
            if merge:
                merged = {**thing.attributes, **attributes}
                thing.attributes = {k: v for k, v in merged.items() if v != ""}
            else:
                thing.attributes = dict(attributes)
            thing.version += 1
            txn.things[thing_name] = thing
            self._membership(
                txn, thing_name, *self.groups.thing_changed(thing_name, thing.attributes)
            )
            self._finish(txn)
            result = copy.copy(thing)
        self._emit()
        return result

    def create_thing_group(
        self, name: str, description: str | None = None, query: str | None = None
    ) -> ThingGroup:
        """CreateThingGroup, or CreateDynamicThingGroup with a fleet-indexing `query`."""
        if not is_thing_name(name):
            raise invalid(f"invalid thing group name {name!r}")
        parsed = None if query is None else Query.parse(query)
        with self._lock:
            txn = Txn()
            group = ThingGroup(name, self.clock.now(), description, parsed)
            self.groups.create(group, {t.name: t.attributes for t in self._things.values()})
            for thing in sorted(group.members):
                self._membership(txn, thing, [name], [])
            self._save_group(txn, group)
            self._finish(txn)
            result = copy.copy(group)
        self._emit()
        return result

    def _save_group(self, txn: Txn, group: ThingGroup) -> None:
        txn.records[("group", group.name)] = {
            "name": group.name,
            "created_at": group.created_at,
            "description": group.description,
            "query": None if group.query is None else group.query.text,
            "members": sorted(group.members),
            "version": group.version,
        }

    def describe_thing_group(self, name: str) -> ThingGroup:
        with self._lock:
            group = copy.copy(self.groups.get(name))
            group.members = set(group.members)
            return group

    def delete_thing_group(self, name: str) -> None:
        with self._lock:
            txn = Txn()
            for thing in sorted(self.groups.delete(name)):
                self._membership(txn, thing, [], [name])
            txn.records[("group", name)] = None
            self._finish(txn)
        self._emit()

    def add_thing_to_group(self, group_name: str, thing_name: str) -> None:
        with self._lock:
            txn = Txn()
            if thing_name not in self._things:
                raise not_found(f"Thing {thing_name}")
            if self.groups.add(group_name, thing_name):
                self._membership(txn, thing_name, [group_name], [])
            self._save_group(txn, self.groups.get(group_name))
            self._finish(txn)
        self._emit()

    def remove_thing_from_group(self, group_name: str, thing_name: str) -> None:
        with self._lock:
            txn = Txn()
            if self.groups.remove(group_name, thing_name):
                self._membership(txn, thing_name, [], [group_name])
            self._save_group(txn, self.groups.get(group_name))
            self._finish(txn)
        self._emit()

    def _membership(self, txn: Txn, thing: str, joined: Iterable[str], left: Iterable[str]) -> None:
        """A thing joined or left groups: CONTINUOUS jobs targeting them roll out to it, or
        mark its pending execution REMOVED once it is no longer a target at all."""
        joined, left = set(joined), set(left)
        if not joined and not left:
            return
        for job in self._jobs.values():
            if job.target_selection != "CONTINUOUS" or job.status not in (
                JobStatus.IN_PROGRESS,
                JobStatus.SCHEDULED,
            ):
                continue
            groups = set(job.group_names)
            if joined & groups:
                self._begin_rollout(txn, job, [thing])
            elif left & groups and not self._is_target(job, thing):
                if thing in job.pending_targets:
                    job.pending_targets.remove(thing)
                execution = self._current(job.job_id, thing)
                if execution is not None and execution.status not in TERMINAL:
                    self._set_status(txn, execution, ExecutionStatus.REMOVED, Source.CONTROL)

    def _is_target(self, job: Job, thing: str) -> bool:
        if self.thing_arn(thing) in job.targets:
            return True
        return bool(self.groups.groups_of(thing) & set(job.group_names))

    # -- jobs -----------------------------------------------------------------------------------
    def _resolve_targets(self, targets: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """(target ARNs as AWS reports them, thing names, group names)."""
        arns: list[str] = []
        things: list[str] = []
        groups: list[str] = []
        for target in targets:
            if not isinstance(target, str):
                raise invalid("targets must be thing or thing group ARNs")
            group = _GROUP_ARN.fullmatch(target)
            if group is not None:
                self.groups.get(group.group(3))
                groups.append(group.group(3))
                arns.append(self.group_arn(group.group(3)))
                continue
            if is_thing_name(target) and not target.startswith("arn:"):
                name = target
            else:
                match = _THING_ARN.fullmatch(target)
                if match is None:
                    raise invalid(f"target {target!r} is not a thing or thing group ARN")
                name = match.group(3)
            things.append(name)
            arns.append(self.thing_arn(name))
        return arns, things, groups

    def s3_object(self, url: str) -> bytes:
        for pattern in _S3_URL:
            match = pattern.fullmatch(url)
            if match is None:
                continue
            bucket, key = match.group("bucket"), match.group("key")
            data = self.s3.get(bucket, key)
            if data is None:
                raise invalid(f"documentSource {url}: no such S3 object (bucket {bucket})")
            return data
        raise invalid(f"documentSource {url!r} is not an S3 object URL")

    def put_s3_object(self, bucket: str, key: str, data: bytes) -> str:
        """Store an object CreateJob's `documentSource` (or a stream) can name; its URL."""
        self.s3.put(bucket, key, data)
        return f"https://{bucket}.s3.amazonaws.com/{key}"

    def _document_from(
        self,
        document: dict[str, Any] | str | None,
        document_source: str | None,
        template: ManagedTemplate | JobTemplate | None,
        parameters: Mapping[str, str] | None,
        max_bytes: int,
    ) -> tuple[dict[str, Any], str, str | None]:
        """(parsed, text, text before substitution) of a new job's document."""
        given = [x for x in (document, document_source) if x is not None]
        if template is not None and given:
            raise invalid("a job from a template takes neither document nor documentSource")
        if template is None and len(given) != 1:
            raise invalid("exactly one of document, documentSource and jobTemplateArn is required")
        if parameters is not None and not isinstance(template, ManagedTemplate):
            raise invalid("documentParameters can only be used with AWS managed templates")
        before: str | None = None
        if isinstance(template, ManagedTemplate):
            before = template.document_text
            text = render(
                template, parameters or {}, self.readings.template_optional_parameters_empty
            )
        elif isinstance(template, JobTemplate):
            if template.document_text is not None:
                text = template.document_text
            else:
                assert template.document_source is not None
                text = self.s3_object(template.document_source).decode("utf-8", "replace")
        elif document_source is not None:
            text = self.s3_object(document_source).decode("utf-8", "replace")
        elif isinstance(document, str):
            text = document
        else:
            text = json.dumps(document, separators=(",", ":"))
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise invalid(f"document is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise invalid("document must be a JSON object")
        if len(text.encode("utf-8")) > max_bytes:
            raise invalid(f"document is larger than {max_bytes} bytes")
        return parsed, text, before

    def _template_for(self, arn: str | None) -> ManagedTemplate | JobTemplate | None:
        if arn is None:
            return None
        kind, name, version = parse_template_arn(arn)
        if kind == "managed":
            found = managed_template(name, version)
            if found is None:
                raise not_found(f"Managed job template {name}{':' + version if version else ''}")
            return found
        template = self._templates.get(name)
        if template is None:
            raise not_found(f"Job template {name}")
        return template

    def _create_job(
        self,
        job_id: str,
        targets: Iterable[str],
        document: dict[str, Any] | str | None,
        *,
        max_document_bytes: int,
        namespace: str | None = None,
        description: str | None = None,
        target_selection: str = "SNAPSHOT",
        document_source: str | None = None,
        job_template_arn: str | None = None,
        document_parameters: Mapping[str, str] | None = None,
        timeout: TimeoutConfig | None = None,
        retry_criteria: tuple[RetryCriterion, ...] | None = None,
        presigned_url_config: PresignedUrlConfig | None = None,
        rollout: RolloutConfig | None = None,
        abort: AbortConfig | None = None,
        scheduling: SchedulingConfig | None = None,
        default_presign_role: bool = True,
        destination_package_versions: Sequence[str] | None = None,
    ) -> Job:
        if not is_job_id(job_id):
            raise invalid(f"invalid jobId {job_id!r}")
        if namespace is not None and not is_namespace(namespace):
            raise invalid(f"invalid namespaceId {namespace!r}")
        if target_selection not in ("SNAPSHOT", "CONTINUOUS"):
            raise invalid(f"invalid targetSelection {target_selection!r}")
        target_list = list(targets)
        if not target_list:
            raise invalid("targets must not be empty")
        with self._lock:
            template = self._template_for(job_template_arn)
            parsed, text, before = self._document_from(
                document, document_source, template, document_parameters, max_document_bytes
            )
            if isinstance(template, JobTemplate):
                timeout = timeout or template.timeout_config
                retry_criteria = retry_criteria or template.retry_criteria or None
                presigned_url_config = presigned_url_config or template.presigned_url_config
                rollout = rollout or template.rollout_config
                abort = abort or template.abort_config
                if template.maintenance_windows and scheduling is None:
                    scheduling = SchedulingConfig(maintenance_windows=template.maintenance_windows)
                if destination_package_versions is None and template.destination_package_versions:
                    destination_package_versions = list(template.destination_package_versions)
            if template is not None and description is None:
                description = template.description
            destinations = (
                []
                if destination_package_versions is None
                else self.packages.resolve(destination_package_versions)
            )
            if destinations or PACKAGE_PLACEHOLDER in text:
                substituted = self.packages.substitute(text, destinations)
                if substituted != text:
                    before = before or text
                    text = substituted
                    parsed = json.loads(text)
            placeholders = has_placeholders(text)
            if placeholders and (presigned_url_config is None or not presigned_url_config.role_arn):
                if not default_presign_role:
                    raise invalid(
                        "the document has presigned URL placeholders: presignedUrlConfig.roleArn "
                        "is required"
                    )
                expires = presigned_url_config.expires_in_sec if presigned_url_config else 3600
                presigned_url_config = PresignedUrlConfig(EMULATOR_PRESIGN_ROLE, expires)
            now = self.clock.now()
            if scheduling is not None:
                scheduling.check(now)
            if job_id in self._jobs:
                raise ControlError("ResourceAlreadyExistsException", f"Job {job_id} already exists")
            arns, things, groups = self._resolve_targets(target_list)
            txn = Txn()
            scheduled = scheduling is not None and scheduling.start_time is not None
            job = Job(
                job_id=job_id,
                targets=arns,
                thing_names=[],
                document=parsed,
                document_text=text,
                namespace=namespace,
                description=description,
                in_progress_timeout_minutes=None
                if timeout is None
                else timeout.in_progress_timeout_minutes,
                retry_criteria=list(retry_criteria or ()),
                presigned_expires_in_sec=3600
                if presigned_url_config is None
                else presigned_url_config.expires_in_sec,
                created_at=now,
                last_updated_at=now,
                status=JobStatus.SCHEDULED if scheduled else JobStatus.IN_PROGRESS,
                has_presigned_urls=placeholders,
                target_selection=target_selection,
                group_names=groups,
                presigned_role_arn=None
                if presigned_url_config is None
                else presigned_url_config.role_arn,
                document_source=document_source,
                template_arn=job_template_arn,
                document_parameters=None
                if document_parameters is None
                else dict(document_parameters),
                template_text=before,
                rollout=rollout,
                abort=abort,
                scheduling=scheduling,
                destination_package_versions=[d.arn for d in destinations],
                destination_package_versions_given=None
                if destination_package_versions is None
                or list(destination_package_versions) == [d.arn for d in destinations]
                else list(destination_package_versions),
            )
            self._jobs[job_id] = job
            self._job_counts[job_id] = Counter()
            txn.jobs[job_id] = job
            for name in things:
                self._ensure_thing(name, txn)
            self._begin_rollout(txn, job, things + self.groups.members(groups))
            if scheduling is not None:
                for when in (scheduling.start_time, scheduling.end_time):
                    if when is not None:
                        self._arm_job_timer(when, job_id)
            self._maybe_complete(txn, job_id)
            self._finish(txn)
            result = copy.copy(job)
        self._emit()
        return result

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

    # -- executions ------------------------------------------------------------------------------
    def execution(
        self, job_id: str, thing_name: str, execution_number: int | None = None
    ) -> Execution:
        """DescribeJobExecution (control plane): any status, by number or the latest."""
        with self._lock:
            chain = self._executions.get((job_id, thing_name))
            if not chain:
                raise not_found(f"Job execution {job_id} for thing {thing_name}")
            if execution_number is None:
                return snapshot(chain[-1])
            for candidate in chain:
                if candidate.execution_number == execution_number:
                    return snapshot(candidate)
            raise not_found(f"Job execution {job_id} #{execution_number} for thing {thing_name}")

    def executions_for_thing(
        self,
        thing_name: str,
        status: str | None = None,
        namespace: str | None = None,
        job_id: str | None = None,
    ) -> list[Execution]:
        """ListJobExecutionsForThing: the latest execution of every job (all numbers if
        `job_id` is given, as AWS does)."""
        with self._lock:
            result: list[Execution] = []
            for jid in self._thing_jobs.get(thing_name, {}):
                if job_id is not None and jid != job_id:
                    continue
                if namespace is not None and self._jobs[jid].namespace != namespace:
                    continue
                chain = self._executions.get((jid, thing_name), [])
                for execution in chain if job_id is not None else chain[-1:]:
                    if status is None or execution.status == status:
                        result.append(snapshot(execution))
            return result

    def executions_for_job(self, job_id: str, status: str | None = None) -> list[Execution]:
        with self._lock:
            job = self._job(job_id)
            result: list[Execution] = []
            for name in job.thing_names:
                execution = self._current(job_id, name)
                if execution is not None and (status is None or execution.status == status):
                    result.append(snapshot(execution))
            return result

    def cancel_execution(
        self,
        job_id: str,
        thing_name: str,
        force: bool = False,
        expected_version: int | None = None,
        status_details: dict[str, str] | None = None,
    ) -> Execution:
        """CancelJobExecution: QUEUED -> CANCELED; IN_PROGRESS only with `force` (the device's
        next update is then refused); a terminal execution cannot be canceled."""
        reason = check_status_details(status_details)
        if reason:
            raise invalid(reason)
        with self._lock:
            self._job(job_id)
            execution = self._current(job_id, thing_name)
            if execution is None:
                raise not_found(f"Job execution {job_id} for thing {thing_name}")
            if expected_version is not None and expected_version != execution.version_number:
                raise ControlError(
                    "VersionConflictException",
                    f"expectedVersion {expected_version} does not match {execution.version_number}",
                )
            if execution.status in TERMINAL:
                raise ControlError(
                    "InvalidStateTransitionException",
                    f"Job execution is already {execution.status}",
                )
            if execution.status is ExecutionStatus.IN_PROGRESS and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    "Job execution is IN_PROGRESS; use force to cancel it",
                )
            txn = Txn()
            execution.force_canceled = execution.status is ExecutionStatus.IN_PROGRESS
            self._set_status(
                txn, execution, ExecutionStatus.CANCELED, Source.CONTROL, status_details
            )
            self._finish(txn)
            result = snapshot(execution)
        self._emit()
        return result

    def delete_execution(
        self,
        job_id: str,
        thing_name: str,
        execution_number: int,
        force: bool = False,
        namespace: str | None = None,
    ) -> None:
        """DeleteJobExecution: the record disappears (a device update then gets
        ResourceNotFound). QUEUED and terminal executions go without `force`; an IN_PROGRESS
        one needs it ("By default, the status of the job execution must be QUEUED or in a
        terminal state"). The history records a pending one as REMOVED."""
        with self._lock:
            job = self._job(job_id)
            if namespace is not None and job.namespace != namespace:
                raise not_found(f"Job {job_id}")
            chain = self._executions.get((job_id, thing_name), [])
            execution = next((e for e in chain if e.execution_number == execution_number), None)
            if execution is None:
                raise not_found(f"Job execution {job_id} #{execution_number} for {thing_name}")
            if execution.status is ExecutionStatus.IN_PROGRESS and not force:
                raise ControlError(
                    "InvalidStateTransitionException",
                    "Job execution is IN_PROGRESS; use force to delete it",
                )
            txn = Txn()
            if execution.status not in TERMINAL:
                self._set_status(txn, execution, ExecutionStatus.REMOVED, Source.CONTROL)
            if self._event_config[ev.JOB_EXECUTION]:
                txn.lifecycle.append(
                    ev.execution_event(
                        execution, "deleted", self.clock.now(), self.thing_arn(thing_name)
                    )
                )
            chain.remove(execution)
            if not chain:
                self._executions.pop((job_id, thing_name), None)
                self._thing_jobs.get(thing_name, {}).pop(job_id, None)
            txn.executions.pop(execution.key, None)
            txn.deleted_executions.add(execution.key)
            self._finish(txn)
        self._emit()

    # -- templates ------------------------------------------------------------------------------
    def create_job_template(self, template: JobTemplate, job_arn: str | None = None) -> JobTemplate:
        """CreateJobTemplate from a document, a documentSource or an existing job (`job_arn`:
        its document and configurations, overridden by those given)."""
        if not is_job_id(template.template_id):
            raise invalid(f"invalid jobTemplateId {template.template_id!r}")
        sources = [x for x in (template.document_text, template.document_source, job_arn) if x]
        if len(sources) != 1:
            raise invalid("exactly one of document, documentSource and jobArn is required")
        with self._lock:
            if template.template_id in self._templates:
                raise ControlError(
                    "ConflictException", f"Job template {template.template_id} already exists"
                )
            if job_arn is not None:
                job = self._job(job_arn.rsplit("/", 1)[-1])
                template.document_text = job.document_text
                template.presigned_url_config = (
                    template.presigned_url_config or job.presigned_url_config()
                )
                template.rollout_config = template.rollout_config or job.rollout
                template.abort_config = template.abort_config or job.abort
                if template.timeout_config is None and job.in_progress_timeout_minutes:
                    template.timeout_config = TimeoutConfig(job.in_progress_timeout_minutes)
                template.retry_criteria = template.retry_criteria or tuple(job.retry_criteria)
            elif template.document_text is not None:
                try:
                    if not isinstance(json.loads(template.document_text), dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    raise invalid(f"document is not a JSON object: {exc}") from None
            else:
                assert template.document_source is not None
                self.s3_object(template.document_source)
            template.created_at = self.clock.now()
            self._templates[template.template_id] = template
            self._finish(Txn())
            return copy.copy(template)

    def job_template(self, template_id: str) -> JobTemplate:
        with self._lock:
            template = self._templates.get(template_id)
            if template is None:
                raise not_found(f"Job template {template_id}")
            return copy.copy(template)

    def list_job_templates(self) -> list[JobTemplate]:
        with self._lock:
            return [copy.copy(t) for t in self._templates.values()]

    def delete_job_template(self, template_id: str) -> None:
        with self._lock:
            if self._templates.pop(template_id, None) is None:
                raise not_found(f"Job template {template_id}")

    @staticmethod
    def managed_templates(name: str | None = None) -> list[ManagedTemplate]:
        return [t for t in MANAGED_TEMPLATES.values() if name is None or t.name == name]

    @staticmethod
    def managed_template(name: str, version: str | None = None) -> ManagedTemplate:
        template = managed_template(name, version)
        if template is None:
            raise not_found(f"Managed job template {name}")
        return template

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
