"""The control plane's view of job executions: describe, list, cancel and delete one."""

from __future__ import annotations

from jobs_agent.emulator import events as ev
from jobs_agent.emulator.configs import (
    invalid,
)
from jobs_agent.emulator.core import ServiceCore, Txn, snapshot
from jobs_agent.emulator.data_plane import check_status_details
from jobs_agent.emulator.errors import ControlError, not_found
from jobs_agent.emulator.model import (
    TERMINAL,
    Execution,
    ExecutionStatus,
    Source,
)


class ExecutionsControl(ServiceCore):
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
