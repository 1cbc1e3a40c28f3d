"""Document size limits as the service applies them (before presigned URLs are expanded)."""

from __future__ import annotations

import json
import sys
from typing import Any

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
    with pytest.raises(JobRejected, match=r"plus \d+ for its presigned URLs"):
        check_limits(_document(MAX_DOCUMENT_BYTES + 2048, SIGNED))


def _created_and_delivered(created_size: int) -> tuple[dict[str, object], dict[str, object]]:
    """A document of `created_size` bytes as created (with a placeholder) and as delivered."""
    base, _, query = SIGNED.partition("?")
    placeholder = "${aws:iot:s3-presigned-url:" + base + "}"
    created = _document(0, placeholder)
    padding = created_size - len(json.dumps(created, separators=(",", ":")).encode())
    created = _document(padding, placeholder)
    assert len(json.dumps(created, separators=(",", ":")).encode()) == created_size
    return created, _document(padding, f"{base}?{query}")


def test_the_allowance_is_what_the_presigned_substitution_added() -> None:
    created, delivered = _created_and_delivered(MAX_DOCUMENT_BYTES)
    check_limits(created)
    check_limits(delivered)
    _, too_big = _created_and_delivered(MAX_DOCUMENT_BYTES + 100)
    with pytest.raises(JobRejected, match="for its presigned URLs"):
        check_limits(too_big)


@pytest.mark.parametrize(
    "value",
    [
        "X-Amz-Signature=" + "a" * 64,  # mentions a signature, is no URL
        SIGNED.replace("bucket.s3.amazonaws.com", "bucket.s3.attacker.example"),
        SIGNED.replace("https://bucket.s3.amazonaws.com/", "https://s3.attacker.example/bucket/"),
        SIGNED.replace("https://", "http://"),
        SIGNED + "&padding=" + "p" * 300,  # not a SigV4 query parameter
    ],
)
def test_strings_that_are_not_presigned_s3_urls_earn_no_allowance(value: str) -> None:
    document: dict[str, object] = {"operation": "x", "pad": "p" * (MAX_DOCUMENT_BYTES - 1000)}
    document["many"] = [value] * 20  # used to earn 20 x 2 KiB
    with pytest.raises(JobRejected) as info:
        check_limits(document)
    assert "presigned" not in info.value.reason


def _python_calls(function: Any, *args: Any) -> int:
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(profile)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return calls


def test_the_size_check_makes_no_python_call_per_plain_value() -> None:
    """The nesting and presigned-URL walk looks at a container's values in the container's own
    frame: a string without a signature, a number or a flag costs no call, and a generator per
    container is gone (issue 18). A one-step script document (6 containers, 11 plain values):
    53 Python calls before (a frame per value, a generator step per value, an ABC check per
    number, flag or null), 9 in round 19 (a frame per container, `check_limits` and the
    encoder's two: `encode`, `iterencode`), 8 now (`jsontext`'s one frame around a C encoder
    built once)."""
    document = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "step",
                    "type": "runHandler",
                    "input": {"handler": "ok.sh", "args": ["a", "b=1", "c"], "path": "default"},
                    "runAsUser": None,
                    "ignoreStepFailure": False,
                    "timeout": 60,
                }
            }
        ],
    }
    check_limits(document)  # what a first call sets up (the ABC's caches) is not counted
    assert _python_calls(check_limits, document) == 8


def _wrapped(value: Any, lists: int) -> dict[str, Any]:
    for _ in range(lists):
        value = [value]
    return {"x": value}


@pytest.mark.parametrize("leaf", ["text", 1, None, True, SIGNED])
def test_the_depth_limit_still_counts_a_plain_value_below_the_deepest_container(
    leaf: Any,
) -> None:
    """The object is level 1: a value at level 32 is accepted, one at level 33 is not, whatever
    its type (the walk no longer calls itself for plain values)."""
    check_limits(_wrapped([], 30))  # an empty list at level 32
    check_limits(_wrapped(leaf, 30))  # the value at level 32
    with pytest.raises(JobRejected, match="nested deeper than 32 levels"):
        check_limits(_wrapped(leaf, 31))
