"""Fresh presigned URLs (issue 16 item 4), end to end over a real mosquitto with the emulator.

The emulator signs a document's presigned URLs anew at every delivery (agent/emulator/presign.py)
and its URLs name a real local HTTP server standing in for S3 (tests/helpers/s3_standin.py: AWS
itself cannot run here), which refuses an expired signature with 403 as S3 does. The agent runs
in-process over paho, or as a real `jobs-agent run` process where it must stop and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from jobs_agent.config import AgentConfig
from jobs_agent.dispatch.signing import sign_document
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine.refresh import has_presigned_urls, without_presigned_queries
from jobs_agent.engine.store import Store
from jobs_agent_handlers.api import JobFailed
from jobs_agent_handlers.download_file import url_expired
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    running_agent,
    wait_terminal,
    wait_until,
    write_handler,
)
from tests.helpers.s3_standin import Payload, Plan, StandInServer, s3_standin

THING = "gw-test"
PAYLOAD = Payload(bytes(range(256)) * 2048)  # 512 KiB


@pytest.fixture
def s3() -> Any:
    with s3_standin() as server:
        yield server


def download_document(url: str, target: Path) -> dict[str, Any]:
    return {
        "operation": "download-file",
        "url": "${aws:iot:s3-presigned-url:" + url + "}",
        "path": str(target),
        "sha256": PAYLOAD.sha256,
    }


def ranges(s3: StandInServer) -> list[tuple[int, str | None, int]]:
    """(which signature, Range, status) of every request, signatures numbered from 0."""
    order = s3.signatures()
    return [(order.index(e.signature or ""), e.range, e.status) for e in s3.seen]


@pytest.mark.parametrize("lost", [0, 2], ids=["answered", "answers-lost"])
async def test_a_url_that_expires_mid_transfer_is_fetched_again_and_the_download_resumes(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, s3: StandInServer, lost: int
) -> None:
    """The URL's signature runs out a third of the way through: the next request gets 403, the
    agent asks DescribeJobExecution for the document again, and the download continues from the
    bytes it has (Range) with the new URL, to the right digest. (Before: FAILED, HTTP 403.)
    `answers-lost`: the first two questions get no answer; the agent asks again rather than
    failing the job over a lost reply (before: FAILED, "no answer within 1 s")."""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    cut = len(PAYLOAD.data) // 3
    s3.plans.append(Plan(cut_after=cut))
    target = tmp_path / "app.bin"
    config = agent_config(
        tmp_path,
        mosquitto.port,
        allow_http_downloads=True,
        request_timeout_seconds=1.0 if lost else 5.0,
    )
    async with running_agent(config):
        described = emulator.service.counters["DescribeJobExecution"]
        for _ in range(lost):
            emulator.service.lose_next("DescribeJobExecution")
        emulator.service.create_job("fw-1", [THING], download_document(url, target))
        execution = await wait_terminal(emulator, "fw-1", THING)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert execution.status_details["urlRenewals"] == "1"
    assert target.read_bytes() == PAYLOAD.data
    assert ranges(s3) == [(0, None, 200), (0, f"bytes={cut}-", 403), (1, f"bytes={cut}-", 206)]
    assert emulator.service.counters["DescribeJobExecution"] == described + 1 + lost


async def test_a_fresh_url_refused_again_fails_with_the_reason(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, s3: StandInServer
) -> None:
    """Bounded: a URL refused right after it was fetched again is not fetched a third time."""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    s3.refuse_all = True
    target = tmp_path / "app.bin"
    config = agent_config(tmp_path, mosquitto.port, allow_http_downloads=True)
    async with running_agent(config):
        emulator.service.create_job("fw-2", [THING], download_document(url, target))
        execution = await wait_terminal(emulator, "fw-2", THING)
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"].endswith(
        "HTTP 403 (the presigned URL expired or was refused), with a freshly signed URL"
    )
    assert [e.status for e in s3.seen] == [403, 403]
    assert len(s3.signatures()) == 2
    assert not target.exists()


async def test_a_download_resumed_after_a_restart_renews_its_url_and_keeps_its_bytes(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, s3: StandInServer
) -> None:
    """A real `jobs-agent run`: stopped a third of the way (SIGTERM, the download is
    resumable), started again; the resumed download continues from the bytes on disk and, when
    its URL runs out too, fetches the document again and finishes with the right digest."""
    url = s3.put("/fw/app.bin", PAYLOAD.data)
    third = len(PAYLOAD.data) // 3
    s3.plans += [Plan(cut_after=third, hold=True), Plan(cut_after=third)]
    target = tmp_path / "app.bin"
    config = agent_config(
        tmp_path, mosquitto.port, allow_http_downloads=True, stop_timeout_seconds=0
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_yaml(config))
    agent = AgentProcess(config_path, tmp_path)
    emulator.service.create_job("fw-3", [THING], download_document(url, target))
    agent.start()
    try:
        await agent.wait_ready()
        await asyncio.to_thread(s3.held.wait, 20)
        part = tmp_path / "app.bin.part"
        await wait_until(
            lambda: part.exists() and part.stat().st_size == third, 10, "the first third"
        )
        agent.signal(signal.SIGTERM)  # stop_timeout_seconds 0: the download is suspended
        assert await agent.wait_exit() == 0
        s3.release.set()
        assert str(emulator.service.execution("fw-3", THING).status) == "IN_PROGRESS"
        agent.start()
        execution = await wait_terminal(emulator, "fw-3", THING, timeout=30)
    finally:
        if agent.process is not None and agent.process.poll() is None:
            agent.signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                await agent.wait_exit()
        agent.kill()
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert target.read_bytes() == PAYLOAD.data
    # 0: the first delivery; 1: the delivery to the restarted agent, resumed at a third and
    # expired at two thirds; 2: the document fetched again, resumed at two thirds.
    assert ranges(s3) == [
        (0, None, 200),
        (1, f"bytes={third}-", 206),
        (1, f"bytes={2 * third}-", 403),
        (2, f"bytes={2 * third}-", 206),
    ]
    assert execution.status_details["urlRenewals"] == "1"


async def test_a_run_without_a_delivered_copy_gets_the_services_copy_fetched_again(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    """The runner's `fresh_copy` (what a run resumed without a new delivery uses, e.g. after a
    deferral): the recorded document keeps its URLs without credentials, so the service's copy
    is fetched again; once the execution has ended on the service, that is a FAILED reason."""
    go = tmp_path / "go"
    write_handler(
        tmp_path / "handlers",
        "hold",
        f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.05; done\n",
    )
    placeholder = "${aws:iot:s3-presigned-url:https://fw-bucket.s3.amazonaws.com/app.bin}"
    config = agent_config(tmp_path, mosquitto.port)
    async with running_agent(config) as agent:
        emulator.service.create_job("held", [THING], {"operation": "hold", "args": [placeholder]})
        engine = agent.engine
        assert engine is not None
        await wait_until(lambda: engine.running_job is not None, 15, "the job to run")
        ref = engine.running_job
        record = await engine.store.call(Store.get, ref)
        assert record is not None and "X-Amz-Signature=REDACTED" in record.document["args"][0]
        runner = engine._runner
        fresh = await runner.fresh_copy(record)
        assert "X-Amz-Signature=REDACTED" not in fresh["args"][0]
        assert without_presigned_queries(fresh) == without_presigned_queries(record.document)
        go.write_text("")
        assert str((await wait_terminal(emulator, "held", THING)).status) == "SUCCEEDED"
        with pytest.raises(JobFailed, match="the service answered TerminalStateReached"):
            await runner.fresh_copy(record)


# -- signed documents ----------------------------------------------------------------------------
PROBE = '''
import asyncio
import pathlib


class Probe:
    """Waits for the test's go, then fetches its document again."""

    name = "refresh-probe"
    resumable = False

    async def run(self, ctx):
        marks = pathlib.Path(ctx.document["marks"])
        (marks / "started").write_text("")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (marks / "go").exists():
            if loop.time() > deadline:
                raise RuntimeError("no go from the test")
            await asyncio.sleep(0.02)
        before = ctx.document["artifact"]
        after = (await ctx.refresh_document())["artifact"]
        same = after.split("?")[0] == before.split("?")[0]
        return {"renewed": str(after != before and same).lower()}
'''


def signed_setup(tmp_path: Path, port: int) -> tuple[AgentConfig, ed25519.Ed25519PrivateKey]:
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "fresh_url_probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "marks").mkdir()
    private = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "trusted.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = agent_config(
        tmp_path, port, require_signature=True, trusted_keys=(public,), plugin_path=(plugins,)
    )
    config = dataclasses.replace(config, handlers={"refresh-probe": "fresh_url_probe:Probe"})
    return config, private


async def run_probe(
    tmp_path: Path, config: AgentConfig, emulator: Emulator, document: dict[str, Any], tamper: Any
) -> Any:
    async with running_agent(config):
        emulator.service.create_job("signed-1", [THING], document)
        await wait_until(lambda: (tmp_path / "marks" / "started").exists(), 15, "the probe")
        tamper()
        (tmp_path / "marks" / "go").write_text("")
        return await wait_terminal(emulator, "signed-1", THING)


def signed_probe_document(tmp_path: Path, private: Any) -> dict[str, Any]:
    created = {
        "operation": "refresh-probe",
        "artifact": "${aws:iot:s3-presigned-url:https://fw-bucket.s3.amazonaws.com/app.bin}",
        "marks": str(tmp_path / "marks"),
    }
    return sign_document(created, private, {"jobId": "signed-1", "thingNames": [THING]})


async def test_a_signed_document_fetched_again_still_verifies(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    config, private = signed_setup(tmp_path, mosquitto.port)
    document = signed_probe_document(tmp_path, private)
    execution = await run_probe(tmp_path, config, emulator, document, lambda: None)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert execution.status_details["renewed"] == "true"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda d: {**d, "marks": d["marks"] + "-elsewhere"},
            "the job document changed while it ran: the copy fetched again for fresh URLs"
            " differs beyond its presigned URLs; not used",
        ),
        (
            lambda d: {**d, "artifact": d["artifact"].replace("fw-bucket", "evil-bucket")},
            "the job document changed while it ran",
        ),
        (
            # Equal but for the query, which the signature's presigned rule still checks.
            lambda d: {
                **d,
                "artifact": "https://fw-bucket.s3.amazonaws.com/app.bin?X-Amz-Signature=0&x=1",
            },
            "the job document fetched again was refused: the URL at /artifact is not a"
            " presigned URL of the signed S3 object fw-bucket/app.bin",
        ),
    ],
)
async def test_a_changed_document_fetched_again_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, change: Any, reason: str
) -> None:
    """A stand-in for a changed or compromised job in the cloud (neither AWS nor the emulator
    can change a created job's document): the test rewrites the emulator's record of the job
    between the first delivery and the refresh. The copy is refused, the job FAILS."""
    config, private = signed_setup(tmp_path, mosquitto.port)
    document = signed_probe_document(tmp_path, private)

    def tamper() -> None:
        job = emulator.service._jobs["signed-1"]
        job.document = change(job.document)
        job.document_text = json.dumps(job.document)

    execution = await run_probe(tmp_path, config, emulator, document, tamper)
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"].startswith(reason)


# -- the pieces ------------------------------------------------------------------------------------
def test_two_deliveries_compare_equal_without_their_presigned_queries() -> None:
    first = {
        "url": "https://b.s3.amazonaws.com/k?X-Amz-Date=20261201T000000Z&X-Amz-Signature=aa",
        "args": ["fetch https://b.s3.amazonaws.com/k?X-Amz-Expires=60&X-Amz-Signature=bb now"],
    }
    second = {
        "url": "https://b.s3.amazonaws.com/k?X-Amz-Date=20261202T000000Z&X-Amz-Signature=cc",
        "args": [
            "fetch https://b.s3.amazonaws.com/k?X-Amz-Expires=90&X-Amz-Signature=REDACTED now"
        ],
    }
    assert without_presigned_queries(first) == without_presigned_queries(second)
    assert has_presigned_urls(first)
    assert not has_presigned_urls({"url": "https://b.s3.amazonaws.com/k?versionId=1"})
    moved = {**second, "url": second["url"].replace("/k?", "/other?")}
    assert without_presigned_queries(first) != without_presigned_queries(moved)


def test_a_url_past_its_expiry_is_seen_as_expired() -> None:
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Date=20261201T000000Z&X-Amz-Expires=60"
        "&X-Amz-Signature=a"
    )
    signed = 1_796_083_200  # 2026-12-01T00:00:00Z
    assert not url_expired(url, signed + 30)
    assert url_expired(url, signed + 60)
    assert not url_expired("https://example.com/file.bin", signed + 10**6)
