"""What a device calls (MQTT and the HTTPS data plane): GetPendingJobExecutions,
StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution.

Inputs arrive already parsed by the shared protocol models (`agent.jobs.models`), so only the
values' meaning is checked here: step timeouts, statusDetails, existence, versions, transitions.
"""

from __future__ import annotations

from typing import Any, Final

from jobs_agent.emulator.core import ServiceCore, Txn, snapshot
from jobs_agent.emulator.errors import ServiceError
from jobs_agent.emulator.events import Delivery, UpdateResult
from jobs_agent.emulator.model import (
    CANCELED,
    DEVICE,
    DEVICE_SETTABLE,
    IN_PROGRESS,
    QUEUED,
    TERMINAL,
    Execution,
    ExecutionStatus,
)
from jobs_agent.jobs.errors import ErrorCode
from jobs_agent.jobs.status_details import validate_status_details
from jobs_agent.vocabulary import step_timeout_problem

_STATUSES: Final = {status._value_: status for status in ExecutionStatus}
"""A status by its value: `ExecutionStatus(status)` is two Python calls in enum.py (its
metaclass's `__call__` and `__new__`), the only calls into enum.py a drained job made."""


def check_step_timeout(value: int | None, allow_clear: bool) -> None:
    problem = None if value is None else step_timeout_problem(value, allow_clear=allow_clear)
    if problem is not None:
        raise ServiceError(ErrorCode.INVALID_REQUEST, f"stepTimeoutInMinutes {problem}")


def check_status_details(details: dict[str, Any] | None) -> str | None:
    """Why `details` breaks the API's DetailsMap constraints (None when it fits): the protocol
    module's validator, so the emulator refuses exactly what the device side avoids sending."""
    if details is None:
        return None
    return validate_status_details(details)


class DataPlane(ServiceCore):
    def _visible(self, job_id: str, thing_name: str, namespace: str | None) -> Execution:
        job = self._jobs.get(job_id)
        current = self._current(job_id, thing_name)
        if job is None or current is None or job.namespace != namespace:
            raise ServiceError(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"Job execution {job_id} for thing {thing_name} not found",
            )
        return current

    def _by_number(self, job_id: str, thing_name: str, number: int) -> Execution:
        for candidate in self._executions.get((job_id, thing_name), []):
            if candidate.execution_number == number:
                return candidate
        raise ServiceError(
            ErrorCode.RESOURCE_NOT_FOUND,
            f"Job execution {job_id} #{number} for thing {thing_name} not found",
        )

    def get_pending(
        self, thing_name: str, namespace: str | None = None
    ) -> tuple[list[Execution], list[Execution]]:
        """GetPendingJobExecutions: (inProgressJobs, queuedJobs) snapshots, in queue order, at
        most 10 (15 with scheduled jobs) in all; IN_PROGRESS ones take their share of the cap
        and are left out of the answer under the `pending-in-progress=filtered` reading."""
        with self._lock:
            queue = self._queues.get((thing_name, namespace))
            if queue is None:
                return [], []
            in_progress, queued = queue.pending()
            if not self.readings.pending_lists_in_progress:
                in_progress = []
            return [snapshot(e) for e in in_progress], [snapshot(e) for e in queued]

    def start_next(
        self,
        thing_name: str,
        namespace: str | None = None,
        status_details: dict[str, str] | None = None,
        step_timeout_minutes: int | None = None,
    ) -> Delivery | None:
        """StartNextPendingJobExecution: the IN_PROGRESS execution queued first, unchanged,
        else the oldest QUEUED one moved to IN_PROGRESS; None when nothing is pending."""
        check_step_timeout(step_timeout_minutes, allow_clear=False)
        reason = check_status_details(status_details)
        if reason:
            raise ServiceError(ErrorCode.INVALID_REQUEST, reason)
        with self._lock:
            txn = Txn()
            self._ensure_thing(thing_name, txn)
            queue = self._queues.get((thing_name, namespace))
            head = None if queue is None else queue.head()
            if head is not None and head.status is QUEUED:
                if step_timeout_minutes is not None:
                    head.step_deadline = self.clock.now() + step_timeout_minutes * 60
                self._set_status(txn, head, IN_PROGRESS, DEVICE, status_details)
                self._arm_timer(head)
            result = None if head is None else self._deliver(head, self.clock.now())
            self._finish(txn)
        self._emit()
        return result

    def describe(
        self,
        thing_name: str,
        job_id: str,
        namespace: str | None = None,
        execution_number: int | None = None,
    ) -> Delivery | None:
        """DescribeJobExecution (data plane); `job_id` may be `$next` (None when nothing is
        pending). A terminal execution answers TerminalStateReached (see docs/emulator.md)."""
        with self._lock:
            now = self.clock.now()
            if job_id == "$next":
                queue = self._queues.get((thing_name, namespace))
                head = None if queue is None else queue.head()
                return None if head is None else self._deliver(head, now)
            execution = self._visible(job_id, thing_name, namespace)
            if execution_number is not None and execution_number != execution.execution_number:
                execution = self._by_number(job_id, thing_name, execution_number)
            if execution.status in TERMINAL:
                raise ServiceError(
                    ErrorCode.TERMINAL_STATE_REACHED,
                    f"Job execution {job_id} for thing {thing_name} is in terminal state "
                    f"{execution.status}",
                )
            return self._deliver(execution, now)

    def update(
        self,
        thing_name: str,
        job_id: str,
        status: str,
        *,
        namespace: str | None = None,
        status_details: dict[str, str] | None = None,
        expected_version: int | None = None,
        execution_number: int | None = None,
        step_timeout_minutes: int | None = None,
        include_document: bool = False,
    ) -> UpdateResult:
        """UpdateJobExecution. Checks, in order: status value, statusDetails, step timeout,
        existence, expectedVersion, state transition."""
        try:
            new_status = _STATUSES[status]
        except (KeyError, TypeError):  # TypeError: not a hashable value, so no status either
            raise ServiceError(
                ErrorCode.INVALID_REQUEST, f"status {status!r} is not a job execution status"
            ) from None
        reason = check_status_details(status_details)
        if reason:
            raise ServiceError(ErrorCode.INVALID_REQUEST, reason)
        check_step_timeout(step_timeout_minutes, allow_clear=True)
        with self._lock:
            now = self.clock.now()
            execution = self._visible(job_id, thing_name, namespace)
            if execution_number is not None and execution_number != execution.execution_number:
                execution = self._by_number(job_id, thing_name, execution_number)
            if expected_version is not None and expected_version != execution.version_number:
                raise ServiceError(
                    ErrorCode.VERSION_MISMATCH,
                    f"expectedVersion {expected_version} does not match the current version "
                    f"{execution.version_number}",
                    snapshot(execution),
                )
            self._check_transition(execution, new_status)
            txn = Txn()
            if new_status is IN_PROGRESS and step_timeout_minutes is not None:
                execution.step_deadline = (
                    None if step_timeout_minutes == -1 else now + step_timeout_minutes * 60
                )
            self._set_status(txn, execution, new_status, DEVICE, status_details)
            self._arm_timer(execution)
            if include_document:
                delivery = self._deliver(execution, now)
                result = UpdateResult(delivery.execution, delivery.document, delivery.document_text)
            else:
                result = UpdateResult(snapshot(execution), None, None)
            self._finish(txn)
        self._emit()
        return result

    def _check_transition(self, execution: Execution, new_status: ExecutionStatus) -> None:
        if (
            execution.status is CANCELED
            and execution.force_canceled
            and self.readings.update_after_force_cancel is ErrorCode.TERMINAL_STATE_REACHED
        ):
            raise ServiceError(
                ErrorCode.TERMINAL_STATE_REACHED,
                f"Job execution {execution.job_id} was force-canceled",
            )
        if execution.status in TERMINAL or new_status not in DEVICE_SETTABLE:
            raise ServiceError(
                ErrorCode.INVALID_STATE_TRANSITION,
                f"Cannot update job execution from {execution.status} to {new_status}",
                snapshot(execution),
            )
