"""The AWS IoT Jobs service as a pure state machine: no sockets, no topics, no event loop.

`JobsService` is the records and transitions of core.py with the operations of a device
(data_plane.py) and of an operator (control.py). The MQTT front end and the HTTP planes are
thin adapters around it; tests drive it directly too. The silent points of the documentation
are `Readings` (readings.py), given at construction.

`notify` (JobExecutionsChanged) is emitted when an execution is queued, changes non-terminal
status (QUEUED -> IN_PROGRESS only under the default reading) or becomes terminal, carrying at
most 10 (15) pending executions; `notify-next` (NextJobExecutionChanged) only when the head of
the thing's queue (the IN_PROGRESS execution queued first, else the oldest QUEUED one) is a
different execution than the last one announced.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jobs_agent.emulator.clock import Clock
from jobs_agent.emulator.configs import (
    AbortConfig,
    PresignedUrlConfig,
    RolloutConfig,
    SchedulingConfig,
    TimeoutConfig,
)
from jobs_agent.emulator.control import ControlPlane, retry_criteria_from
from jobs_agent.emulator.data_plane import DataPlane, check_status_details
from jobs_agent.emulator.errors import ControlError, ServiceError
from jobs_agent.emulator.events import (
    Delivery,
    EventListener,
    JobExecutionsChanged,
    LifecycleEvent,
    NextJobExecutionChanged,
    ServiceEvent,
    UpdateResult,
)
from jobs_agent.emulator.groups import Query, ThingGroup
from jobs_agent.emulator.model import ExecutionStatus, Job, RetryCriterion
from jobs_agent.emulator.new_job import NewJob
from jobs_agent.emulator.readings import DOCUMENTED, Readings
from jobs_agent.vocabulary import MAX_DOCUMENT_BYTES

if TYPE_CHECKING:
    from jobs_agent.emulator.store import StateStore

__all__ = [
    "ControlError",
    "Delivery",
    "EventListener",
    "JobExecutionsChanged",
    "JobsService",
    "LifecycleEvent",
    "NextJobExecutionChanged",
    "ServiceError",
    "ServiceEvent",
    "UpdateResult",
    "check_status_details",
]


class JobsService(DataPlane, ControlPlane):
    """AWS IoT Jobs, service side. See the module docstrings for the design."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        throttle_rate: float = 0.0,
        internal_error_rate: float = 0.0,
        seed: int | None = None,
        store: StateStore | None = None,
        readings: Readings = DOCUMENTED,
    ) -> None:
        super().__init__(
            clock,
            region=region,
            account_id=account_id,
            throttle_rate=throttle_rate,
            internal_error_rate=internal_error_rate,
            seed=seed,
            store=store,
            readings=readings,
        )
        if store is not None:
            self._load(store)

    def create_job(
        self,
        job_id: str,
        targets: Iterable[str],
        document: dict[str, Any] | str | None = None,
        *,
        namespace: str | None = None,
        description: str | None = None,
        in_progress_timeout_minutes: int | None = None,
        retry_config: Iterable[RetryCriterion | Mapping[str, Any]] | None = None,
        presigned_expires_in_sec: int | None = None,
        presigned_url_config: PresignedUrlConfig | None = None,
        target_selection: str = "SNAPSHOT",
        document_source: str | None = None,
        job_template_arn: str | None = None,
        document_parameters: Mapping[str, str] | None = None,
        timeout: TimeoutConfig | None = None,
        rollout: RolloutConfig | None = None,
        abort: AbortConfig | None = None,
        scheduling: SchedulingConfig | None = None,
        default_presign_role: bool = True,
        destination_package_versions: Iterable[str] | None = None,
    ) -> Job:
        """CreateJob: one QUEUED execution per target thing (group members included), as the
        rollout and schedule allow.

        `targets` are thing names, thing ARNs or thing group ARNs; `document` a dict or its
        JSON text (stored as given), or None with `document_source` / `job_template_arn`.
        There is no job-level step timeout in AWS: devices set it per request. As a library
        call it stands in for the console: a document with presigned URL placeholders and no
        role gets `EMULATOR_PRESIGN_ROLE`; CreateJob over HTTP passes
        `default_presign_role=False` and is refused instead, as AWS refuses it.
        `destination_package_versions` are package version ARNs (packages.py): the document's
        package substitution parameters are resolved, and each execution that SUCCEEDS updates
        the thing's `$package` shadow when the package configuration asks for it.
        """
        if timeout is None and in_progress_timeout_minutes is not None:
            timeout = TimeoutConfig.from_json(
                {"inProgressTimeoutInMinutes": in_progress_timeout_minutes}
            )
        if presigned_url_config is None and presigned_expires_in_sec is not None:
            presigned_url_config = PresignedUrlConfig.from_json(
                {"expiresInSec": presigned_expires_in_sec}
            )
        retry = None if retry_config is None else retry_criteria_from(retry_config)
        destinations = (
            None if destination_package_versions is None else list(destination_package_versions)
        )
        request = NewJob(
            job_id, list(targets), document, MAX_DOCUMENT_BYTES, namespace, description,
            target_selection, document_source, job_template_arn, document_parameters, timeout,
            retry, presigned_url_config, rollout, abort, scheduling, default_presign_role,
            destinations,
        )  # fmt: skip
        return self._create_job(request)

    # -- persistence ----------------------------------------------------------------------------
    def _load(self, store: StateStore) -> None:
        """Rebuild every index from the store (used once, at construction)."""
        state = store.load()
        self._things = {t.name: t for t in state.things}
        for record in state.records.get("group", []):
            query = record.get("query")
            group = ThingGroup(
                record["name"],
                record["created_at"],
                record.get("description"),
                None if query is None else Query.parse(query),
                version=record.get("version", 1),
            )
            self.groups.groups[group.name] = group
            for thing in record.get("members", []):
                self.groups._join(group, thing)
        for job in state.jobs:
            self._jobs[job.job_id] = job
            self._job_counts[job.job_id] = Counter()
            for when in (
                job.next_release_at,
                None if job.scheduling is None else job.scheduling.start_time,
                None if job.scheduling is None else job.scheduling.end_time,
            ):
                if when is not None:
                    self._arm_job_timer(when, job.job_id)
        for execution in sorted(state.executions, key=lambda e: (e.seq, e.execution_number)):
            if execution.job_id not in self._jobs:
                continue
            self._executions.setdefault((execution.job_id, execution.thing_name), []).append(
                execution
            )
            self._thing_jobs.setdefault(execution.thing_name, {})[execution.job_id] = None
        top = max((e.seq for e in state.executions), default=0)
        self._seq = iter(range(top + 1, 2**62))
        for chain in self._executions.values():
            chain.sort(key=lambda e: e.execution_number)
            current = chain[-1]
            job = self._jobs[current.job_id]
            self._job_counts[current.job_id][current.status] += 1
            queue = self._queue((current.thing_name, current.namespace))
            if current.status is ExecutionStatus.QUEUED:
                queue.add_queued(current, job.scheduling is not None)
            elif current.status is ExecutionStatus.IN_PROGRESS:
                queue.add_queued(current, job.scheduling is not None)
                queue.start(current)
                self._arm_timer(current)
        for queue in self._queues.values():
            queue.queued = OrderedDict(sorted(queue.queued.items(), key=lambda kv: kv[1].seq))
            head = queue.head()
            queue.announced_head = None if head is None else (head.job_id, head.execution_number)
        self._history = list(state.history)
        self.shadows.load(state.records.get("shadow", []))
        self.packages.load(state.records)
        self.streams.load(state.records.get("stream", []))
