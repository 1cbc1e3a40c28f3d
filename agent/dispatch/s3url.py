"""S3 object URLs and AWS IoT's presigned-URL placeholders: what is real, and what it adds.

AWS IoT replaces a `${aws:iot:s3-presigned-url:URL}` (or `...-url-v2:URL`) placeholder in a job
document with a URL to the same S3 object, signed at each delivery. Two decisions rest on
recognising such URLs strictly: whether a delivered URL is the object a signed document named
(`agent.dispatch.signing`), and how much larger than 32 KiB a delivered document may be
(`agent.dispatch.router.check_limits`). A URL counts only if it is `https`, has no user info and
no port but 443, and its host is an AWS S3 endpoint: `BUCKET.s3[.-REGION].amazonaws.com[.cn]`
(virtual-hosted, dualstack too) or `s3[.-REGION].amazonaws.com[.cn]/BUCKET/...` (path style).
A look-alike host (`bucket.s3.attacker.example`, `s3.attacker.example/bucket`) is not S3.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from jobs_agent.datamodel import model

PLACEHOLDER = re.compile(r"^\$\{aws:iot:s3-presigned-url(?P<v2>-v2)?:(?P<url>[^}]+)\}$")
PLACEHOLDER_PREFIX_MIN = len("${aws:iot:s3-presigned-url:")

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_SUFFIX = r"amazonaws\.com(?:\.cn)?"
_ENDPOINT = rf"s3(?:[.-](?:dualstack\.)?{_REGION})?\.{_SUFFIX}"


@functools.cache
def _host_patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """A virtual-hosted endpoint, a path-style one, a bucket's name: compiled by the first URL
    that needs them, not by an agent's first job whatever its document (3.4 M instructions of
    start-up and a first script job: issue 18)."""
    return (
        re.compile(rf"^(?P<bucket>[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9])\.{_ENDPOINT}$"),
        re.compile(rf"^{_ENDPOINT}$"),
        re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    )


MAX_EXPANSION = 4096
"""The most one placeholder can grow at delivery: the SigV4 query (algorithm, credential, date,
expiry, signed headers, a 64-digit signature and the session token of the role AWS IoT assumes,
about 1.5 KB URL-encoded) plus a host rewritten with its region, with room to spare."""
_HOST_SLACK = 64
SIGNATURE_MARK = "X-Amz-Signature="
"""In every presigned URL's query; a string without it is no presigned URL (a cheap first look)."""
_SIGV4_PARAMETERS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
        "x-id",
    }
)


@model(slots=True)
class S3Object:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Object | None:
    """The bucket and key of an https URL on an AWS S3 endpoint; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "https" or parts.username is not None or port not in (None, 443):
        return None
    if parts.fragment:
        return None
    host = (parts.hostname or "").lower()
    path = parts.path
    virtual_hosted, path_style, bucket_name = _host_patterns()
    virtual = virtual_hosted.match(host)
    if virtual is not None:
        bucket, key = virtual.group("bucket"), path[1:]
    elif path_style.match(host):
        bucket, _, key = path[1:].partition("/")
    else:
        return None
    key = unquote(key)
    if not bucket_name.match(bucket) or not key:
        return None
    return S3Object(bucket, key)


def placeholder_object(text: str) -> S3Object | None:
    """The S3 object a `${aws:iot:s3-presigned-url:URL}` placeholder names, if it is one."""
    match = PLACEHOLDER.match(text)
    return parse_s3_url(match.group("url")) if match else None


def make_placeholder(url: str, *, v2: bool = False) -> str:
    """The placeholder text for `url` (the inverse of `PLACEHOLDER`)."""
    return "${aws:iot:s3-presigned-url" + ("-v2" if v2 else "") + ":" + url + "}"


def presigned_object(url: str) -> S3Object | None:
    """The object of a delivered presigned S3 URL: an S3 URL whose query is a SigV4
    signature (only SigV4 query parameters, `X-Amz-Signature` among them)."""
    obj = parse_s3_url(url)
    if obj is None:
        return None
    query = urlsplit(url).query
    try:
        names = {name for name, _ in parse_qsl(query, keep_blank_values=True, strict_parsing=True)}
    except ValueError:
        return None
    if "X-Amz-Signature" not in names or not names <= _SIGV4_PARAMETERS:
        return None
    return obj


def expansion(value: str) -> int:
    """How many bytes AWS's substitution can have added to make `value`: 0 unless it is a
    presigned S3 URL; else its length beyond the shortest placeholder it can have come from,
    plus a little for a host rewritten with its region, and never more than `MAX_EXPANSION`."""
    if SIGNATURE_MARK not in value or presigned_object(value) is None:
        return 0
    base = value.partition("?")[0]
    shortest_placeholder = PLACEHOLDER_PREFIX_MIN + len(base) + 1
    grown = len(value.encode()) - shortest_placeholder + _HOST_SLACK
    return max(0, min(grown, MAX_EXPANSION))
