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
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NAMESPACE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True, order=True)
class ConsentKey:
    """One execution: consent is given to a run of a job, not to the job for ever."""

    job_id: str
    execution_number: int
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not JOB_ID.fullmatch(self.job_id):
            raise ValueError(f"invalid job id {self.job_id!r}")
        if self.namespace is not None and not NAMESPACE.fullmatch(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")
        if isinstance(self.execution_number, bool) or self.execution_number < 1:
            raise ValueError(f"invalid execution number {self.execution_number!r}")

    @property
    def file_name(self) -> str:
        suffix = "" if self.namespace is None else f"@{self.namespace}"
        return f"{self.job_id}@{self.execution_number}{suffix}.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "namespace": self.namespace,
            "executionNumber": self.execution_number,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    key: ConsentKey
    accepted: bool
    reason: str
    """The person's words (a rejection's reason goes to statusDetails); may be empty."""
    decided_by: str
    """The user name of the peer that decided (the kernel's word for it, not the client's)."""
    uid: int
    decided_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            **self.key.to_json(),
            "decision": "accepted" if self.accepted else "rejected",
            "reason": self.reason,
            "decidedBy": self.decided_by,
            "uid": self.uid,
            "decidedAt": self.decided_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        key = ConsentKey(data["jobId"], int(data["executionNumber"]), data.get("namespace"))
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
        name = decision.key.file_name
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

    def load(self, key: ConsentKey) -> Decision | None:
        try:
            directory = self._open()
        except FileNotFoundError:
            return None
        try:
            fd = os.open(
                key.file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
        except FileNotFoundError:
            return None
        finally:
            os.close(directory)
        with os.fdopen(fd, "rb") as file:
            return Decision.from_json(json.loads(file.read(65536)))

    def remove(self, key: ConsentKey) -> None:
        """Forget a decision once its execution is settled."""
        try:
            directory = self._open()
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key.file_name, dir_fd=directory)
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
            key = ConsentKey(job_id, int(parts[1]), parts[2] if len(parts) == 3 else None)
            if key.namespace == namespace and (decision := self.load(key)) is not None:
                found.append(decision)
        return found
