"""The fields of a job document that the agent acts on before (or beside) any handler:
`maintenanceWindow` (top level and a Device Client step's action), `consent` and
`maxDeferralMinutes`. Checked when the document is resolved, so that a malformed one REJECTS
the job with its path instead of being ignored (a job meant for the night must not run at noon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.consent.document import ConsentDocumentError, consent_requirement
from jobs_agent.schedule.windows import WindowError, document_windows
from jobs_agent.vocabulary import STEP_TIMEOUT_MAX
from jobs_agent_handlers.api import JobRejected

MAX_DEFERRAL_KEY = "maxDeferralMinutes"


def max_deferral_minutes(document: Mapping[str, Any]) -> int | None:
    """The job's own limit on its total deferral (it may only lower the device's
    `jobs.max_deferral_minutes`); None when it names none. Raises `JobRejected`."""
    value = document.get(MAX_DEFERRAL_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= STEP_TIMEOUT_MAX:
        raise JobRejected(
            f"{MAX_DEFERRAL_KEY}: expected an integer from 1 to {STEP_TIMEOUT_MAX}, got {value!r}"
        )
    return value


def check_agent_fields(document: Mapping[str, Any]) -> None:
    try:
        document_windows(document)
        consent_requirement(document)
    except (WindowError, ConsentDocumentError) as exc:
        raise JobRejected(str(exc)) from None
    max_deferral_minutes(document)
