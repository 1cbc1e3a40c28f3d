"""Signed job documents: who created a job, checked on the device before anything runs.

Anyone who can call CreateJob for this thing (a leaked role, a mistaken policy) can make the
device run commands. With `jobs.require_signature` the agent runs only documents signed by a key
in `jobs.trusted_keys` (Ed25519 or ECDSA P-256, PEM public keys).

What is signed: the canonical JSON (sorted keys, no whitespace, UTF-8) of the document as
created, without the `jobsAgentSignature` field itself. AWS rewrites one kind of value at
delivery: a `${aws:iot:s3-presigned-url:URL}` placeholder becomes a fresh presigned HTTPS URL
every time the document is delivered. The signer lists these places (JSON pointers) in the
signature, and the canonical form has a fixed token there; on the device the delivered value
must be an HTTPS URL to the same S3 bucket and key (or still the placeholder). The URL's query
(the credentials) is therefore not covered: artifact integrity rests on a signed `sha256` field
that the download handler checks.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from jobs_agent_handlers.api import JobRejected

SIGNATURE_FIELD = "jobsAgentSignature"
PRESIGNED_TOKEN = "${aws:iot:s3-presigned-url}"  # noqa: S105 - a placeholder, not a secret
_PRESIGNED = re.compile(r"^\$\{aws:iot:s3-presigned-url:(?P<url>[^}]+)\}$")

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


def _s3_object(url: str) -> tuple[str, str]:
    """(bucket, key) of an S3 URL in virtual-hosted or path style; ("", path) if unknown."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = parts.path.lstrip("/")
    match = re.match(r"^(?P<bucket>.+)\.s3[.-]", host)
    if match:
        return match.group("bucket"), path
    if host.startswith("s3.") or host.startswith("s3-") or host == "s3.amazonaws.com":
        bucket, _, key = path.partition("/")
        return bucket, key
    return "", path


# -- signing and verifying ----------------------------------------------------------------------


def signed_payload(document: Mapping[str, Any], presigned: Sequence[str]) -> bytes:
    body = {k: copy.deepcopy(v) for k, v in document.items() if k != SIGNATURE_FIELD}
    for pointer in presigned:
        _set(body, pointer, PRESIGNED_TOKEN)
    return canonical_json(body)


def sign_document(document: Mapping[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """Return a copy of `document` with a `jobsAgentSignature` field."""
    body = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    presigned = [
        {"pointer": pointer, "object": "/".join(_s3_object(match.group("url")))}
        for pointer, value in _walk_strings(body)
        if (match := _PRESIGNED.match(value))
    ]
    payload = signed_payload(body, [p["pointer"] for p in presigned])
    public = private_key.public_key()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(payload)
    else:
        signature = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    block: dict[str, Any] = {
        "alg": _algorithm(private_key),
        "keyId": key_id(public),
        "value": base64.b64encode(signature).decode("ascii"),
    }
    if presigned:
        block["presigned"] = presigned
    return {**body, SIGNATURE_FIELD: block}


@dataclass(frozen=True)
class SignatureVerifier:
    keys: tuple[PublicKey, ...]

    @classmethod
    def from_paths(cls, paths: Sequence[Path]) -> SignatureVerifier:
        return cls(tuple(load_public_key(path) for path in paths))

    def verify(self, document: Mapping[str, Any]) -> str:
        """Return the id of the key that signed `document`; raise `JobRejected` otherwise."""
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
        pointers = self._check_presigned(document, block.get("presigned", []))
        try:
            payload = signed_payload(document, pointers)
        except (ValueError, TypeError):
            raise JobRejected("the document cannot be put in canonical form") from None
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
    def _check_presigned(document: Mapping[str, Any], entries: Any) -> list[str]:
        if not isinstance(entries, list):
            raise JobRejected(f"{SIGNATURE_FIELD}.presigned: expected a list")
        pointers: list[str] = []
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("pointer"), str):
                raise JobRejected(f"{SIGNATURE_FIELD}.presigned: expected {{pointer, object}}")
            pointer = entry["pointer"]
            try:
                value = _get(document, pointer)
            except (KeyError, IndexError, ValueError):
                raise JobRejected(f"signed presigned URL at {pointer} is missing") from None
            if not isinstance(value, str):
                raise JobRejected(f"signed presigned URL at {pointer} is not a string")
            if not _PRESIGNED.match(value):
                bucket_key = "/".join(_s3_object(value))
                if not value.startswith("https://") or bucket_key != entry.get("object"):
                    raise JobRejected(
                        f"the URL at {pointer} is not the signed S3 object {entry.get('object')}"
                    )
            pointers.append(pointer)
        return pointers
