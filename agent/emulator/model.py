"""The service's records: things, jobs, job executions and the history of their changes.

Plain mutable dataclasses owned by `JobsService` and only touched under its lock. Field names
follow the AWS API (`executionNumber` -> `execution_number`...), times are epoch seconds (float)
from the service's `Clock`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from jobs_agent.jobs.models import (
    DEVICE_SETTABLE_STATUSES,
    TERMINAL_STATUSES,
    JobExecutionStatus,
)

if TYPE_CHECKING:
    from jobs_agent.emulator.configs import (
        AbortConfig,
        PresignedUrlConfig,
        RolloutConfig,
        SchedulingConfig,
    )

ExecutionStatus = JobExecutionStatus
"""The protocol module's enum, so both sides of the wire share one vocabulary."""
TERMINAL = TERMINAL_STATUSES
DEVICE_SETTABLE = DEVICE_SETTABLE_STATUSES
"""What UpdateJobExecution may set; QUEUED, TIMED_OUT, CANCELED, REMOVED are the service's."""


class JobStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"


class Source(StrEnum):
    """Who caused a change, for `HistoryEntry.source`."""

    DEVICE = "device"
    CONTROL = "control"
    TIMER = "timer"


QUEUED: Final = ExecutionStatus.QUEUED
IN_PROGRESS: Final = ExecutionStatus.IN_PROGRESS
SUCCEEDED: Final = ExecutionStatus.SUCCEEDED
CANCELED: Final = ExecutionStatus.CANCELED
JOB_IN_PROGRESS: Final = JobStatus.IN_PROGRESS
JOB_COMPLETED: Final = JobStatus.COMPLETED
DEVICE: Final = Source.DEVICE
"""Members the per-request paths compare with, read as module globals: a member read off its
class goes through the hook of `EnumType.__getattr__` (the class's attribute lookup then costs
a few hundred instructions more than a global's, a cost `sys.setprofile` does not show), and
the emulator read about 30 per drained job."""


@dataclass(frozen=True, slots=True)
class RetryCriterion:
    failure_type: str  # FAILED | TIMED_OUT | ALL
    number_of_retries: int

    def to_json(self) -> dict[str, Any]:
        return {"failureType": self.failure_type, "numberOfRetries": self.number_of_retries}


@dataclass(slots=True)
class Thing:
    name: str
    created_at: float
    attributes: dict[str, str] = field(default_factory=dict)
    version: int = 1


@dataclass(slots=True)
class Job:
    job_id: str
    targets: list[str]
    """Thing ARNs as AWS reports them (names given to `create_job` are turned into ARNs)."""
    thing_names: list[str]
    document: dict[str, Any]
    document_text: str
    """The document as the creator gave it (rendered, for a managed template): GetJobDocument
    and the HTTP data plane return it."""
    namespace: str | None
    description: str | None
    in_progress_timeout_minutes: int | None
    retry_criteria: list[RetryCriterion]
    presigned_expires_in_sec: int
    created_at: float
    last_updated_at: float
    status: JobStatus = JobStatus.IN_PROGRESS
    completed_at: float | None = None
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    has_presigned_urls: bool = False
    target_selection: str = "SNAPSHOT"
    group_names: list[str] = field(default_factory=list)
    """Thing groups among the targets (CONTINUOUS jobs follow their membership)."""
    presigned_role_arn: str | None = None
    document_source: str | None = None
    template_arn: str | None = None
    document_parameters: dict[str, str] | None = None
    template_text: str | None = None
    """A managed template's document before substitution (`beforeSubstitution=true`)."""
    rollout: RolloutConfig | None = None
    abort: AbortConfig | None = None
    scheduling: SchedulingConfig | None = None
    pending_targets: list[str] = field(default_factory=list)
    """Things that have no execution yet because the rollout has not reached them."""
    notified: int = 0
    """Executions rolled out so far (the rollout's and abort config's "notified things")."""
    next_release_at: float | None = None
    destination_package_versions: list[str] = field(default_factory=list)
    """Package version ARNs as resolved (`$default` replaced); `$null` ARNs kept."""
    destination_package_versions_given: list[str] | None = None
    """The ARNs as given, when they differed (DescribeJob `beforeSubstitution=true`)."""

    def presigned_url_config(self) -> PresignedUrlConfig | None:
        from jobs_agent.emulator.configs import PresignedUrlConfig

        if not self.has_presigned_urls and self.presigned_role_arn is None:
            return None
        return PresignedUrlConfig(self.presigned_role_arn, self.presigned_expires_in_sec)


class ExecutionSummary(NamedTuple):
    """The JobExecutionSummary fields of one version of an execution (immutable, so events
    can carry it across threads and the MQTT front end can cache its JSON)."""

    job_id: str
    queued_at: float
    started_at: float | None
    last_updated_at: float
    version_number: int
    execution_number: int


@dataclass(slots=True)
class Execution:
    job_id: str
    thing_name: str
    namespace: str | None
    execution_number: int
    queued_at: float
    last_updated_at: float
    status: ExecutionStatus = ExecutionStatus.QUEUED
    version_number: int = 1
    status_details: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    step_deadline: float | None = None
    in_progress_deadline: float | None = None
    force_canceled: bool = False
    retry_attempt: int = 0
    seq: int = 0
    """Service-wide creation order: queue order, and the tie-break of equal `queued_at`."""
    summary_cache: ExecutionSummary | None = field(default=None, repr=False, compare=False)

    def summary(self) -> ExecutionSummary:
        """This version's summary; every change that shows in it bumps `version_number`."""
        cached = self.summary_cache
        if cached is None or cached.version_number != self.version_number:
            cached = self.summary_cache = ExecutionSummary(
                self.job_id,
                self.queued_at,
                self.started_at,
                self.last_updated_at,
                self.version_number,
                self.execution_number,
            )
        return cached

    def __copy__(self) -> Execution:
        """A shallow copy made of two calls: every field read in one C call and handed to the
        generated `__init__` (snapshots are taken three times per job; a `getattr`/`setattr`
        pair per field made them 96 of a drained job's 537 calls)."""
        return Execution(*_execution_fields(self))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.job_id, self.thing_name, self.execution_number)

    def deadline(self) -> float | None:
        """When the timers move this execution to TIMED_OUT (the earlier of the two)."""
        if self.step_deadline is None:
            return self.in_progress_deadline
        if self.in_progress_deadline is None:
            return self.step_deadline
        return min(self.step_deadline, self.in_progress_deadline)


def summaries(executions: list[Execution]) -> list[ExecutionSummary]:
    """`summary()` of each, without a call for those whose cached summary is this version's:
    a `notify` lists up to 15 executions, nearly all unchanged since the previous one (a call
    each made 20 of a drained job's 275 calls)."""
    return [
        cached
        if (cached := e.summary_cache) is not None and cached.version_number == e.version_number
        else e.summary()
        for e in executions
    ]


_execution_fields = attrgetter(*(f.name for f in fields(Execution)))
"""Every field of an `Execution`, in `__init__`'s order, as one tuple."""


class HistoryEntry(NamedTuple):
    """One device update or status change, for tests and chaos runs to verify afterwards.
    Two per drained job: an immutable named tuple, built in about a quarter of a frozen
    dataclass's time (whose `__init__` sets its nine fields through `object.__setattr__`)."""

    time: float
    job_id: str
    thing_name: str
    execution_number: int
    from_status: ExecutionStatus | None
    """None when the execution was created."""
    to_status: ExecutionStatus
    status_details: dict[str, str]
    source: Source
    version_number: int
