"""Signed job documents: who created a job, and for which devices and how long, checked on the
device before anything runs.

Anyone who can call CreateJob for this thing (a leaked role, a mistaken policy) can make the
device run commands. With `jobs.require_signature` the agent runs only documents signed by a key
in `jobs.trusted_keys` (Ed25519 or ECDSA P-256, PEM public keys).

What is signed: the canonical JSON (sorted keys, no whitespace, UTF-8) of the whole document as
created, its `jobsAgentSignature` block included except the block's `value` (the signature
itself). So the block's `presigned` list and `claims` are covered too:

* AWS rewrites one kind of value at delivery: a `${aws:iot:s3-presigned-url:URL}` placeholder
  becomes a presigned HTTPS URL, new at every delivery (anywhere in the document's text, so the
  block records each one as `{pointer, url, v2?}`, not as a placeholder AWS would rewrite too).
  The device accepts at that place the placeholder itself or a presigned URL on a real AWS S3
  endpoint for exactly that bucket and key (`agent.dispatch.s3url`), then puts the placeholder
  back before verifying. The URL's query
  (the credentials) is not covered: artifact integrity rests on a signed `sha256` that the
  download handler checks. A place not listed, or listed with another object, fails.
* `claims` bind the signature: `thingNames` (this thing must be one of them), `thingNamePattern`
  (a shell-style pattern, e.g. `gw-*`), `jobId` (the execution's job id), `notAfter` (an ISO
  8601 UTC time: the execution must have been received by then). A claim this agent does not
  know is refused, never ignored. `jobs-agent sign` sets them.
"""

from __future__ import annotations

import base64
import copy
import datetime
import fnmatch
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from jobs_agent.datamodel import model
from jobs_agent.dispatch.s3url import (
    PLACEHOLDER,
    make_placeholder,
    placeholder_object,
    presigned_object,
)
from jobs_agent_handlers.api import JobRejected

SIGNATURE_FIELD = "jobsAgentSignature"
CLAIMS = ("thingNames", "thingNamePattern", "jobId", "notAfter")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class SigningKeyError(ValueError):
    """A key file that is not a usable Ed25519 or P-256 key."""


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(public_key: PublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _algorithm(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256-sha256"
    raise SigningKeyError(f"unsupported elliptic curve {key.curve.name}: use Ed25519 or P-256")


def load_public_key(path: Path) -> PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningKeyError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise SigningKeyError(
            f"{path}: {type(key).__name__} is not supported: use Ed25519 or P-256"
        )
    _algorithm(key)
    return key


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningKeyError(
            f"{path}: {type(key).__name__} is not supported: use Ed25519 or P-256"
        )
    _algorithm(key)
    return key


# -- JSON pointers (RFC 6901) -----------------------------------------------------------------


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise ValueError(pointer)
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _walk_strings(value: Any, pointer: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(pointer, value)]
    found: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found.extend(_walk_strings(item, f"{pointer}/{_escape(str(key))}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_walk_strings(item, f"{pointer}/{index}"))
    return found


def _get(document: Any, pointer: str) -> Any:
    node = document
    for token in _tokens(pointer):
        if isinstance(node, Mapping):
            node = node[token]
        elif isinstance(node, list):
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


def _set(document: Any, pointer: str, value: Any) -> None:
    tokens = _tokens(pointer)
    node = (
        _get(document, "/" + "/".join(_escape(t) for t in tokens[:-1]))
        if len(tokens) > 1
        else document
    )
    if isinstance(node, list):
        node[int(tokens[-1])] = value
    else:
        node[tokens[-1]] = value


# -- claims ------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 time with a zone (`2026-12-31T23:59:59Z`); ValueError otherwise."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    return moment


def check_claims(claims: Any) -> dict[str, Any]:
    """Validate a `claims` object (signer and device alike); ValueError with the reason."""
    if not isinstance(claims, Mapping):
        raise ValueError("claims: expected an object")
    unknown = sorted(set(claims) - set(CLAIMS))
    if unknown:
        raise ValueError(f"claims: {', '.join(unknown)} not known to this agent")
    things = claims.get("thingNames")
    if things is not None and (
        not isinstance(things, list)
        or not things
        or not all(isinstance(t, str) and t for t in things)
    ):
        raise ValueError("claims.thingNames: expected a non-empty list of thing names")
    for name in ("thingNamePattern", "jobId", "notAfter"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"claims.{name}: expected a non-empty string")
    if claims.get("notAfter") is not None:
        parse_time(claims["notAfter"])
    return dict(claims)


def _enforce_claims(
    claims: Mapping[str, Any], thing_name: str, job_id: str | None, taken_at: float
) -> None:
    things = claims.get("thingNames")
    if things is not None and thing_name not in things:
        raise JobRejected(
            f"the signature is for the things {', '.join(things)}, not for {thing_name}"
        )
    pattern = claims.get("thingNamePattern")
    if pattern is not None and not fnmatch.fnmatchcase(thing_name, pattern):
        raise JobRejected(f"the signature is for things matching {pattern!r}, not {thing_name}")
    wanted_job = claims.get("jobId")
    if wanted_job is not None and wanted_job != job_id:
        raise JobRejected(
            f"the signature is for the job {wanted_job}, not "
            + (f"the job {job_id}" if job_id else "a run without a job id")
        )
    not_after = claims.get("notAfter")
    if not_after is not None and taken_at > parse_time(not_after).timestamp():
        raise JobRejected(f"the signature expired at {not_after}")


# -- signing and verifying ----------------------------------------------------------------------


def placeholders(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The presigned-URL placeholders of a document as created: `[{pointer, url, v2?}]`.

    Raises ValueError for a placeholder the device could not check: one inside a longer string
    (AWS would rewrite the string), or one that does not name an object on an AWS S3 endpoint.
    """
    found = []
    for pointer, value in _walk_strings(document):
        if "${aws:iot:s3-presigned-url" not in value:
            continue
        if not PLACEHOLDER.match(value):
            raise ValueError(
                f"{pointer}: a presigned-URL placeholder must be the whole string value"
            )
        if placeholder_object(value) is None:
            raise ValueError(
                f"{pointer}: {value} does not name an object on an AWS S3 endpoint"
                " (https://BUCKET.s3.REGION.amazonaws.com/KEY or"
                " https://s3.REGION.amazonaws.com/BUCKET/KEY)"
            )
        match = PLACEHOLDER.match(value)
        assert match is not None
        entry: dict[str, Any] = {"pointer": pointer, "url": match.group("url")}
        if match.group("v2"):
            entry["v2"] = True
        found.append(entry)
    return found


def signed_payload(document: Mapping[str, Any]) -> bytes:
    """What the signature covers: the document with its signature block minus `value`."""
    body = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    block = document.get(SIGNATURE_FIELD)
    if isinstance(block, Mapping):
        body[SIGNATURE_FIELD] = {k: v for k, v in block.items() if k != "value"}
    return canonical_json(body)


def sign_document(
    document: Mapping[str, Any], private_key: PrivateKey, claims: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return a copy of `document` with a `jobsAgentSignature` field (ValueError when the
    document cannot be signed so that the device can check it)."""
    body = {k: copy.deepcopy(v) for k, v in document.items() if k != SIGNATURE_FIELD}
    block: dict[str, Any] = {
        "alg": _algorithm(private_key),
        "keyId": key_id(private_key.public_key()),
    }
    presigned = placeholders(body)
    if presigned:
        block["presigned"] = presigned
    if claims:
        block["claims"] = check_claims(claims)
    payload = signed_payload({**body, SIGNATURE_FIELD: block})
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(payload)
    else:
        signature = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    block["value"] = base64.b64encode(signature).decode("ascii")
    return {**body, SIGNATURE_FIELD: block}


@model
class SignatureVerifier:
    keys: tuple[PublicKey, ...]

    @classmethod
    def from_paths(cls, paths: Sequence[Path]) -> SignatureVerifier:
        return cls(tuple(load_public_key(path) for path in paths))

    def verify(
        self,
        document: Mapping[str, Any],
        *,
        thing_name: str,
        job_id: str | None = None,
        taken_at: float | None = None,
    ) -> str:
        """Return the id of the key that signed `document`; raise `JobRejected` otherwise.

        `taken_at` is when the device received the execution (a `notAfter` claim is held
        against it, so a job taken in time is not refused when it resumes after a reboot).
        """
        block = document.get(SIGNATURE_FIELD)
        if block is None:
            raise JobRejected(
                f"the document is not signed (no {SIGNATURE_FIELD} field) and"
                " jobs.require_signature is true"
            )
        if not isinstance(block, Mapping) or not isinstance(block.get("value"), str):
            raise JobRejected(f"{SIGNATURE_FIELD}: expected {{alg, keyId, value}}")
        try:
            signature = base64.b64decode(block["value"], validate=True)
        except ValueError:
            raise JobRejected(f"{SIGNATURE_FIELD}.value: not base64") from None
        created = self._as_created(document, block.get("presigned", []))
        try:
            payload = signed_payload(created)
        except (ValueError, TypeError):
            raise JobRejected("the document cannot be put in canonical form") from None
        signer = self._signer(block, signature, payload)
        try:
            claims = check_claims(block.get("claims", {}))
        except ValueError as exc:
            raise JobRejected(f"{SIGNATURE_FIELD}.{exc}") from None
        _enforce_claims(claims, thing_name, job_id, time.time() if taken_at is None else taken_at)
        return signer

    def _signer(self, block: Mapping[str, Any], signature: bytes, payload: bytes) -> str:
        wanted = block.get("keyId")
        candidates = [k for k in self.keys if key_id(k) == wanted] or list(self.keys)
        for key in candidates:
            if _algorithm(key) != block.get("alg"):
                continue
            try:
                if isinstance(key, ed25519.Ed25519PublicKey):
                    key.verify(signature, payload)
                else:
                    key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return key_id(key)
        raise JobRejected(
            "the document's signature does not verify with any trusted key"
            " (modified after signing, or signed by an unknown key)"
        )

    @staticmethod
    def _as_created(document: Mapping[str, Any], entries: Any) -> dict[str, Any]:
        """The document with each delivered presigned URL put back to its placeholder, after
        checking that the URL is a presigned URL of exactly the object the placeholder names."""
        if not isinstance(entries, list):
            raise JobRejected(f"{SIGNATURE_FIELD}.presigned: expected a list")
        created = copy.deepcopy(dict(document))
        for entry in entries:
            if (
                not isinstance(entry, Mapping)
                or not isinstance(entry.get("pointer"), str)
                or not isinstance(entry.get("url"), str)
                or not isinstance(entry.get("v2", False), bool)
            ):
                raise JobRejected(
                    f"{SIGNATURE_FIELD}.presigned: expected {{pointer, url, v2?}} entries"
                    " (re-sign documents signed by an older jobs-agent)"
                )
            pointer = entry["pointer"]
            placeholder = make_placeholder(entry["url"], v2=entry.get("v2", False))
            wanted = placeholder_object(placeholder)
            if wanted is None:
                raise JobRejected(
                    f"{SIGNATURE_FIELD}.presigned: {pointer} is not a presigned-URL placeholder"
                    " of an S3 object"
                )
            try:
                value = _get(created, pointer)
            except (KeyError, IndexError, ValueError, TypeError):
                raise JobRejected(f"signed presigned URL at {pointer} is missing") from None
            if value != placeholder and (
                not isinstance(value, str) or presigned_object(value) != wanted
            ):
                raise JobRejected(
                    f"the URL at {pointer} is not a presigned URL of the signed S3 object"
                    f" {wanted} on an AWS S3 endpoint"
                )
            _set(created, pointer, placeholder)
        return created
