"""The Jobs client over each real backend while mosquitto is stopped and restarted mid-session:
the backend reconnects by itself and resubscribes (mosquitto runs without persistence, so the
session is gone), the client emits a resync event, and a request issued during the outage
completes after it: never a hang."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from jobs_agent.config import ConnectionConfig
from jobs_agent.jobs.client import JobsClient, Resync
from jobs_agent.transport.base import Transport
from tests.fixtures.broker import Mosquitto
from tests.harness import paho_connection, start_emulator

THING = "gw-reconnect"
# The emulator (the "cloud") reconnects within 0.05-0.5 s; the device waits at least 1 s, so
# its re-published request finds the service subscribed again, as AWS always is.
DEVICE_BACKOFF = {"reconnect_min_seconds": 1.0, "reconnect_max_seconds": 1.5}


def _backend(name: str, broker: Mosquitto) -> Transport:
    if name == "paho":
        from jobs_agent.transport.paho import PahoTransport

        return PahoTransport(replace(paho_connection(broker.port), **DEVICE_BACKOFF), THING)
    from jobs_agent.transport.awscrt import AwscrtTransport

    certs = broker.certs
    config = ConnectionConfig(
        transport="awscrt",
        endpoint="localhost",
        port=broker.tls_port,
        ca=certs.ca,
        cert=certs.device_cert,
        key=certs.device_key,
        keepalive_seconds=30,
    )
    return AwscrtTransport(replace(config, **DEVICE_BACKOFF), THING)


@pytest.mark.parametrize("backend", ["paho", "awscrt"])
async def test_request_during_broker_restart_completes_after_resync(
    backend: str, fresh_mosquitto: Mosquitto
) -> None:
    emulator = await start_emulator(fresh_mosquitto.port)
    transport = _backend(backend, fresh_mosquitto)
    await transport.connect(timeout=15)
    client = JobsClient(transport, THING, request_timeout=20)
    await client.start()
    events = client.events()
    try:
        emulator.service.create_job("after-outage", [THING], {"operation": "noop"})
        await asyncio.to_thread(fresh_mosquitto.stop)
        request = asyncio.create_task(client.start_next())
        await asyncio.to_thread(fresh_mosquitto.start)
        async with asyncio.timeout(20):
            event = await anext(events)
            while not isinstance(event, Resync):
                event = await anext(events)
        execution = await asyncio.wait_for(request, 25)
        assert execution is not None
        assert execution.job_id == "after-outage"
        assert str(emulator.service.execution("after-outage", THING).status) == "IN_PROGRESS"
    finally:
        await client.close()
        await transport.disconnect()
        await emulator.stop()
