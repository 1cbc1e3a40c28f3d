"""Signed job documents: verified before anything runs; unsigned, tampered, redirected to
another S3 object, or replayed to another thing, job or time -> REJECTED."""

from __future__ import annotations

import base64
import copy
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.signing import SIGNATURE_FIELD, sign_document, signed_payload
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
            expected = (
                "is not a presigned URL of the signed S3 object my-bucket/fw/app.bin on an AWS"
                " S3 endpoint"
            )
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


SIGNED_QUERY = (
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIA%2F20261201%2Feu-west-1%2Fs3"
    "%2Faws4_request&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600"
    "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "ab" * 32
)


def deliver(signed: dict[str, Any], url: str) -> dict[str, Any]:
    delivered = copy.deepcopy(signed)
    delivered["steps"][0]["action"]["input"]["args"][0] = url
    return delivered


@pytest.mark.parametrize(
    "url",
    [
        "https://my-bucket.s3.amazonaws.com/fw/app.bin",
        "https://my-bucket.s3.eu-west-1.amazonaws.com/fw/app.bin",
        "https://s3.eu-west-1.amazonaws.com/my-bucket/fw/app.bin",
        "https://my-bucket.s3.dualstack.eu-west-1.amazonaws.com/fw/app.bin",
    ],
)
def test_the_delivered_url_may_be_any_aws_s3_endpoint_of_the_object(signer: Any, url: str) -> None:
    private, dispatcher = signer
    signed = sign_document(document(), private)
    assert dispatcher.resolve(deliver(signed, url + SIGNED_QUERY)).name == "device-client"


@pytest.mark.parametrize(
    "url",
    [
        "https://my-bucket.s3.attacker.example/fw/app.bin",  # look-alike host
        "https://s3.attacker.example/my-bucket/fw/app.bin",  # look-alike path style
        "https://my-bucket.s3.amazonaws.com.attacker.example/fw/app.bin",
        "https://my-bucket.s3.amazonaws.com:8443/fw/app.bin",  # another port
        "https://user@my-bucket.s3.amazonaws.com/fw/app.bin",
        "http://my-bucket.s3.amazonaws.com/fw/app.bin",
        "https://other-bucket.s3.amazonaws.com/fw/app.bin",  # another bucket
        "https://my-bucket.s3.amazonaws.com/fw/evil.bin",  # another key
    ],
)
def test_a_url_to_anything_but_the_signed_object_is_rejected(signer: Any, url: str) -> None:
    private, dispatcher = signer
    signed = sign_document(document(), private)
    with pytest.raises(JobRejected) as info:
        dispatcher.resolve(deliver(signed, url + SIGNED_QUERY))
    assert info.value.reason == (
        "the URL at /steps/0/action/input/args/0 is not a presigned URL of the signed S3"
        " object my-bucket/fw/app.bin on an AWS S3 endpoint"
    )


def test_the_presigned_list_is_covered_by_the_signature(signer: Any) -> None:
    """Re-pointing a signed placeholder at one's own bucket breaks the signature."""
    private, dispatcher = signer
    signed = sign_document(document(), private)
    entry = signed[SIGNATURE_FIELD]["presigned"][0]
    assert entry == {
        "pointer": "/steps/0/action/input/args/0",
        "url": "https://s3.amazonaws.com/my-bucket/fw/app.bin",
    }
    entry["url"] = entry["url"].replace("my-bucket", "attacker-bucket")
    swapped = deliver(signed, "https://attacker-bucket.s3.amazonaws.com/fw/app.bin" + SIGNED_QUERY)
    with pytest.raises(JobRejected, match="does not verify with any trusted key"):
        dispatcher.resolve(swapped)
    # Nor can a place be added to the list: its value as created was not a placeholder.
    signed = sign_document(document(), private)
    signed[SIGNATURE_FIELD]["presigned"].append(
        {
            "pointer": "/steps/0/action/input/args/1",
            "url": "https://s3.amazonaws.com/my-bucket/fw/app.bin",
        }
    )
    url = "https://my-bucket.s3.amazonaws.com/fw/app.bin" + SIGNED_QUERY
    signed["steps"][0]["action"]["input"]["args"][1] = url
    with pytest.raises(JobRejected, match="does not verify with any trusted key"):
        dispatcher.resolve(signed)


def _dispatcher(private: Any, tmp_path: Path, thing: str) -> Dispatcher:
    handler_dir = tmp_path / "h"
    handler_dir.mkdir(mode=0o755, exist_ok=True)
    handler_dir.chmod(0o755)
    config = AgentConfig(
        thing_name=thing,
        jobs=JobsConfig(
            handler_dir=handler_dir,
            require_signature=True,
            trusted_keys=(write_keys(tmp_path, private, "trusted"),),
        ),
    )
    return Dispatcher(config)


def test_claims_bind_the_signature_to_things_a_job_and_a_time(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    gw1, gw2 = _dispatcher(private, tmp_path, "gw-1"), _dispatcher(private, tmp_path, "lab-2")

    def reason(d: Dispatcher, doc: dict[str, Any], **kw: Any) -> str:
        with pytest.raises(JobRejected) as info:
            d.resolve(doc, **kw)
        return info.value.reason

    for_things = sign_document(document(), private, {"thingNames": ["gw-1", "gw-7"]})
    assert gw1.resolve(for_things)
    assert reason(gw2, for_things) == "the signature is for the things gw-1, gw-7, not for lab-2"

    for_pattern = sign_document(document(), private, {"thingNamePattern": "gw-*"})
    assert gw1.resolve(for_pattern)
    assert reason(gw2, for_pattern) == "the signature is for things matching 'gw-*', not lab-2"

    for_job = sign_document(document(), private, {"jobId": "fw-1"})
    assert gw1.resolve(for_job, job_id="fw-1")
    assert (
        reason(gw1, for_job, job_id="fw-2") == "the signature is for the job fw-1, not the job fw-2"
    )

    until = sign_document(document(), private, {"notAfter": "2026-01-01T00:00:00Z"})
    before = datetime.datetime(2025, 12, 31, tzinfo=datetime.UTC).timestamp()
    assert gw1.resolve(until, taken_at=before)  # taken in time: still runs after a reboot
    assert reason(gw1, until) == "the signature expired at 2026-01-01T00:00:00Z"

    stripped = copy.deepcopy(for_things)
    del stripped[SIGNATURE_FIELD]["claims"]  # claims are signed: removing them breaks it
    assert "does not verify with any trusted key" in reason(gw2, stripped)


def test_an_unknown_claim_is_refused_not_ignored(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="claims: region not known to this agent"):
        sign_document(document(), private, {"region": "eu"})
    signed = sign_document(document(), private)
    signed[SIGNATURE_FIELD]["claims"] = {"region": "eu"}
    block = {k: v for k, v in signed[SIGNATURE_FIELD].items() if k != "value"}
    payload = signed_payload({**signed, SIGNATURE_FIELD: block})
    signed[SIGNATURE_FIELD]["value"] = base64.b64encode(private.sign(payload)).decode()
    with pytest.raises(JobRejected) as info:
        _dispatcher(private, tmp_path, "gw-1").resolve(signed)
    assert info.value.reason == "jobsAgentSignature.claims: region not known to this agent"


def test_the_sign_command_sets_the_claims(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    key = tmp_path / "key.pem"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(document()))
    result = subprocess.run(
        [sys.executable, "-m", "jobs_agent", "sign", "--key", str(key), str(source),
         "--thing", "gw-1", "--job-id", "fw-1", "--not-after", "7d"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    signed = json.loads(result.stdout)
    claims = signed[SIGNATURE_FIELD]["claims"]
    assert claims["thingNames"] == ["gw-1"] and claims["jobId"] == "fw-1"
    not_after = datetime.datetime.fromisoformat(claims["notAfter"].replace("Z", "+00:00"))
    assert datetime.timedelta(days=6) < not_after - datetime.datetime.now(datetime.UTC)
    gw1 = _dispatcher(private, tmp_path, "gw-1")
    assert gw1.resolve(signed, job_id="fw-1")
    (tmp_path / "other").mkdir()
    with pytest.raises(JobRejected, match="not for gw-2"):
        _dispatcher(private, tmp_path / "other", "gw-2").resolve(signed, job_id="fw-1")


async def test_the_agent_holds_claims_against_the_execution_it_runs(tmp_path: Path) -> None:
    """End to end: the emulator presigns the placeholder at delivery (a fresh URL each time);
    the agent checks the URL, the signature and the job id it was delivered as."""
    from tests.helpers.agent_harness import make_config, make_handler_dir, running_agent

    private = ed25519.Ed25519PrivateKey.generate()
    make_handler_dir(tmp_path)
    config = make_config(
        tmp_path,
        require_signature=True,
        trusted_keys=(write_keys(tmp_path, private, "trusted"),),
    )
    placeholder = "${aws:iot:s3-presigned-url:https://fw-bucket.s3.amazonaws.com/app.bin}"
    created = {"operation": "ok.sh", "args": [placeholder]}
    signed = sign_document(created, private, {"jobId": "fw-1", "thingNames": [config.thing_name]})
    async with running_agent(tmp_path, config) as harness:
        ran = await harness.run_job("fw-1", signed)
        replayed = await harness.run_job("fw-2", signed)
    assert str(ran.status) == "SUCCEEDED", ran.status_details
    assert str(replayed.status) == "REJECTED"
    assert (
        replayed.status_details["reason"] == "the signature is for the job fw-1, not the job fw-2"
    )


@pytest.mark.parametrize("dry_run", [False, True])
def test_exec_holds_the_job_id_claim_against_its_job_id(tmp_path: Path, dry_run: bool) -> None:
    """`jobs-agent exec --job-id` is the operator's rehearsal of a signed job: a document signed
    for that job id runs, the same document under another id is REJECTED (exit 3)."""
    private = ed25519.Ed25519PrivateKey.generate()
    public = write_keys(tmp_path, private, "trusted")
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o755)
    handlers.chmod(0o755)
    script = handlers / "ok.sh"
    script.write_text("#!/bin/sh\necho fine\n")
    script.chmod(0o755)
    signed = sign_document({"operation": "ok.sh"}, private, claims={"jobId": "fw-1"})
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(signed))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"thing_name: gw-1\nconnection:\n  transport: local\n"
        f"jobs:\n  handler_dir: {handlers}\n  require_signature: true\n"
        f"  trusted_keys: [{public}]\n"
    )

    def run(job_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobs_agent", "exec", str(source), "--config", str(config),
             "--job-id", job_id, *(["--dry-run"] if dry_run else [])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    accepted = run("fw-1")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = run("fw-2")
    assert refused.returncode == 3
    assert "not the job fw-2" in refused.stdout
