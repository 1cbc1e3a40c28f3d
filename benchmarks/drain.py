"""drain: how fast a queue of jobs empties, from the agent's READY to the last SUCCEEDED.

The jobs are queued before the agent starts; the clock starts at its READY=1 (connected and
subscribed) and stops when the emulator records the last execution SUCCEEDED.

* no-op Python plugin through mosquitto, with paho and with awscrt (mTLS);
* the same with the embedded local bus (`connection.transport: local`: the agent and its
  emulator in one process, as `jobs-agent demo` runs it; measured in this process);
* a no-op script handler (fork/exec of /bin/sh per job) through mosquitto with paho.

Floor: two request round trips per job (start-next and the final update) with a raw paho client.
Peer: benchmarks/peers/sdk_agent.py, the SDK-sample-style agent on IotJobsClientV2 (mTLS).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    AgentProcess,
    Broker,
    Measure,
    Session,
    emulator,
    new_id,
    raw_device,
    responder,
)

NAME = "drain"
HELP = "queued jobs/s: no-op plugin (paho, awscrt, local bus) and script, beside floor and peer"
MAX_RUNS = 2


def counts(quick: bool) -> tuple[int, int]:
    return (200, 60) if quick else (1000, 300)


def queue_jobs(emu: Any, thing: str, count: int, document: dict[str, Any]) -> list[str]:
    ids = [f"drain-{i:05d}" for i in range(count)]
    for job_id in ids:
        emu.service.create_job(job_id, [thing], document)
    return ids


async def wait_drained(emu: Any, thing: str, last: str, timeout: float) -> float:
    execution = await emu.service.wait_for_status(last, thing, "SUCCEEDED", timeout=timeout)
    del execution
    return time.time()


async def agent_rate(
    session: Session,
    label: str,
    count: int,
    *,
    transport: str = "paho",
    document: dict[str, Any] | None = None,
    handler_dir_files: dict[str, str] | None = None,
    peer: bool = False,
) -> float:
    broker = session.broker()
    directory = session.directory(f"drain-{label}")
    thing = new_id(f"drain-{label}")
    async with emulator(broker) as emu:
        ids = queue_jobs(emu, thing, count, document or {"operation": "noop"})
        process = (
            peer_process(broker, directory, thing)
            if peer
            else AgentProcess(
                broker,
                directory,
                thing,
                transport,
                handlers={"noop": "benchmarks.handlers:Noop"},
                jobs={"progress_interval_seconds": 5},
            )
        )
        for name, text in (handler_dir_files or {}).items():
            path = directory / "handlers" / name
            path.write_text(text)
            path.chmod(0o755)
        try:
            await process.start()
            end = await wait_drained(emu, thing, ids[-1], timeout=max(60.0, count / 5))
        finally:
            await process.stop()
        return count / (end - process.ready_at)


def peer_process(broker: Broker, directory: Path, thing: str) -> AgentProcess:
    c = broker.certs
    command = [
        sys.executable,
        "-m",
        "benchmarks.peers.sdk_agent",
        "--endpoint",
        "localhost",
        "--port",
        str(broker.tls_port),
        "--cert",
        str(c.device_cert),
        "--key",
        str(c.device_key),
        "--ca",
        str(c.ca),
        "--thing",
        thing,
    ]
    return AgentProcess(broker, directory, thing, "awscrt", command=command)


async def local_rate(session: Session, count: int) -> float:
    """The daemon with `transport: local` in this process: engine + embedded emulator, no MQTT."""
    from jobs_agent.config import AgentConfig, JobsConfig, LogConfig
    from jobs_agent.config import ConnectionConfig as Conn
    from jobs_agent.daemon import Agent
    from jobs_agent.emulator.embedded import EmbeddedEmulator
    from jobs_agent.log import configure_logging
    from jobs_agent.transport.local import LocalBus, LocalTransport

    directory = session.directory("drain-local")
    thing = new_id("drain-local")
    config = AgentConfig(
        thing_name=thing,
        connection=Conn(transport="local"),
        jobs=JobsConfig(handler_dir=directory),
        handlers={"noop": "benchmarks.handlers:Noop"},
        state_dir=directory / "state",
        log=LogConfig(level="warning", format="json"),
    )
    configure_logging("warning", "json")
    bus = LocalBus()
    emulator = EmbeddedEmulator(bus)
    await emulator.start()
    agent = Agent(config, transport=LocalTransport(bus, thing))
    task = asyncio.ensure_future(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 30)
        service = emulator.service
        started = time.time()
        ids = [f"drain-{i:05d}" for i in range(count)]
        for job_id in ids:
            service.create_job(job_id, [thing], {"operation": "noop"})
        await service.wait_for_status(ids[-1], thing, "SUCCEEDED", timeout=max(60.0, count / 5))
        return count / (time.time() - started)
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)
        await emulator.stop()


async def floor_rate(session: Session, count: int, tls: bool = False) -> float:
    broker = session.broker()
    async with responder(broker):
        device = await asyncio.to_thread(raw_device, broker, tls)
        try:
            started = time.perf_counter()
            await asyncio.to_thread(lambda: [device.round_trip() for _ in range(2 * count)])
            return count / (time.perf_counter() - started)
        finally:
            device.close()


async def run(session: Session, quick: bool) -> list[Measure]:
    plugin_jobs, script_jobs = counts(quick)
    floor_tcp = await floor_rate(session, min(plugin_jobs, 500))
    floor_tls = await floor_rate(session, min(plugin_jobs, 500), tls=True)
    # The peer re-subscribes per job (the SDK's request-response client): ~10 jobs/s, so it
    # drains a shorter queue to keep the run short; a rate per job is compared.
    peer_jobs = min(plugin_jobs, 300)
    peer = await agent_rate(session, "peer", peer_jobs, peer=True)
    paho = await agent_rate(session, "paho", plugin_jobs)
    crt = await agent_rate(session, "awscrt", plugin_jobs, transport="awscrt")
    local = await local_rate(session, plugin_jobs)
    script = await agent_rate(
        session,
        "script",
        script_jobs,
        document={"operation": "noop.sh"},
        handler_dir_files={"noop.sh": "#!/bin/sh\nexit 0\n"},
    )
    note = f"{plugin_jobs} plugin jobs, {script_jobs} script jobs, {peer_jobs} for the peer"
    at_least = {
        "plugin": lambda v, r: v >= 500,
        "script": lambda v, r: v >= 100,
    }
    return [
        Measure(
            "paho-floor",
            "no-op plugin, paho (jobs/s)",
            "jobs/s",
            paho,
            "floor: 2 raw round trips/job (TCP)",
            floor_tcp,
            ">= 500 jobs/s",
            at_least["plugin"],
            note,
        ),
        Measure(
            "awscrt-peer",
            "no-op plugin, awscrt (jobs/s)",
            "jobs/s",
            crt,
            "peer: IotJobsClientV2 agent (mTLS)",
            peer,
            ">= 500 jobs/s and >= peer",
            lambda v, r: v >= 500 and r is not None and v >= r,
            note,
        ),
        Measure(
            "awscrt-floor",
            "no-op plugin, awscrt (jobs/s)",
            "jobs/s",
            crt,
            "floor: 2 raw round trips/job (mTLS)",
            floor_tls,
            "",
            None,
            note,
        ),
        Measure(
            "paho-peer",
            "no-op plugin, paho (jobs/s)",
            "jobs/s",
            paho,
            "peer: IotJobsClientV2 agent (mTLS)",
            peer,
            ">= peer",
            lambda v, r: r is not None and v >= r,
            note,
        ),
        Measure(
            "local",
            "no-op plugin, embedded local bus (jobs/s)",
            "jobs/s",
            local,
            "peer: IotJobsClientV2 agent (mTLS)",
            peer,
            ">= 500 jobs/s",
            at_least["plugin"],
            note,
        ),
        Measure(
            "script",
            "no-op script handler, paho (jobs/s)",
            "jobs/s",
            script,
            "floor: 2 raw round trips/job (TCP)",
            floor_tcp,
            ">= 100 jobs/s",
            at_least["script"],
            note,
        ),
    ]
