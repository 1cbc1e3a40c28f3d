"""Fresh presigned URLs: the job document asked for again, and used only if it is the same job.

AWS signs a document's presigned URLs each time it delivers the document, for
`presignedUrlConfig.expiresInSec` (60 to 3600 s, API_PresignedUrlConfig.html). A download that
outlives its URL (a slow link, a step resumed later) asks for the document again with
DescribeJobExecution(`includeJobDocument`), which delivers newly signed URLs
(API_iot-jobs-data_DescribeJobExecution.html). The handler never reaches the service itself: the
engine makes the request over its own Jobs client and gives the handler the document, nothing
else (`JobContext.refresh_document`, docs/security.md).

What comes back is held to the copy the execution started with:

* it must be that copy but for the queries of its presigned URLs (the credentials, the date and
  the expiry of each signed URL): anything else means the job changed under a running step,
  which ends FAILED ("the job document changed while it ran"), never silently runs on;
* it goes through the same checks as the first copy (`Dispatcher.resolve`: size limits, and with
  `jobs.require_signature` the signature, whose `presigned` list accepts a fresh URL only for
  the signed bucket and key);
* a run may ask `jobs.max_document_refreshes` times; one more ends it FAILED.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.engine.shared import Shared
from jobs_agent.engine.store import ExecutionRecord
from jobs_agent.jobs.client import JobsClient
from jobs_agent.jobs.errors import (
    CLOUD_ENDED_CODES,
    ErrorCode,
    JobsError,
    JobsRejected,
    LinkError,
    RequestTimeout,
)
from jobs_agent.jobs.models import JobExecution
from jobs_agent.vocabulary import TERMINAL_STATUSES, ExecutionRef
from jobs_agent_handlers.api import JobFailed, JobRejected

log = structlog.get_logger("jobs_agent.engine")

_PRESIGNED_QUERY = re.compile(
    r"(?P<base>https?://[^\s?#\"'<>]+)\?(?P<query>[^\s#\"'<>]*X-Amz-Signature=[^\s#\"'<>]*)",
    re.IGNORECASE,
)
SIGNED_QUERY = "(signed)"
"""What a presigned URL's query is compared as: the one part AWS changes at every delivery."""


def without_presigned_queries(value: Any) -> Any:
    """`value` (any JSON) with the query of every presigned URL in its strings replaced by
    `SIGNED_QUERY`: two deliveries of one job document are equal in this form."""
    if isinstance(value, str):
        if "X-Amz-Signature=" not in value and "x-amz-signature=" not in value.lower():
            return value
        return _PRESIGNED_QUERY.sub(lambda m: f"{m.group('base')}?{SIGNED_QUERY}", value)
    if isinstance(value, Mapping):
        return {key: without_presigned_queries(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_presigned_queries(item) for item in value]
    return value


REFRESH_ATTEMPTS = 4
"""Questions a refresh asks before it gives up: an answer lost with a link that came back
(a timeout) fails the job only if three more go unanswered too, about a minute with the default
request timeout and the backoff between them (1-15 s)."""


def has_presigned_urls(document: Mapping[str, Any]) -> bool:
    """Does the document carry a URL whose query AWS signs at delivery?"""
    return bool(without_presigned_queries(document) != document)


class DocumentRefresher:
    """Asks the service for an execution's document again (see the module docstring)."""

    def __init__(self, shared: Shared, client: JobsClient) -> None:
        self._shared = shared
        self._client = client

    async def refresh(self, record: ExecutionRecord) -> dict[str, Any]:
        """The execution's document as the service delivers it now; `JobFailed` with the
        reason when it cannot be had, is not the same job, or does not pass the checks."""
        ref = record.key
        bound = log.bind(job_id=ref.job_id, execution_number=ref.execution_number)
        try:
            execution = await self._describe(ref)
        except JobsRejected as exc:
            if exc.code in CLOUD_ENDED_CODES or exc.code == ErrorCode.RESOURCE_NOT_FOUND:
                raise JobFailed(
                    f"cannot fetch the job document again for fresh URLs: the service answered"
                    f" {exc.code}"
                ) from None
            raise JobFailed(
                f"cannot fetch the job document again for fresh URLs: {exc.code}: {exc.message}"
            ) from None
        except JobsError as exc:
            raise JobFailed(f"cannot fetch the job document again for fresh URLs: {exc}") from None
        if execution is None or execution.job_document is None:
            raise JobFailed("the service sent no job document when asked again for fresh URLs")
        if execution.status in TERMINAL_STATUSES:
            raise JobFailed(f"the execution is {execution.status} on the service")
        document = dict(execution.job_document)
        if without_presigned_queries(document) != without_presigned_queries(record.document):
            bound.error("the re-fetched job document differs from the one the execution started")
            raise JobFailed(
                "the job document changed while it ran: the copy fetched again for fresh URLs"
                " differs beyond its presigned URLs; not used"
            )
        try:
            self._shared.dispatcher.resolve(
                document, job_id=ref.job_id, taken_at=record.received_at
            )
        except JobRejected as exc:
            bound.error("the re-fetched job document was refused", reason=exc.reason)
            raise JobFailed(f"the job document fetched again was refused: {exc.reason}") from None
        bound.info("job document fetched again for fresh presigned URLs")
        return document

    async def _describe(self, ref: ExecutionRef) -> JobExecution | None:
        """DescribeJobExecution with the document, asked again when the question goes
        unanswered (timed out, or the link down): one lost answer must not fail a step that
        only needs its URLs signed again."""
        backoff = Backoff(1.0, 15.0)
        for _ in range(REFRESH_ATTEMPTS - 1):
            try:
                return await self._client.describe(ref, include_job_document=True)
            except (RequestTimeout, LinkError):
                if self._shared.stop_now.is_set():
                    raise  # the agent stops now (its step is abandoned): nothing asks again
                await asyncio.sleep(backoff.next_delay())
        return await self._client.describe(ref, include_job_document=True)
