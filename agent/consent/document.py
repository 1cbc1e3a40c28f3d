"""What a job document says about consent: `"consent": {"prompt": "..."}` at the top level.

Present, the job waits (deferred, IN_PROGRESS) until a person accepts it on the device; a
rejection ends it REJECTED with the person's reason. `prompt` is what `jobs-agent consent
--list` and a device UI show (at most 1000 characters, shown on one line without control
characters); `"consent": true` asks with the job id alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.consent.protocol import MAX_TEXT, clean_text
from jobs_agent.datamodel import model

DOCUMENT_KEY = "consent"


class ConsentDocumentError(ValueError):
    """A malformed `consent` field (the engine REJECTS the document, naming it)."""


@model(slots=True)
class ConsentRequirement:
    """A job document's request for a person's consent before it runs."""

    prompt: str


def consent_requirement(document: Mapping[str, Any]) -> ConsentRequirement | None:
    value = document.get(DOCUMENT_KEY)
    if value is None or value is False:
        return None
    if value is True:
        return ConsentRequirement("")
    if not isinstance(value, Mapping):
        raise ConsentDocumentError(f'{DOCUMENT_KEY}: expected true or {{"prompt": "..."}}')
    unknown = sorted(str(k) for k in value if k != "prompt")
    if unknown:
        raise ConsentDocumentError(f"{DOCUMENT_KEY}.{unknown[0]}: unknown key (only prompt)")
    prompt = value.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_TEXT:
        raise ConsentDocumentError(
            f"{DOCUMENT_KEY}.prompt: expected a string of at most {MAX_TEXT} characters"
        )
    return ConsentRequirement(clean_text(prompt))
