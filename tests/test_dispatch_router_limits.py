"""Document size limits as the service applies them (before presigned URLs are expanded)."""

from __future__ import annotations

import pytest

from jobs_agent.dispatch.router import MAX_DOCUMENT_BYTES, check_limits
from jobs_agent_handlers.api import JobRejected

SIGNED = (
    "https://bucket.s3.amazonaws.com/fw.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20261121%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261121T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "a" * 64
)


def _document(padding: int, url: str | None = None) -> dict[str, object]:
    document: dict[str, object] = {"operation": "x", "pad": "p" * padding}
    if url is not None:
        document["url"] = url
    return document


def test_a_document_near_32_kib_with_an_expanded_presigned_url_is_accepted() -> None:
    # As created, the placeholder kept it under 32 KiB; delivered, the signed URL is longer.
    check_limits(_document(MAX_DOCUMENT_BYTES - 200, SIGNED))


def test_a_document_over_32_kib_without_presigned_urls_is_rejected() -> None:
    with pytest.raises(JobRejected, match=r"at most 32768 \(32 KiB\)"):
        check_limits(_document(MAX_DOCUMENT_BYTES))


def test_the_allowance_is_bounded_per_url() -> None:
    with pytest.raises(JobRejected, match="plus 2048 for presigned URLs"):
        check_limits(_document(MAX_DOCUMENT_BYTES + 2048, SIGNED))
