"""The seam between the Jobs client and the MQTT link: a transport's failure reaches the engine as
a `JobsError`, never as the transport's own exception type (the client translates it once).

Real mosquitto with an ACL that lets the device subscribe to its Jobs topics but not publish
its requests: the broker refuses the publish (MQTT 5 PUBACK "not authorized"), which the paho
backend raises as a `TransportError`.
"""

from __future__ import annotations

import pytest

from jobs_agent.jobs.client import JobsClient
from jobs_agent.jobs.errors import JobsError, LinkError
from jobs_agent.transport.base import TransportError
from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto
from tests.harness import paho_connection

THING = "gw-seam"


async def test_a_publish_the_broker_refuses_reaches_the_caller_as_a_jobs_error(
    fresh_mosquitto: Mosquitto,
) -> None:
    acl = fresh_mosquitto.directory / "read-only.acl"
    acl.write_text(f"topic read $aws/things/{THING}/jobs/#\n")
    with fresh_mosquitto.config_path.open("a", encoding="utf-8") as config:
        config.write(f"acl_file {acl}\n")
    fresh_mosquitto.restart()
    transport = PahoTransport(paho_connection(fresh_mosquitto.port), THING)
    await transport.connect(timeout=10)
    client = JobsClient(transport, THING, request_timeout=5)
    try:
        await client.start()
        with pytest.raises(JobsError) as info:
            await client.start_next()
        assert isinstance(info.value, LinkError)
        assert not isinstance(info.value, TransportError)
        assert "refused by the broker" in str(info.value)
    finally:
        await client.close()
        await transport.disconnect()
