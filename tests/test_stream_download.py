"""`download-file` from a stream: the whole agent (store, Jobs client, engine, dispatcher, the
download plugin) against the emulator's streams service on an in-process bus.

What is asserted is what the service recorded (status, statusDetails) and what is on disk. The
broker-level scenarios (a broker restart mid-download, an agent killed mid-download) are in
tests/test_stream_download_broker.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.config import AgentConfig, JobsConfig
from jobs_agent.dispatch import Dispatcher
from jobs_agent.dispatch.context import LocalJobContext
from tests.helpers.agent_harness import make_handler_dir, running_agent
from tests.helpers.streams import Gate, create_stream, replace_file, sidecar_blocks

CONTENT = os.urandom(1024 * 1024 + 5)  # 65 blocks of 16 KiB, the last one 5 bytes


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def document(target: Path, sha256: str | None = None, **stream: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operation": "download-file",
        "stream": {"streamId": "fw", "fileId": 0, **stream},
        "path": str(target),
    }
    if sha256 is not None:
        doc["sha256"] = sha256
    return doc


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    make_handler_dir(tmp_path)
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("fmt", "payload_base64"),
    [("json", False), ("json", True), ("cbor", False)],
    ids=["json-hex", "json-base64", "cbor"],
)
async def test_a_stream_download_succeeds_in_every_format(
    base: Path, fmt: str, payload_base64: bool
) -> None:
    """JSON with the block payload in hexadecimal (the guide) or base64 (AWS's device library),
    and CBOR: the file arrives whole, verified, with no `.part` or sidecar left."""
    target = base / "out" / "fw.bin"
    async with running_agent(base) as h:
        h.emulator.streams_mqtt.json_payload_base64 = payload_base64
        create_stream(h.service, "fw", {0: CONTENT})
        doc = document(target, digest(CONTENT), format=fmt)
        execution = await h.run_job("j1", doc)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert execution.status_details["bytes"] == str(len(CONTENT))
    assert execution.status_details["message"] == "65 of 65 blocks"
    assert target.read_bytes() == CONTENT
    assert leftovers(target) == []


@pytest.mark.parametrize(
    ("stream", "file_id", "reason"),
    [
        ("nope", 0, "stream nope: ResourceNotFound: stream nope not found"),
        ("fw", 7, "stream fw (version 1) has no file 7; its files: 0, 1"),
    ],
)
async def test_a_stream_or_file_the_service_does_not_have_fails_with_the_reason(
    base: Path, stream: str, file_id: int, reason: str
) -> None:
    """The service's rejection (or a file its description does not list) ends the job
    FAILED, its reason in statusDetails."""
    target = base / "out" / "fw.bin"
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT, 1: b"{}"})
        doc = document(target, streamId=stream, fileId=file_id)
        execution = await h.run_job("j1", doc)
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"] == reason
    assert not target.exists()


async def test_an_object_changed_behind_the_stream_fails_with_etag_mismatch(base: Path) -> None:
    """An S3 object replaced without UpdateStream: the service refuses it (ETagMismatch) until
    the stream is updated, and the job says so."""
    target = base / "out" / "fw.bin"
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT})
        h.service.put_s3_object("firmware", "fw-0.bin", CONTENT[::-1])
        execution = await h.run_job("j1", document(target))
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"].startswith("stream fw: ETagMismatch: ")


async def test_a_stream_updated_mid_download_starts_over_at_the_new_version(base: Path) -> None:
    """UpdateStream while blocks are coming: the next request names the old version and gets
    VersionMismatch; the agent throws away what it had and fetches the new file from block 0
    (none of the old blocks is reused), and it is the new file that is verified and put in
    place."""
    target = base / "out" / "fw.bin"
    new = os.urandom(len(CONTENT) + 40_000)
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT})
        gate = Gate(h.service.streams)
        restarted_at: list[int] = []

        def update_once(served: int) -> None:
            if served == 20 and not restarted_at:
                restarted_at.append(served)
                replace_file(h.service, "fw", 0, new)

        gate.after_block = update_once
        execution = await h.run_job("j1", document(target, digest(new)))
        assert h.service.counters["DescribeStream"] == 2
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert target.read_bytes() == new
    new_blocks = -(-len(new) // 16384)
    after = gate.served[gate.served.index(0, 1) :]  # from the second time block 0 went out
    assert sorted(after) == list(range(new_blocks))


async def test_a_digest_mismatch_fails_and_leaves_nothing(base: Path) -> None:
    target = base / "out" / "fw.bin"
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT})
        execution = await h.run_job("j1", document(target, "0" * 64))
    assert str(execution.status) == "FAILED"
    assert execution.status_details["reason"].startswith("sha256 mismatch for stream fw file 0")
    assert not target.exists() and leftovers(target) == []


async def test_cancelled_mid_download_stops_and_keeps_the_blocks_for_later(base: Path) -> None:
    """CancelJob while the service is silent: the handler stops, and the `.part` with its
    sidecar stays: a later job for the same file of the same stream version (and the same
    expected sha256) asks only for the blocks still missing."""
    target = base / "out" / "fw.bin"
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT})
        gate = Gate(h.service.streams, limit=24)
        h.service.create_job("j1", ["fuzz-gw"], document(target, digest(CONTENT)))
        await gate.wait(lambda g: g.dropped >= 1, timeout=30)
        await _wait_sidecar(target, 24)
        h.service.cancel_job("j1", force=True)
        await h.wait_terminal("j1")
        gate.open()
        gate.restart_count()
        execution = await h.run_job("j2", document(target, digest(CONTENT)))
    assert str(execution.status) == "SUCCEEDED"
    assert sorted(gate.served) == list(range(24, 65))
    assert target.read_bytes() == CONTENT


async def test_blocks_of_an_older_stream_version_are_never_resumed(base: Path) -> None:
    """The `.part` of version 1 stays after a cancel; the stream is updated (version 2) before
    the next job: the sidecar names version 1, so everything is fetched again from block 0."""
    target = base / "out" / "fw.bin"
    new = os.urandom(len(CONTENT))  # same size, same block count: only the version tells
    async with running_agent(base) as h:
        create_stream(h.service, "fw", {0: CONTENT})
        gate = Gate(h.service.streams, limit=24)
        h.service.create_job("j1", ["fuzz-gw"], document(target, digest(new)))
        await gate.wait(lambda g: g.dropped >= 1, timeout=30)
        await _wait_sidecar(target, 24)
        h.service.cancel_job("j1", force=True)
        await h.wait_terminal("j1")
        replace_file(h.service, "fw", 0, new)
        gate.open()
        gate.restart_count()
        execution = await h.run_job("j2", document(target, digest(new)))
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert sorted(gate.served) == list(range(65))
    assert target.read_bytes() == new


async def _wait_sidecar(target: Path, count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                if len(sidecar_blocks(target)) >= count:
                    return
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.05)  # polling a file nothing announces


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"url": "https://example.com/x"}, "url and stream name two sources of the file"),
        ({"stream": {"fileId": 0}}, "stream.streamId: expected 1 to 128 of [a-zA-Z0-9_-]"),
        ({"stream": {"streamId": "fw", "fileId": 256}}, "stream.fileId: expected 0 to 255"),
        ({"stream": {"streamId": "fw", "fileId": "0"}}, "stream.fileId: expected an integer"),
        ({"stream": {"streamId": "fw", "fileId": 0, "blockSize": 100}}, "stream.blockSize"),
        ({"stream": {"streamId": "fw", "fileId": 0, "format": "xml"}}, "stream.format"),
        ({"stream": {"streamId": "fw", "fileId": 0, "bs": 1}}, "stream: unknown field 'bs'"),
        ({"stream": "fw"}, "stream: expected an object"),
        ({"path": "relative/fw.bin"}, "path: expected an absolute file path"),
    ],
)
async def test_a_malformed_stream_document_is_rejected(
    tmp_path: Path, change: dict[str, Any], reason: str
) -> None:
    doc = {**document(tmp_path / "fw.bin"), **change}
    outcome, _ = await _exec(tmp_path, doc)
    assert outcome.status == "REJECTED"
    assert outcome.details["reason"].startswith(reason)


async def test_without_the_agents_mqtt_link_a_stream_download_fails_clearly(
    tmp_path: Path,
) -> None:
    """`jobs-agent exec` runs a document without the cloud: there is no MQTT link to lend."""
    outcome, _ = await _exec(tmp_path, document(tmp_path / "fw.bin"))
    assert outcome.status == "FAILED"
    assert outcome.details["reason"] == (
        "a stream download needs the agent's MQTT connection, which this run does not have"
    )


async def _exec(tmp_path: Path, doc: dict[str, Any]) -> Any:
    dispatcher = Dispatcher(AgentConfig(thing_name="gw", jobs=JobsConfig(handler_dir=tmp_path)))
    (tmp_path / "s").mkdir(exist_ok=True)
    ctx = LocalJobContext(document=doc, scratch_dir=tmp_path / "s", state_dir=tmp_path)
    return await dispatcher.run(dispatcher.resolve(doc), ctx), ctx
