"""Consent decisions on disk: written and synced before anyone is told they were taken.

One small JSON file per execution in a directory of the agent's private state directory
(`state_dir/consent`, mode 0700): `<jobId>@<executionNumber>.json`, or
`<jobId>@<executionNumber>@<namespace>.json` in a namespace (`@` is in neither id's alphabet,
so two executions never share a name). A file is written under a temporary name, synced,
renamed into place and the directory synced: after a power cut a decision is either there,
whole, or was never acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.vocabulary import MAX_COUNTER, ExecutionRef, is_job_id, is_namespace

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_FILE_NAME = 255
"""NAME_MAX: a namespace too long to name a decision file cannot be asked about."""


def checked_ref(job_id: object, execution_number: object, namespace: object) -> ExecutionRef:
    """The execution named by ids from outside the agent (the socket, a file name), checked
    against the protocol's patterns: consent is given to one run of a job, not to the job for
    ever. Raises ValueError."""
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r:.80}")
    if namespace is not None and (not isinstance(namespace, str) or not is_namespace(namespace)):
        raise ValueError(f"invalid namespace {namespace!r:.80}")
    if isinstance(execution_number, bool) or not isinstance(execution_number, int):
        raise ValueError(f"invalid execution number {execution_number!r:.40}")
    if not 1 <= execution_number <= MAX_COUNTER:
        raise ValueError(f"invalid execution number {execution_number}")
    ref = ExecutionRef(namespace, job_id, execution_number)
    if len(file_name(ref).encode()) > MAX_FILE_NAME:
        raise ValueError(f"namespace too long for a decision file: {namespace!r:.80}")
    return ref


def file_name(ref: ExecutionRef) -> str:
    suffix = "" if ref.namespace is None else f"@{ref.namespace}"
    return f"{ref.job_id}@{ref.execution_number}{suffix}.json"


def ref_json(ref: ExecutionRef) -> dict[str, Any]:
    return {
        "jobId": ref.job_id,
        "namespace": ref.namespace,
        "executionNumber": ref.execution_number,
    }


@model(slots=True)
class Decision:
    key: ExecutionRef
    accepted: bool
    reason: str
    """The person's words (a rejection's reason goes to statusDetails); may be empty."""
    decided_by: str
    """The user name of the peer that decided (the kernel's word for it, not the client's)."""
    uid: int
    decided_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            **ref_json(self.key),
            "decision": "accepted" if self.accepted else "rejected",
            "reason": self.reason,
            "decidedBy": self.decided_by,
            "uid": self.uid,
            "decidedAt": self.decided_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        key = checked_ref(data["jobId"], data["executionNumber"], data.get("namespace"))
        decision = data["decision"]
        if decision not in ("accepted", "rejected"):
            raise ValueError(f"unknown decision {decision!r}")
        return cls(
            key,
            decision == "accepted",
            str(data.get("reason", "")),
            str(data["decidedBy"]),
            int(data["uid"]),
            float(data["decidedAt"]),
        )


class DecisionStore:
    """The decisions directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)

    def _open(self) -> int:
        return os.open(self.directory, _DIR_FLAGS)

    def save(self, decision: Decision) -> None:
        """Durably: the call returns once the decision survives a power cut."""
        data = json.dumps(decision.to_json(), separators=(",", ":")).encode() + b"\n"
        name = file_name(decision.key)
        temporary = f".{name}.{secrets.token_hex(4)}.tmp"
        directory = self._open()
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=directory)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                raise
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self, key: ExecutionRef) -> Decision | None:
        try:
            directory = self._open()
        except FileNotFoundError:
            return None
        try:
            fd = os.open(
                file_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
        except FileNotFoundError:
            return None
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as file:
            return Decision.from_json(json.loads(file.read(65536)))

    def remove(self, key: ExecutionRef) -> None:
        """Forget a decision once its execution is settled."""
        try:
            directory = self._open()
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file_name(key), dir_fd=directory)
                os.fsync(directory)
        finally:
            os.close(directory)

    def recorded(self, job_id: str, namespace: str | None) -> list[Decision]:
        """Every decision kept for a job (a repeated request after the job moved on)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found: list[Decision] = []
        for name in sorted(names):
            if not name.startswith(f"{job_id}@") or not name.endswith(".json"):
                continue
            parts = name[: -len(".json")].split("@")
            if len(parts) not in (2, 3) or not parts[1].isdigit():
                continue
            try:
                key = checked_ref(job_id, int(parts[1]), parts[2] if len(parts) == 3 else None)
            except ValueError:
                continue
            if key.namespace == namespace and (decision := self.load(key)) is not None:
                found.append(decision)
        return found
