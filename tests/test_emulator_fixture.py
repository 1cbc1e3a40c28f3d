"""The emulator the tests share (tests/fixtures/emulator.py, tests/harness.py `start_emulator`),
on the session mosquitto."""

from __future__ import annotations

from jobs_agent.transport.paho import PahoTransport
from tests.fixtures.broker import Mosquitto
from tests.harness import start_emulator


async def test_two_emulators_on_one_broker_keep_their_own_sessions(mosquitto: Mosquitto) -> None:
    """A test that runs a second emulator beside a first (a second service, a restart) must not
    take the first one's MQTT session over: the broker would close one connection each time the
    other reconnects. The ids once came from `id()` of the keyword dict, freed after each call:
    two calls in a row got the same address, so the same id."""
    first = await start_emulator(mosquitto.port)
    try:
        second = await start_emulator(mosquitto.port)
        try:
            assert isinstance(first.transport, PahoTransport)
            assert isinstance(second.transport, PahoTransport)
            assert first.transport.client_id != second.transport.client_id
        finally:
            await second.stop()
    finally:
        await first.stop()
