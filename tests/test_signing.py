"""Signed job documents: verified before anything runs; unsigned or tampered -> REJECTED."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.signing import SIGNATURE_FIELD, sign_document
from jobs_agent_handlers.api import JobRejected

PRESIGNED = "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/my-bucket/fw/app.bin}"


def write_keys(tmp_path: Path, private: Any, name: str) -> Path:
    pub = tmp_path / f"{name}.pub.pem"
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pub


def document() -> dict[str, Any]:
    return {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "Download-File",
                    "type": "runHandler",
                    "input": {"handler": "download-file.sh", "args": [PRESIGNED, "/tmp/app.bin"]},
                }
            }
        ],
        "sha256": "ab" * 32,
    }


@pytest.fixture(params=["ed25519", "p256"])
def signer(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Dispatcher]:
    private: Any = (
        ed25519.Ed25519PrivateKey.generate()
        if request.param == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    handler_dir = tmp_path / "h"
    handler_dir.mkdir(mode=0o755)
    handler_dir.chmod(0o755)
    config = AgentConfig(
        thing_name="gw",
        jobs=JobsConfig(
            handler_dir=handler_dir,
            require_signature=True,
            trusted_keys=(write_keys(tmp_path, private, "trusted"),),
        ),
    )
    return private, Dispatcher(config)


def test_signed_document_verifies_after_aws_presigns_the_url(signer: Any) -> None:
    private, dispatcher = signer
    signed = sign_document(document(), private)
    assert dispatcher.resolve(signed).name == "device-client"
    delivered = copy.deepcopy(signed)
    delivered["steps"][0]["action"]["input"]["args"][0] = (
        "https://my-bucket.s3.eu-west-1.amazonaws.com/fw/app.bin?X-Amz-Signature=abc&X-Amz-Date=1"
    )
    assert dispatcher.resolve(delivered).name == "device-client"


def test_tampered_document_is_rejected(signer: Any) -> None:
    private, dispatcher = signer
    signed = sign_document(document(), private)
    for change in ("sha256", "args", "url"):
        tampered = copy.deepcopy(signed)
        if change == "sha256":
            tampered["sha256"] = "cd" * 32
            expected = "signature does not verify with any trusted key"
        elif change == "args":
            tampered["steps"][0]["action"]["input"]["args"][1] = "/etc/passwd"
            expected = "signature does not verify with any trusted key"
        else:
            tampered["steps"][0]["action"]["input"]["args"][0] = "https://evil.example/app.bin"
            expected = "is not the signed S3 object my-bucket/fw/app.bin"
        with pytest.raises(JobRejected) as info:
            dispatcher.resolve(tampered)
        assert expected in info.value.reason, change


def test_unsigned_and_foreign_signed_documents_are_rejected(signer: Any) -> None:
    _, dispatcher = signer
    with pytest.raises(JobRejected) as info:
        dispatcher.resolve(document())
    assert info.value.reason == (
        f"the document is not signed (no {SIGNATURE_FIELD} field) and"
        " jobs.require_signature is true"
    )
    foreign = sign_document(document(), ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(JobRejected, match="does not verify with any trusted key"):
        dispatcher.resolve(foreign)
