"""Stream downloads through real parts: a real mosquitto, the emulator as its privileged client,
and the agent as a real `jobs-agent run` process (issue 17: "A stream download of a 5 MiB file
with a connection drop in the middle completes, digest checked").

The drop is placed, not hoped for: the gate on the emulator's GetStream (tests/helpers/streams.py)
serves half of the file and then leaves the agent's further requests unanswered, so the broker
restart (or the SIGKILL) lands exactly in the middle, while requests are outstanding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_terminal,
    wait_until,
)
from tests.helpers.streams import Gate, create_stream, sidecar_blocks

THING = "gw-stream"
SIZE = 5 * 1024 * 1024
BLOCK = 16 * 1024  # the agent's default block size
BLOCKS = SIZE // BLOCK
PER_REQUEST = 131072 // BLOCK
WINDOW = 4  # GetStream requests the agent keeps outstanding


@pytest.fixture
def emulator_broker(fresh_mosquitto: Mosquitto) -> Mosquitto:
    """The test restarts the broker under the emulator: a private one, not the session's."""
    return fresh_mosquitto


@pytest.fixture
def agent(tmp_path: Path, fresh_mosquitto: Mosquitto) -> AsyncIterator[AgentProcess]:
    config = agent_config(tmp_path, fresh_mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    (tmp_path / "out").mkdir()
    process = AgentProcess(config_path=path, workdir=tmp_path)
    yield process  # type: ignore[misc]
    process.kill()


def document(target: Path, content: bytes, fmt: str) -> dict[str, Any]:
    return {
        "operation": "download-file",
        "stream": {"streamId": "fw", "fileId": 0, "format": fmt},
        "path": str(target),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


@pytest.mark.slow
async def test_a_5_mib_stream_download_survives_a_broker_restart(
    tmp_path: Path, fresh_mosquitto: Mosquitto, emulator: Emulator, agent: AgentProcess
) -> None:
    """Half the blocks in, the broker restarts (every connection drops, every session is
    lost). The agent reconnects, its transport subscribes to the stream's topics again, and
    the download asks for the blocks still missing: the file is complete, its sha256 checked,
    and no block was served twice."""
    content = os.urandom(SIZE)
    target = tmp_path / "out" / "image.bin"
    create_stream(emulator.service, "fw", {0: content})
    gate = Gate(emulator.service.streams, limit=BLOCKS // 2)
    agent.start()
    await agent.wait_ready()
    emulator.service.create_job("j1", [THING], document(target, content, "json"))
    await gate.wait(lambda g: g.dropped >= 1, timeout=30)
    fresh_mosquitto.restart()
    gate.open()
    execution = await wait_terminal(emulator, "j1", THING, timeout=90)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert execution.status_details["bytes"] == str(SIZE)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
    # Every block went out; again only those lost with the connection (the emulator's answers
    # still on their way when the broker went down): at most one window of requests' worth.
    assert set(gate.served) == set(range(BLOCKS))
    assert len(gate.served) - BLOCKS <= WINDOW * PER_REQUEST
    assert "link lost mid-fetch" in agent.log_path.read_text()


@pytest.mark.slow
async def test_a_killed_agent_resumes_the_stream_by_block(
    tmp_path: Path, emulator: Emulator, agent: AgentProcess
) -> None:
    """SIGKILL half-way: the `.part` and its sidecar stay. The restarted agent resumes the
    (resumable) job and asks only for the blocks the sidecar does not list: counted at the
    emulator, every other block is served exactly once and none of the first half again. In
    CBOR, through the real broker."""
    content = os.urandom(SIZE)
    target = tmp_path / "out" / "image.bin"
    create_stream(emulator.service, "fw", {0: content})
    gate = Gate(emulator.service.streams, limit=BLOCKS // 2)
    agent.start()
    await agent.wait_ready()
    emulator.service.create_job("j1", [THING], document(target, content, "cbor"))
    await gate.wait(lambda g: g.dropped >= 1, timeout=30)
    served = set(gate.served)

    def recorded() -> bool:
        try:
            return sidecar_blocks(target) == served
        except (OSError, ValueError, KeyError):
            return False

    await wait_until(recorded, 10, "the sidecar to list every block served")
    agent.kill()
    assert target.with_name("image.bin.part").stat().st_size == SIZE
    requests_before = emulator.service.counters["GetStream"]
    gate.restart_count()
    gate.open()
    agent.start()
    execution = await wait_terminal(emulator, "j1", THING, timeout=60)
    assert str(execution.status) == "SUCCEEDED", execution.status_details
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
    missing = sorted(set(range(BLOCKS)) - served)
    assert sorted(gate.served) == missing
    requests = emulator.service.counters["GetStream"] - requests_before
    assert requests == -(-len(missing) // PER_REQUEST)
