"""The device's Device Shadow client against the emulator's shadow service over a real
mosquitto: named shadows and `$package`, replies matched by client token, rejections as typed
exceptions, version conflicts, timeouts, a broker restart mid-request, and the Jobs client and
the shadow client sharing one MQTT connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from jobs_agent.emulator.embedded import Emulator
from jobs_agent.jobs.client import JobsClient
from jobs_agent.shadow.client import ShadowClient
from jobs_agent.shadow.errors import (
    ShadowError,
    ShadowInvalidRequest,
    ShadowNotFound,
    ShadowThrottled,
    ShadowTimeout,
    ShadowTooLarge,
    ShadowVersionConflict,
)
from jobs_agent.transport.base import Message
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.transport.shared import SharedLink
from tests.fixtures.broker import Mosquitto
from tests.harness import paho_connection, start_emulator

THING = "gw-shadow"


async def _device(port: int, client_id: str = THING) -> PahoTransport:
    transport = PahoTransport(paho_connection(port), client_id)
    await transport.connect(timeout=10)
    return transport


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"tick_seconds": None}


@pytest.fixture
async def shadows(emulator: Emulator, mosquitto: Mosquitto) -> AsyncIterator[ShadowClient]:
    transport = await _device(mosquitto.port)
    client = ShadowClient(transport, THING, request_timeout=5)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        await transport.disconnect()


async def test_update_then_get_a_named_shadow(shadows: ShadowClient, emulator: Emulator) -> None:
    first = await shadows.update("config", {"reported": {"mode": "eco", "level": 3}})
    assert first.version == 1
    assert first.state == {"reported": {"mode": "eco", "level": 3}}
    second = await shadows.update("config", {"reported": {"level": None}, "desired": {"x": 1}})
    assert second.version == 2
    document = await shadows.get("config")
    assert document.version == 2
    assert document.reported == {"mode": "eco"}
    assert document.desired == {"x": 1}
    assert document.delta == {"x": 1}
    stored = emulator.service.shadows.document(THING, "config")
    assert stored is not None and stored["state"]["reported"] == {"mode": "eco"}
    assert emulator.service.shadows.document(THING, None) is None  # the classic one untouched


async def test_package_shadow_takes_only_version_and_attributes(
    shadows: ShadowClient, emulator: Emulator
) -> None:
    reported = {"firmware": {"version": "2.1.0", "attributes": {"channel": "stable"}}}
    accepted = await shadows.update("$package", {"reported": reported})
    assert accepted.state == {"reported": reported}
    document = await shadows.get("$package")
    assert document.reported == reported
    assert document.metadata is None  # $package "doesn't update with metadata"
    with pytest.raises(ShadowInvalidRequest) as caught:
        await shadows.update("$package", {"reported": {"firmware": {"build": "17"}}})
    assert caught.value.code == 400
    assert "State contains an invalid node" in caught.value.message
    assert (await shadows.get("$package")).reported == reported  # nothing changed


async def test_absent_shadow_is_not_found(shadows: ShadowClient) -> None:
    with pytest.raises(ShadowNotFound) as caught:
        await shadows.get("never-written")
    assert caught.value.code == 404
    with pytest.raises(ShadowNotFound):
        await shadows.delete("never-written")


async def test_version_conflict_leaves_the_shadow_alone(
    shadows: ShadowClient, emulator: Emulator
) -> None:
    await shadows.update("cfg", {"reported": {"a": 1}})
    updated = await shadows.update("cfg", {"reported": {"a": 2}}, version=1)
    assert updated.version == 2
    with pytest.raises(ShadowVersionConflict) as caught:
        await shadows.update("cfg", {"reported": {"a": 3}}, version=1)
    assert caught.value.code == 409
    assert (await shadows.get("cfg")).reported == {"a": 2}
    assert await shadows.delete("cfg", version=2) == 2
    with pytest.raises(ShadowNotFound):
        await shadows.get("cfg")


async def test_a_state_over_the_size_limit_is_too_large(shadows: ShadowClient) -> None:
    with pytest.raises(ShadowTooLarge) as caught:
        await shadows.update("big", {"reported": {"blob": "x" * 9000}})
    assert caught.value.code == 413


async def test_replies_to_other_clients_never_answer_ours(
    shadows: ShadowClient, emulator: Emulator, mosquitto: Mosquitto
) -> None:
    """`/update/accepted` goes to every subscriber: an update made by another client (here
    the service itself, over its HTTP plane) is seen and ignored; ours is matched by token."""
    await shadows.update("$package", {"reported": {"app": {"version": "1"}}})
    ignored = shadows.exchange.stats.replies_ignored
    emulator.service.shadows.update(
        THING, "$package", {"state": {"reported": {"os": {"version": "12"}}}}
    )
    mine = await shadows.update("$package", {"reported": {"app": {"version": "2"}}})
    assert mine.state == {"reported": {"app": {"version": "2"}}}
    assert mine.version == 3
    assert shadows.exchange.stats.replies_ignored >= ignored + 1
    document = await shadows.get("$package")
    assert document.reported == {"app": {"version": "2"}, "os": {"version": "12"}}


async def test_no_answer_is_a_timeout_not_a_hang(mosquitto: Mosquitto) -> None:
    """No shadow service on the broker: the request ends at its deadline."""
    transport = await _device(mosquitto.port, "gw-shadow-alone")
    client = ShadowClient(transport, "gw-shadow-alone", request_timeout=0.5)
    await client.start()
    try:
        with pytest.raises(ShadowTimeout):
            await asyncio.wait_for(client.get("$package"), 10)
        assert client.exchange.stats.timeouts == 1
    finally:
        await client.close()
        await transport.disconnect()


async def test_throttled_and_internal_errors_are_retried(mosquitto: Mosquitto) -> None:
    """The emulator never throttles shadows (docs/emulator.md, Known differences), so a
    stand-in service answers on the broker: 429, then 500, then accepted. The client retries
    within its deadline; with a deadline too short for the retry, the 429 is raised."""
    thing = "gw-shadow-throttled"
    service = await _device(mosquitto.port, "stand-in-shadow-service")
    answers = [(429, "too many in flight"), (500, "Internal service failure")]
    received: list[dict[str, Any]] = []
    prefix = f"$aws/things/{thing}/shadow/name/s"

    def on_message(message: Message) -> None:
        body = json.loads(message.payload)
        received.append(body)
        token = body["clientToken"]
        if answers:
            code, text = answers.pop(0)
            reply = {"code": code, "message": text, "clientToken": token, "timestamp": 1}
            topic = f"{prefix}/update/rejected"
        else:
            reply = {"state": body["state"], "version": 7, "clientToken": token}
            topic = f"{prefix}/update/accepted"
        asyncio.get_running_loop().create_task(service.publish(topic, json.dumps(reply).encode()))

    service.set_message_callback(on_message)
    await service.subscribe(f"{prefix}/update")
    transport = await _device(mosquitto.port, thing)
    client = ShadowClient(transport, thing, request_timeout=10, retry_min=0.01, retry_max=0.05)
    await client.start()
    try:
        updated = await client.update("s", {"reported": {"k": "v"}})
        assert updated.version == 7
        assert client.retries == 2
        assert len({r["clientToken"] for r in received}) == 3  # a new token per attempt
        answers.append((429, "too many in flight"))
        hurried = ShadowClient(transport, thing, request_timeout=0.3, retry_min=5, retry_max=5)
        await client.close()
        await hurried.start()
        with pytest.raises(ShadowThrottled):
            await hurried.update("s", {"reported": {"k": "w"}})
        await hurried.close()
    finally:
        await client.close()
        await transport.disconnect()
        await service.disconnect()


async def test_request_unanswered_when_the_link_drops_is_published_again(
    fresh_mosquitto: Mosquitto,
) -> None:
    """The service is away when the request goes out; then the broker restarts (every session
    lost). After the reconnect the device subscribes again and publishes the request again with
    the same token, and the service, back meanwhile, answers it."""
    first = await start_emulator(fresh_mosquitto.port, tick_seconds=None)
    # the device reconnects after at least 2 s: by then the service is subscribed again, as
    # AWS always is
    config = replace(
        paho_connection(fresh_mosquitto.port), reconnect_min_seconds=2.0, reconnect_max_seconds=2.5
    )
    transport = PahoTransport(config, THING)
    await transport.connect(timeout=10)
    client = ShadowClient(transport, THING, request_timeout=30)
    await client.start()
    second: Emulator | None = None
    try:
        await client.update("$package", {"reported": {"fw": {"version": "1"}}})
        await first.stop()
        request = asyncio.create_task(
            client.update("$package", {"reported": {"fw": {"version": "2"}}})
        )
        async with asyncio.timeout(10):
            while client.exchange.stats.publishes < 2:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(fresh_mosquitto.restart)
        second = await start_emulator(
            fresh_mosquitto.port, tick_seconds=None, service=first.service
        )
        updated = await asyncio.wait_for(request, 30)
        assert updated.state == {"reported": {"fw": {"version": "2"}}}
        assert updated.version == 2
        assert client.exchange.stats.republishes == 1
        stored = first.service.shadows.document(THING, "$package")
        assert stored is not None
        assert stored["state"]["reported"] == {"fw": {"version": "2"}}
    finally:
        await client.close()
        await transport.disconnect()
        if second is not None:
            await second.stop()


async def test_jobs_and_shadow_clients_share_one_connection(
    emulator: Emulator, mosquitto: Mosquitto
) -> None:
    """One MQTT connection (one client id, as AWS IoT allows per thing): the Jobs client and the
    shadow client each get a view of it and see only their own topics."""
    transport = await _device(mosquitto.port, "gw-shared")
    link = SharedLink(transport)
    jobs = JobsClient(link.view(), "gw-shared", request_timeout=5)
    shadows = ShadowClient(link.view(), "gw-shared", request_timeout=5)
    await jobs.start()
    await shadows.start()
    try:
        emulator.service.create_job("shared-1", ["gw-shared"], {"operation": "noop"})
        execution = await jobs.start_next()
        assert execution is not None and execution.job_id == "shared-1"
        await shadows.update("$package", {"reported": {"app": {"version": "3"}}})
        await jobs.update("shared-1", "SUCCEEDED")
        assert str(emulator.service.execution("shared-1", "gw-shared").status) == "SUCCEEDED"
        assert (await shadows.get("$package")).reported == {"app": {"version": "3"}}
        assert jobs.stats.replies_ignored == 0  # no shadow message reached the Jobs client
        assert transport.is_connected
    finally:
        await jobs.close()
        await shadows.close()
        link.close()
        await transport.disconnect()


async def test_a_closed_client_refuses_and_fails_waiters(mosquitto: Mosquitto) -> None:
    transport = await _device(mosquitto.port, "gw-shadow-closing")
    client = ShadowClient(transport, "gw-shadow-closing", request_timeout=30)
    await client.start()
    waiting = asyncio.create_task(client.get("$package"))  # nobody answers on this broker...
    try:
        async with asyncio.timeout(10):
            while client.exchange.stats.publishes == 0:
                await asyncio.sleep(0.01)
        await client.close()  # ...so only close() ends it
        with pytest.raises(ShadowError, match="closed"):
            await waiting
        with pytest.raises(ShadowError, match="not started"):
            await client.get("$package")
        other = ShadowClient(transport, "gw-shadow-closing")
        await other.start()
        with pytest.raises(ValueError, match="invalid shadow name"):
            await other.get("bad/name")
        await other.close()
    finally:
        await transport.disconnect()


async def test_the_daemons_client_is_built_at_its_first_request(
    emulator: Emulator, mosquitto: Mosquitto
) -> None:
    """`FirstUseShadowClient` (the daemon's, issue 18) is the shadow client, built at its first
    request: started, it answers as the client does; never asked, it builds nothing; closed,
    it refuses as a closed client does."""
    from jobs_agent.shadow.first_use import FirstUseShadowClient

    transport = await _device(mosquitto.port)
    link = SharedLink(transport)
    try:
        with pytest.raises(ValueError, match="invalid thing name"):
            FirstUseShadowClient(link.view(), "bad/thing")
        idle = FirstUseShadowClient(link.view(), THING, request_timeout=5)
        await idle.start()
        await idle.close()
        assert not idle.built and idle.retries == 0
        with pytest.raises(ShadowError, match="closed"):
            await idle.start()
        with pytest.raises(ShadowError, match="not started"):
            await idle.get("$package")  # built now, closed as this was

        shadows = FirstUseShadowClient(link.view(), THING, request_timeout=5)
        await shadows.start()
        assert not shadows.built
        with pytest.raises(ShadowNotFound):
            await shadows.get("$package")
        assert shadows.built
        updated = await shadows.update("$package", {"reported": {"fw": {"version": "1"}}})
        assert (await shadows.get("$package")).version == updated.version
        assert await shadows.delete("$package") == updated.version
        await shadows.close()
        with pytest.raises(ShadowError, match="not started"):
            await shadows.get("$package")
    finally:
        link.close()
        await transport.disconnect()
