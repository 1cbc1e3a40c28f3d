"""A stop while the link is down: a real `jobs-agent run`, connected and ready, loses its broker
and keeps trying to reconnect; a SIGTERM must still end it, with exit code 0, without systemd's
SIGKILL (README, "systemctl stop"). Over both network transports, with the broker's ports
closed (every attempt refused) and with a port that accepts and drops every connection (every
attempt gets as far as TCP and fails there)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobs_agent.daemon import Agent
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.engine import engine as engine_module
from tests.fixtures.broker import Mosquitto
from tests.harness import (
    AgentProcess,
    agent_config,
    awscrt_connection,
    config_yaml,
    terminal_statuses,
    wait_terminal,
    wait_until,
    write_handler,
)

THING = "gw-stop-offline"
STOP_BOUND = 15.0
"""Far above a prompt stop, far below the awscrt transport's 30 s wait for the CRT."""


@pytest.fixture
def emulator_broker(fresh_mosquitto: Mosquitto) -> Mosquitto:
    """A broker of this test's own: the test stops it under the agent."""
    return fresh_mosquitto


@contextlib.asynccontextmanager
async def dropping_listener(port: int) -> AsyncIterator[list[int]]:
    """Accept every connection on `port` and close it at once, as a broker that is starting or
    a load balancer with no healthy target does; yields the count of connections dropped."""
    dropped = [0]

    async def drop(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dropped[0] += 1
        writer.close()

    server = await asyncio.start_server(drop, Mosquitto.host, port, reuse_address=True)
    try:
        yield dropped
    finally:
        server.close()
        await server.wait_closed()


def _agent(tmp_path: Path, broker: Mosquitto, transport: str) -> tuple[AgentProcess, int]:
    """The agent over `transport`, with a request timeout of an hour: a stop that waits for a
    request's answer waits that long. Returns it and the broker port it uses."""
    (tmp_path / "handlers").mkdir(mode=0o755, exist_ok=True)
    config = agent_config(tmp_path, broker.port, thing=THING, request_timeout_seconds=3600)
    port = broker.port
    if transport == "awscrt":
        config = dataclasses.replace(config, connection=awscrt_connection(broker))
        port = broker.tls_port
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    return AgentProcess(config_path=path, workdir=tmp_path), port


async def _stop_while_gone(agent: AgentProcess, broker: Mosquitto, port: int, gone: str) -> None:
    """Stop the broker (its port then refuses, or accepts and drops every connection), wait
    until the agent has failed to reconnect, then SIGTERM: it must end, with exit code 0."""
    broker.stop()
    async with contextlib.AsyncExitStack() as stack:
        if gone == "dropped":
            dropped = await stack.enter_async_context(dropping_listener(port))
            await wait_until(lambda: dropped[0] >= 2, 15, "two reconnects dropped")
        else:
            await wait_until(
                lambda: "cannot reconnect" in agent.log_text(), 15, "a refused reconnect"
            )
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(timeout=STOP_BOUND) == 0
    assert '"stopped"' in agent.log_text()


TRANSPORTS = pytest.mark.parametrize("transport", ["awscrt", "paho"])
GONE = pytest.mark.parametrize("gone", ["refused", "dropped"])


@TRANSPORTS
@GONE
async def test_sigterm_while_reconnecting_ends_the_agent(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator, transport: str, gone: str
) -> None:
    """Idle, nothing asked of the service: the stop ends the reconnects."""
    agent, port = _agent(tmp_path, emulator_broker, transport)
    try:
        agent.start()
        await agent.wait_ready()
        await _stop_while_gone(agent, emulator_broker, port, gone)
    finally:
        agent.kill()


@TRANSPORTS
@GONE
async def test_sigterm_while_a_start_next_waits_for_the_link_ends_the_agent(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator, transport: str, gone: str
) -> None:
    """A job is queued and its start-next lost (no answer), then the broker goes: the request
    waits for the link to come back to be sent again. The stop must not wait for it (it did,
    for the whole request timeout: an hour here, 30 s by default, past the harness's and
    systemd's patience); the start-next marker stays, so a restart runs whatever the service
    may have started, and the job is still there to be taken."""
    agent, port = _agent(tmp_path, emulator_broker, transport)
    service = emulator.service
    try:
        agent.start()
        await agent.wait_ready()
        service.lose_next("StartNextPendingJobExecution")
        service.create_job("taken-offline", [THING], {"operation": "ok"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the start-next lost")
        await _stop_while_gone(agent, emulator_broker, port, gone)
        assert (tmp_path / "state" / "state.db.taking").read_text() != ""
        assert str(service.execution("taken-offline", THING).status) == "QUEUED"
    finally:
        agent.kill()


async def test_a_round_that_fails_because_of_the_stop_takes_no_retry_pause(
    tmp_path: Path,
    emulator_broker: Mosquitto,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start-next given up by the stop fails the engine's round, and a failed round pauses
    before the next (0.5 s at first, doubling to 60 s over an outage): that pause cleared the
    wake-up the stop had set and was waited out in full. An hour here: the stop must not wait
    for it (the daemon in this process, so that the pause can be made that long)."""
    monkeypatch.setattr(engine_module, "RETRY_MIN_SECONDS", 3600.0)
    (tmp_path / "handlers").mkdir(mode=0o755)
    config = agent_config(tmp_path, emulator_broker.port, thing=THING, request_timeout_seconds=3600)
    agent = Agent(config)
    run = asyncio.create_task(agent.run())
    service = emulator.service
    try:
        async with asyncio.timeout(30):
            await agent.ready.wait()
        assert agent.engine is not None
        client = agent.engine.client
        service.lose_next("StartNextPendingJobExecution")
        service.create_job("taken-offline", [THING], {"operation": "ok"})
        await wait_until(lambda: service.counters["lost"] == 1, 15, "the start-next lost")
        emulator_broker.stop()
        await wait_until(lambda: not client.transport.is_connected, 15, "the link lost")
        agent.request_stop()
        async with asyncio.timeout(STOP_BOUND):
            assert await run == 0
    finally:
        if not run.done():
            agent.request_stop()
            run.cancel()


@TRANSPORTS
async def test_an_outcome_decided_during_a_stop_while_offline_is_kept_and_sent_after_restart(
    tmp_path: Path, emulator_broker: Mosquitto, emulator: Emulator, transport: str
) -> None:
    """The stop rules hold with the link down: the running step finishes within the stop
    timeout, its outcome cannot be sent and is not waited on (it was, for the request
    timeout); it stays in the outbox, and the next start reports it, once."""
    release, started = tmp_path / "release", tmp_path / "started"
    script = f"#!/bin/sh\ntouch {started}\nwhile [ ! -e {release} ]; do sleep 0.05; done\n"
    write_handler(tmp_path / "handlers", "wait", script)
    agent, _port = _agent(tmp_path, emulator_broker, transport)
    try:
        agent.start()
        await agent.wait_ready()
        emulator.service.create_job("offline-outcome", [THING], {"operation": "wait"})
        await wait_until(started.exists, 15, "the step to start")
        emulator_broker.stop()
        await wait_until(lambda: "cannot reconnect" in agent.log_text(), 15, "a refused reconnect")
        agent.signal(signal.SIGTERM)
        await wait_until(lambda: "stop requested" in agent.log_text(), 15, "the stop")
        release.touch()  # the step finishes within the stop timeout
        assert await agent.wait_exit(timeout=STOP_BOUND) == 0
        assert str(emulator.service.execution("offline-outcome", THING).status) == "IN_PROGRESS"
        emulator_broker.start()
        agent.start()
        execution = await wait_terminal(emulator, "offline-outcome", THING)
        assert str(execution.status) == "SUCCEEDED", agent.log_text()
        assert terminal_statuses(emulator, "offline-outcome") == ["SUCCEEDED"]
    finally:
        agent.kill()
