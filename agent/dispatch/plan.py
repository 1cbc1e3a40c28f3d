"""What a job would do, step by step, without doing it (`exec --dry-run`, `run --dry-run`)."""

from __future__ import annotations

import shlex

from jobs_agent.datamodel import model
from jobs_agent.redact import redact_text


@model
class PlannedStep:
    """One step as it would run: the executable (or plugin), its argv, user and time limit."""

    name: str
    kind: str
    """"runHandler", "runCommand" or "plugin"."""
    executable: str
    argv: tuple[str, ...]
    user: str
    timeout: float | None
    final: bool = False
    ignore_failure: bool = False

    def describe(self) -> str:
        label = f"{self.name!r} ({self.kind}{', finalStep' if self.final else ''})"
        command = shlex.join(self.argv) if self.argv else self.executable
        limit = f"timeout {self.timeout:g} s" if self.timeout is not None else "no time limit"
        extra = ", failure ignored" if self.ignore_failure else ""
        return redact_text(f"{label}: {command} as {self.user}, {limit}{extra}")
