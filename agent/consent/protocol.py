"""The consent socket's protocol, shared by the agent (server) and `jobs-agent consent`.

A stream Unix socket; each request is one line of JSON, answered by one line of JSON, and a
connection may carry several. A device UI can speak it with any JSON library (or `socat`):

    {"op": "list"}
    {"op": "accept", "jobId": "fw-2-1", "namespace": null}
    {"op": "reject", "jobId": "fw-2-1", "reason": "the line is running"}

An answer is `{"ok": true, ...}` or `{"ok": false, "error": CODE, "message": TEXT}`:

* `NotAllowed`: the connecting user is neither root nor allowed (`consent.allowed_users`,
  `consent.allowed_groups`);
* `NotWaiting`: the agent is not waiting for consent to that job (the message lists the ones
  it is waiting for);
* `AlreadyDecided`: someone decided otherwise first (the message says who, when and what);
* `InvalidRequest`: not JSON, an unknown `op`, a missing `jobId`, a rejection without a
  reason, a line over 16 KiB;
* `NotRecorded`: the decision could not be written to disk, so it was not taken: try again;
* `Busy`: too many connections at once.

`accept`/`reject` answer `{"ok": true, "jobId", "namespace", "executionNumber", "decision":
"accepted"|"rejected", "reason", "decidedBy", "decidedAt", "repeated"}`; `repeated` is true when
the same decision had been taken before (asking twice is harmless). `list` answers
`{"ok": true, "waiting": [{"jobId", "namespace", "executionNumber", "prompt", "since"}]}`.
"""

from __future__ import annotations

import json
from typing import Any

from jobs_agent.consent.settings import DEFAULT_SOCKET as DEFAULT_SOCKET
from jobs_agent.jobs.status_details import clean_value, cut_head

MAX_LINE = 16 * 1024
MAX_TEXT = 1000
"""A reason or prompt, in characters: it ends up in statusDetails (values of at most 1024)."""

OPS = ("list", "accept", "reject")
NOT_ALLOWED = "NotAllowed"
NOT_WAITING = "NotWaiting"
ALREADY_DECIDED = "AlreadyDecided"
INVALID_REQUEST = "InvalidRequest"
NOT_RECORDED = "NotRecorded"
BUSY = "Busy"


class ConsentRefused(Exception):
    """A request the agent answers with an error (`code` is one of the codes above)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def clean_text(text: str) -> str:
    """One line without control characters (a newline becomes `\\n`), at most `MAX_TEXT`:
    a prompt comes from a job document and is shown on a terminal, a reason goes to the cloud."""
    return cut_head(clean_value(text).strip(), MAX_TEXT)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}
