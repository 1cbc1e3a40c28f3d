"""The AWS IoT Jobs protocol's names and limits, in one place, for the device and the emulator,
and those of the APIs beside it that the agent speaks too (Device Shadow, MQTT-based file
delivery, the Software Package Catalog, maintenance windows).

Every pattern and number here is the service's (API reference: the Jobs data plane, "Limits"),
so that the device refuses exactly what the emulator refuses and both stay where the service
is. It imports nothing of the agent: every layer may use it (docs/architecture.md).

An execution is named by (namespace, jobId, executionNumber), never by its document (AWS
re-signs presigned URLs on every delivery): `ExecutionRef`, the one reference the engine, the
store and the Jobs client pass around. The default namespace is `None` everywhere.
"""

from __future__ import annotations

import re
from enum import StrEnum

from jobs_agent.datamodel import model


class JobExecutionStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"


_STATUS_OF: dict[str, JobExecutionStatus] = {status.value: status for status in JobExecutionStatus}
"""Each status by its name on the wire; a member is found too (a StrEnum's member hashes and
compares as its value)."""


def job_execution_status(value: str) -> JobExecutionStatus:
    """`JobExecutionStatus(value)` without the enum's two Python calls per lookup (six per
    plugin job; issue 18); a value that names no status raises ValueError as it does."""
    try:
        return _STATUS_OF[value]
    except (KeyError, TypeError):  # the enum's own error for it
        return JobExecutionStatus(value)


TERMINAL_STATUSES: frozenset[JobExecutionStatus] = frozenset(
    {
        JobExecutionStatus.SUCCEEDED,
        JobExecutionStatus.FAILED,
        JobExecutionStatus.REJECTED,
        JobExecutionStatus.TIMED_OUT,
        JobExecutionStatus.REMOVED,
        JobExecutionStatus.CANCELED,
    }
)
"""An execution in one of these is over: the service accepts no further update for it."""

DEVICE_SETTABLE_STATUSES: frozenset[JobExecutionStatus] = frozenset(
    {
        JobExecutionStatus.IN_PROGRESS,
        JobExecutionStatus.SUCCEEDED,
        JobExecutionStatus.FAILED,
        JobExecutionStatus.REJECTED,
    }
)
"""What UpdateJobExecution may set; the rest only the service sets."""

# -- identifiers -----------------------------------------------------------------------------
THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
JOB_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NAMESPACE_RE = re.compile(r"[a-zA-Z0-9_-]+")
"""namespaceId as CreateJob defines it (no length of its own: the topic's limit bounds it)."""
NEXT_JOB_ID = "$next"
"""DescribeJobExecution's name for the head of the queue."""
GREENGRASS_NAMESPACE = "aws-gg-deployment"
"""The Greengrass nucleus's deployments: never served by this agent."""
MAX_CLIENT_TOKEN = 64
MAX_COUNTER = 2**63 - 1
"""executionNumber and versionNumber are Java longs on the service (and SQLite integers here)."""


def is_thing_name(value: str) -> bool:
    return THING_NAME_RE.fullmatch(value) is not None


def is_job_id(value: str, *, allow_next: bool = False) -> bool:
    return (allow_next and value == NEXT_JOB_ID) or JOB_ID_RE.fullmatch(value) is not None


def is_namespace(value: str) -> bool:
    return NAMESPACE_RE.fullmatch(value) is not None


# -- step timeout ------------------------------------------------------------------------------
STEP_TIMEOUT_MIN = 1
STEP_TIMEOUT_MAX = 10080
"""stepTimeoutInMinutes (and a job's inProgressTimeoutInMinutes): one minute to seven days."""
STEP_TIMEOUT_CLEAR = -1
"""`stepTimeoutInMinutes: -1` on an update clears the step timer."""


def step_timeout_problem(minutes: int, *, allow_clear: bool = False) -> str | None:
    """Why `minutes` is not a step timeout the service accepts; None when it is one."""
    if allow_clear and minutes == STEP_TIMEOUT_CLEAR:
        return None
    if STEP_TIMEOUT_MIN <= minutes <= STEP_TIMEOUT_MAX:
        return None
    return f"must be {STEP_TIMEOUT_MIN} to {STEP_TIMEOUT_MAX}" + (
        f" or {STEP_TIMEOUT_CLEAR}" if allow_clear else ""
    )


# -- sizes -------------------------------------------------------------------------------------
MAX_DOCUMENT_BYTES = 32 * 1024
"""A job document (CreateJob's `document`; botocore: JobDocument max 32768)."""
STATUS_DETAILS_MAX_PAIRS = 10
STATUS_DETAILS_MAX_KEY_LENGTH = 128
STATUS_DETAILS_MAX_VALUE_LENGTH = 1024
"""In UTF-16 code units, as the service (Java) counts them."""
STATUS_DETAILS_KEY_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


class StatusDetails(dict[str, str]):
    """A statusDetails map that already passed the protocol's check (sanitised on the device,
    validated in the emulator): the next layer takes it as it is instead of checking it again.
    Only `jobs_agent.jobs.status_details` and the stores that wrote one make these."""


# -- the reference to one execution ------------------------------------------------------------
@model(slots=True)
class ExecutionRef:
    """(namespace, jobId, executionNumber). `namespace` None is the default namespace; `""` is
    accepted for it too and becomes None, so there is one spelling of the default."""

    namespace: str | None
    job_id: str
    execution_number: int

    def __post_init__(self) -> None:
        if self.namespace == "":
            object.__setattr__(self, "namespace", None)

    # Its own hash and comparison, the values and results `@model`'s shared ones give (the
    # tuple of the three fields, compared only with an ExecutionRef), without their look-up of
    # the class's plan and its `attrgetter`: an execution's reference is hashed 10-16 times
    # a job and compared about 6 (sets and dicts of the engine, the store's pending writes),
    # 3.2 -> 2.2 k instructions a hash, 3.5 -> 1.8 k a comparison (issue 18).
    def __hash__(self) -> int:
        return hash((self.namespace, self.job_id, self.execution_number))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return (
                self.execution_number == other.execution_number
                and self.job_id == other.job_id
                and self.namespace == other.namespace
            )
        return NotImplemented

    def __str__(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.job_id}#{self.execution_number}"


# -- beside Jobs -------------------------------------------------------------------------------
MAINTENANCE_WINDOW_MIN_MINUTES = 1
MAINTENANCE_WINDOW_MAX_MINUTES = 1430
"""`MaintenanceWindow.durationInMinutes` (API_MaintenanceWindow.html)."""
SHADOW_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,64}")
"""A named shadow (Device Shadow MQTT topics); only the reserved `$package` begins with `$`."""
PACKAGE_SHADOW = "$package"
"""The Software Package Catalog's reserved named shadow: the device's installed versions."""
STREAM_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")
"""A stream of MQTT-based file delivery (CreateStream's `streamId`)."""
PACKAGE_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,128}")
VERSION_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,64}")
PACKAGE_ATTRIBUTE_KEY_RE = re.compile(r"[a-zA-Z0-9:_-]+")
MAX_PACKAGE_ATTRIBUTES_BYTES = 3072
"""A package version's attributes, keys and values together (CreatePackageVersion)."""
MAX_DESTINATION_PACKAGE_VERSIONS = 25
"""CreateJob's `destinationPackageVersions`."""
DEFAULT_VERSION = "$default"
NULL_VERSION = "$null"
"""The two version names a job document's package placeholders may use besides real ones."""


def is_shadow_name(value: str) -> bool:
    return value == PACKAGE_SHADOW or SHADOW_NAME_RE.fullmatch(value) is not None


def is_stream_id(value: str) -> bool:
    return STREAM_ID_RE.fullmatch(value) is not None
