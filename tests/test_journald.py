"""Under systemd, journald records each line's priority and fields (issue 13.12).

systemd cannot run here, so journald is stood in for by what it offers a service: a real
AF_UNIX datagram socket speaking its native protocol, and `JOURNAL_STREAM` naming the
device and inode of the agent's stderr. The agent is a real `jobs-agent run` process; a FAILED
job and a configuration warning must arrive as warnings (priority 4), ordinary lines as info.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.log import configure_logging
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    config_yaml,
    wait_terminal,
    wait_until,
)

THING = "gw-journal"


def parse_datagram(data: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=value lines, or KEY, a 64-bit length and raw bytes."""
    fields: dict[str, str] = {}
    while data:
        newline = data.index(b"\n")
        line = data[:newline]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            data = data[newline + 1 :]
        else:
            key = line
            (length,) = struct.unpack("<Q", data[newline + 1 : newline + 9])
            value = data[newline + 9 : newline + 9 + length]
            data = data[newline + 10 + length :]
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "journal.socket"))
    server.settimeout(10)
    yield server
    server.close()


def test_native_protocol_carries_priority_and_fields(
    tmp_path: Path,
    journal: socket.socket,
    restore_logging: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = (tmp_path / "stderr").open("w")
    info = os.fstat(stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    chosen = configure_logging("info", "auto", stderr, journal_socket=tmp_path / "journal.socket")
    assert chosen == "journal"
    log = structlog.get_logger("t").bind(job_id="job-7", execution_number=2, namespace=None)
    log.warning("outcome decided", status="FAILED", reason="step 1: exited with code 3")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler crashed")
    first = parse_datagram(journal.recv(65536))
    assert first["PRIORITY"] == "4"
    assert first["SYSLOG_IDENTIFIER"] == "jobs-agent"
    assert first["JOB_ID"] == "job-7" and first["EXECUTION_NUMBER"] == "2"
    assert first["STATUS"] == "FAILED" and first["REASON"] == "step 1: exited with code 3"
    assert "NAMESPACE" not in first  # None-valued fields are left out
    assert first["MESSAGE"].startswith("outcome decided ")
    second = parse_datagram(journal.recv(65536))
    assert second["PRIORITY"] == "3"
    assert "Traceback" in second["JOBS_AGENT_EXCEPTION"] and "\n" in second["MESSAGE"]
    stderr.close()
    assert (tmp_path / "stderr").read_text() == ""


def test_without_journal_stream_the_lines_stay_plain_json(
    tmp_path: Path, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    with (tmp_path / "stderr").open("w") as stream:
        assert configure_logging("info", "auto", stream) == "json"
        structlog.get_logger("t").info("ready", namespace=None)
    line = json.loads((tmp_path / "stderr").read_text())
    assert line["event"] == "ready" and "namespace" not in line


def _agent(tmp_path: Path, mosquitto: Mosquitto, journal_socket: Path) -> AgentProcess:
    config = agent_config(tmp_path, mosquitto.port, thing=THING)
    path = tmp_path / "config.yaml"
    text = config_yaml(config).replace(
        "log: {level: debug, format: json}",
        f"log: {{level: info, format: auto, journal_socket: {journal_socket}}}",
    )
    path.write_text(text)
    agent = AgentProcess(config_path=path, workdir=tmp_path)
    stderr = tmp_path / "agent-1.log"  # the file AgentProcess gives the agent as stderr
    stderr.touch()
    info = stderr.stat()
    agent.env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    return agent


@contextlib.contextmanager
def reading(journal: socket.socket) -> Iterator[list[dict[str, str]]]:
    """The journal's datagrams, read as they arrive, as journald does: a socket nobody reads
    holds `net.unix.max_dgram_qlen` of them (10 here), and the agent sends the rest to stderr
    (`test_a_stalled_journald_never_blocks_the_logger`)."""
    received: list[dict[str, str]] = []
    journal.setblocking(False)

    def read() -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(parse_datagram(journal.recv(65536)))

    loop = asyncio.get_running_loop()
    loop.add_reader(journal.fileno(), read)
    try:
        yield received
    finally:
        loop.remove_reader(journal.fileno())


async def test_a_real_agent_sends_priorities_to_journald(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator, journal: socket.socket
) -> None:
    """Three jobs: more lines than an unread socket holds, all of them on the journal."""
    agent = _agent(tmp_path, mosquitto, tmp_path / "journal.socket")
    jobs = ["fails-1", "fails-2", "fails-3"]
    with reading(journal) as received:
        try:
            agent.start()
            await agent.wait_ready()
            for job_id in jobs:
                emulator.service.create_job(job_id, [THING], {"operation": "false"})
            for job_id in jobs:
                await wait_terminal(emulator, job_id, THING)

            def decided() -> list[dict[str, str]]:
                return [r for r in received if r["MESSAGE"].startswith("outcome decided")]

            await wait_until(lambda: len(decided()) == len(jobs), 20, "the outcome lines")
        finally:
            agent.kill()
    assert [r["JOB_ID"] for r in decided()] == jobs
    assert {r["PRIORITY"] for r in decided()} == {"4"}
    warning = next(r for r in received if r["MESSAGE"].startswith("configuration warning"))
    assert warning["PRIORITY"] == "4" and "without TLS" in warning["PROBLEM"]
    ready = next(r for r in received if r["MESSAGE"].startswith("ready"))
    assert ready["PRIORITY"] == "6" and ready["THING_NAME"] == THING


async def test_without_the_native_socket_lines_carry_syslog_priorities(
    tmp_path: Path, mosquitto: Mosquitto, emulator: Emulator
) -> None:
    agent = _agent(tmp_path, mosquitto, tmp_path / "no-journal.socket")
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("fails", [THING], {"operation": "false"})
        await wait_terminal(emulator, "fails", THING)
        await wait_until(
            lambda: '"outcome decided"' in agent.log_text(), 20, "the outcome line on stderr"
        )
    finally:
        agent.kill()
    lines = [line for line in agent.log_text().splitlines() if line.startswith("<")]
    decided = next(line for line in lines if '"outcome decided"' in line)
    assert decided.startswith("<4>{") and json.loads(decided[3:])["job_id"] == "fails"
    assert next(line for line in lines if '"event": "ready"' in line).startswith("<6>")


def test_a_stalled_journald_never_blocks_the_logger(
    tmp_path: Path,
    journal: socket.socket,
    restore_logging: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """journald that reads nothing (its datagram queue, `net.unix.max_dgram_qlen`, fills after
    a few lines): logging goes on, the lines that did not fit reach stderr with their priority.
    The logger used to send on a blocking socket, and the event loop stopped with it. The
    second thread is only the test's watchdog: a blocked logger must fail the test, not hang it.
    """
    stderr = (tmp_path / "stderr").open("w")
    info = os.fstat(stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    chosen = configure_logging("info", "auto", stderr, journal_socket=tmp_path / "journal.socket")
    assert chosen == "journal"
    lines = 200  # far more than any datagram queue holds
    log = structlog.get_logger("t")
    done = threading.Event()

    def log_lines() -> None:
        for number in range(lines):
            log.info("line", number=number)
        done.set()

    writer = threading.Thread(target=log_lines, daemon=True)
    writer.start()
    writer.join(timeout=30)
    assert done.is_set(), "the logger blocked on journald's full queue"
    stderr.close()
    written = (tmp_path / "stderr").read_text().splitlines()
    assert written and all(line.startswith("<6>") for line in written)  # info, for journald
    overflow = [json.loads(line[3:])["number"] for line in written]
    journal.setblocking(False)
    sent = []
    with contextlib.suppress(BlockingIOError):
        while True:
            sent.append(int(parse_datagram(journal.recv(65536))["NUMBER"]))
    assert sorted(sent + overflow) == list(range(lines))  # every line once, none lost
