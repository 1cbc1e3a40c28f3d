"""The emulator as a library: `async with EmbeddedEmulator(bus) as emu:` and a device on the
same `LocalBus` talks to AWS IoT Jobs (and the Device Shadow service and MQTT-based file
delivery) without a broker, a socket or a thread.

Used by `jobs-agent demo` and by the engine's fast tests. The HTTP planes are optional
(`http_port=`), for tests that want boto3 against the same service.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import TracebackType

from jobs_agent.emulator.clock import Clock
from jobs_agent.emulator.http_api import HttpApi
from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.mqtt_frontend import MqttFrontend
from jobs_agent.emulator.readings import DOCUMENTED, Readings
from jobs_agent.emulator.service import JobsService
from jobs_agent.emulator.shadow_mqtt import ShadowMqtt
from jobs_agent.emulator.store import StateStore
from jobs_agent.emulator.streams_mqtt import StreamsMqtt
from jobs_agent.transport.base import Transport
from jobs_agent.transport.local import LocalBus, LocalTransport

EMULATOR_CLIENT_ID = "aws-iot-jobs-emulator"
DEFAULT_TICK_SECONDS = 1.0


async def run_ticker(service: JobsService, interval: float) -> None:
    """Evaluate the service's timers every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)  # the timer period itself, not a synchronisation wait
        service.tick()


class Emulator:
    """A service with its MQTT front ends (Jobs, Device Shadow, streams) on one `MqttLink`, its
    timer task and optional HTTP planes, on any transport.

    `EmbeddedEmulator` (local bus) and `jobs-agent sim serve` (`BrokerTransport`) are both this
    class.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        clock: Clock | None = None,
        service: JobsService | None = None,
        state_path: Path | str | None = None,
        throttle_rate: float = 0.0,
        internal_error_rate: float = 0.0,
        seed: int | None = None,
        http_host: str = "127.0.0.1",
        http_port: int | None = None,
        tick_seconds: float | None = DEFAULT_TICK_SECONDS,
        readings: Readings = DOCUMENTED,
    ) -> None:
        self._store: StateStore | None = None
        if service is None:
            if state_path is not None:
                self._store = StateStore(state_path)
            service = JobsService(
                clock,
                throttle_rate=throttle_rate,
                internal_error_rate=internal_error_rate,
                seed=seed,
                store=self._store,
                readings=readings,
            )
        self.service = service
        self.transport = transport
        self.link = MqttLink(transport)
        self.frontend = MqttFrontend(service, self.link)
        self.shadow_mqtt = ShadowMqtt(service.shadows, self.link)
        self.streams_mqtt = StreamsMqtt(
            service.streams,
            self.link,
            json_payload_base64=service.readings.stream_json_payload_base64,
        )
        self.http: HttpApi | None = (
            HttpApi(service, http_host, http_port) if http_port is not None else None
        )
        self._tick_seconds = tick_seconds
        self._ticker: asyncio.Task[None] | None = None

    @property
    def http_endpoint(self) -> str | None:
        """`http://host:port` of the HTTP planes, once started (None without them)."""
        return None if self.http is None else self.http.endpoint

    async def start(self, connect_timeout: float | None = 30.0) -> None:
        await self.link.start(connect_timeout)
        self.frontend.start()
        self.shadow_mqtt.start()
        if self.http is not None:
            self.http.start()
        if self._tick_seconds:
            self._ticker = asyncio.create_task(run_ticker(self.service, self._tick_seconds))

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self.http is not None:
            # shutdown() waits for the server loop's next poll: not on the event loop's thread
            await asyncio.to_thread(self.http.stop)
        self.frontend.stop()
        self.shadow_mqtt.stop()
        await self.link.stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class BusTransport(LocalTransport):
    """The emulator's end of the in-process bus: a publish is routed synchronously, so the
    link hands each message over without a task (link.py). No Local, as over a broker
    (broker.py): the emulator never hears its own replies and events."""

    no_local = True

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        self.bus._publish(self, topic, payload)


class EmbeddedEmulator(Emulator):
    """The emulator on an in-process `LocalBus` (no broker; HTTP only if `http_port` is given)."""

    def __init__(
        self,
        bus: LocalBus,
        *,
        clock: Clock | None = None,
        state_path: Path | str | None = None,
        throttle_rate: float = 0.0,
        seed: int | None = None,
        http_port: int | None = None,
        tick_seconds: float | None = DEFAULT_TICK_SECONDS,
        client_id: str = EMULATOR_CLIENT_ID,
        readings: Readings = DOCUMENTED,
    ) -> None:
        super().__init__(
            BusTransport(bus, client_id),
            clock=clock,
            state_path=state_path,
            throttle_rate=throttle_rate,
            seed=seed,
            http_port=http_port,
            tick_seconds=tick_seconds,
            readings=readings,
        )
        self.bus = bus

    async def __aenter__(self) -> EmbeddedEmulator:
        await self.start()
        return self
