"""Fake presigned S3 URLs, re-signed on every delivery of a job document.

AWS replaces `${aws:iot:s3-presigned-url:https://bucket.s3.amazonaws.com/key}` in a job document
with a URL signed when the document is delivered, so two deliveries of the same execution carry
different URLs. Agents that de-duplicate jobs by comparing documents break on this; the emulator
reproduces it (fresh `X-Amz-Signature`, `X-Amz-Date` and `X-Amz-Expires`) so tests catch them.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.parse

PLACEHOLDER_PREFIX = "${aws:iot:s3-presigned-url:"
_PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url:([^}\s\"]+)\}")
DEFAULT_EXPIRES_IN_SEC = 3600


def has_placeholders(text: str) -> bool:
    return PLACEHOLDER_PREFIX in text


def presign(url: str, now: float, expires_in_sec: int) -> str:
    """A URL shaped like an S3 SigV4 query-string signature, with a random signature."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    query = urllib.parse.urlencode(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"ASIAEMULATOR/{amz_date[:8]}/us-east-1/s3/aws4_request",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_in_sec),
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": secrets.token_hex(32),
        },
        safe="/",
    )
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{query}"


def resign_document(text: str, now: float, expires_in_sec: int) -> str:
    """`text` with every placeholder replaced by a freshly signed URL."""
    return _PLACEHOLDER.sub(lambda m: presign(m.group(1), now, expires_in_sec), text)
