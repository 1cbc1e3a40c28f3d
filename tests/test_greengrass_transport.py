"""The Transport suite over the Greengrass IPC backend, with the IPC client replaced.

No Greengrass nucleus can run here (it needs a provisioned core device and its own JVM service),
so the IPC client is replaced at its narrowest boundary: `FakeIpcClient` has the four
`GreengrassCoreIPCClientV2` methods the transport calls (`publish_to_iot_core_async`,
`subscribe_to_iot_core_async`, `subscribe_to_iot_core_connection_status_async`, `close`), returns
`concurrent.futures.Future`s and stream operations like the real one, runs stream callbacks on an
executor thread like the real one, and routes messages through a `LocalBus` standing in for
AWS IoT Core. An outage of that bus is what the nucleus reports as DISCONNECTED/CONNECTED.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from awsiot.greengrasscoreipc import model

from jobs_agent.config import AgentConfig, ConnectionConfig
from jobs_agent.transport.base import Message, Transport, TransportError
from jobs_agent.transport.factory import create_transport
from jobs_agent.transport.greengrass import GreengrassTransport
from jobs_agent.transport.local import LocalBus, LocalTransport
from tests.test_transport import WAIT, Backend, Inbox, TransportSuite

_ids = itertools.count()


class _Operation:
    """A stream operation: `close()` ends the stream like the real IPC operation."""

    def __init__(self, transport: LocalTransport, on_closed: Callable[[], None] | None) -> None:
        self.transport = transport
        self.on_closed = on_closed

    def close(self) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        task = asyncio.ensure_future(self.transport.disconnect())
        task.add_done_callback(lambda _: future.set_result(None))
        return future


class FakeIpcClient:
    """`GreengrassCoreIPCClientV2` semantics over a LocalBus (see the module docstring)."""

    def __init__(self, bus: LocalBus, loop: asyncio.AbstractEventLoop) -> None:
        self.bus = bus
        self.loop = loop
        self.executor = concurrent.futures.ThreadPoolExecutor(1)  # one thread keeps order
        self.closed = False

    def _link(self, name: str) -> LocalTransport:
        return LocalTransport(self.bus, f"ipc-{name}-{next(_ids)}")

    def _run(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        """Run on the loop; complete a concurrent future, as the IPC client's threads would."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def publish_to_iot_core_async(
        self, *, topic_name: str, qos: str, payload: bytes
    ) -> concurrent.futures.Future[Any]:
        assert qos == model.QOS.AT_LEAST_ONCE
        if not self.bus.online:
            failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
            failed.set_exception(model.ServiceError(message="not connected to IoT Core"))
            return failed

        async def publish() -> model.PublishToIoTCoreResponse:
            link = self._link("pub")
            await link.connect(WAIT)
            try:
                await link.publish(topic_name, payload)
            finally:
                await link.disconnect()
            return model.PublishToIoTCoreResponse()

        return self._run(publish())

    def subscribe_to_iot_core_async(
        self,
        *,
        topic_name: str,
        qos: str,
        on_stream_event: Callable[[model.IoTCoreMessage], None],
        on_stream_error: Callable[[Exception], bool],
        on_stream_closed: Callable[[], None],
    ) -> tuple[concurrent.futures.Future[Any], _Operation]:
        assert qos == model.QOS.AT_LEAST_ONCE
        link = self._link("sub")

        def deliver(message: Message) -> None:
            event = model.IoTCoreMessage(
                message=model.MQTTMessage(topic_name=message.topic, payload=message.payload)
            )
            self.executor.submit(on_stream_event, event)

        link.set_message_callback(deliver)

        async def subscribe() -> model.SubscribeToIoTCoreResponse:
            await link.connect(WAIT)
            await link.subscribe(topic_name)
            return model.SubscribeToIoTCoreResponse()

        return self._run(subscribe()), _Operation(link, on_stream_closed)

    def subscribe_to_iot_core_connection_status_async(
        self, *, on_stream_event: Callable[[model.IoTCoreConnectionStatusEvent], None]
    ) -> tuple[concurrent.futures.Future[Any], _Operation]:
        link = self._link("status")

        def status(value: str) -> None:
            event = model.IoTCoreConnectionStatusEvent(
                connection_status_event=model.ConnectionStatusEvent(status=value)
            )
            self.executor.submit(on_stream_event, event)

        link.set_connection_callbacks(
            on_lost=lambda _reason: status(model.ConnectionStatus.DISCONNECTED),
            on_resumed=lambda _session: status(model.ConnectionStatus.CONNECTED),
        )

        async def open_stream() -> model.SubscribeToIoTCoreConnectionStatusResponse:
            await link.connect(WAIT)
            return model.SubscribeToIoTCoreConnectionStatusResponse()

        return self._run(open_stream()), _Operation(link, None)

    def close(self, *, executor_wait: bool = True) -> concurrent.futures.Future[None]:
        self.closed = True
        self.executor.shutdown(wait=executor_wait)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done


class GreengrassBackend(Backend):
    name = "greengrass"
    session_survives_outage = True  # the nucleus keeps the component's subscriptions

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.bus = LocalBus()
        self.loop = loop

    def _make(self, client_id: str, rogue: bool) -> Transport:
        return GreengrassTransport(
            lambda: FakeIpcClient(self.bus, self.loop),
            reconnect_min_seconds=0.01,
            reconnect_max_seconds=0.05,
        )

    async def outage(self) -> None:
        self.bus.set_online(False)

    async def restore(self) -> None:
        self.bus.set_online(True)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    chosen = GreengrassBackend(asyncio.get_running_loop())
    try:
        yield chosen
    finally:
        await chosen.close()


class TestGreengrassTransport(TransportSuite):
    pass


async def test_a_stream_closed_by_the_nucleus_is_reopened() -> None:
    """A subscription stream ending on its own is a lost link; the transport reopens it."""
    bus = LocalBus()
    clients: list[FakeIpcClient] = []
    loop = asyncio.get_running_loop()

    def factory() -> FakeIpcClient:
        clients.append(FakeIpcClient(bus, loop))
        return clients[-1]

    transport = GreengrassTransport(factory, reconnect_min_seconds=0.01, reconnect_max_seconds=0.05)
    inbox = Inbox(transport)
    await transport.connect(WAIT)
    await transport.subscribe("jobs/notify")
    operation = transport._streams["jobs/notify"]
    operation.on_closed()  # what the IPC client calls when the nucleus ends the stream
    assert "stream closed" in await asyncio.wait_for(inbox.lost.get(), WAIT)
    assert await asyncio.wait_for(inbox.resumed.get(), WAIT) is False
    await transport.publish("jobs/notify", b"again")
    assert await inbox.next() == Message("jobs/notify", b"again")
    await transport.disconnect()


async def test_connect_outside_greengrass_fails_clearly() -> None:
    def no_nucleus() -> Any:
        raise KeyError("SVCUID")  # what the real client raises without the nucleus's env

    transport = GreengrassTransport(no_nucleus)
    with pytest.raises(TransportError, match="Greengrass component"):
        await transport.connect(WAIT)


def test_factory_builds_each_backend_lazily() -> None:
    bus = LocalBus()
    local = create_transport(
        AgentConfig(thing_name="gw", connection=ConnectionConfig(transport="local")), bus=bus
    )
    assert isinstance(local, LocalTransport)
    with pytest.raises(TransportError, match="LocalBus"):
        create_transport(
            AgentConfig(thing_name="gw", connection=ConnectionConfig(transport="local"))
        )
    greengrass = create_transport(
        AgentConfig(thing_name="gw", connection=ConnectionConfig(transport="greengrass"))
    )
    assert isinstance(greengrass, GreengrassTransport)
    paho = create_transport(
        AgentConfig(
            thing_name="gw",
            connection=ConnectionConfig(transport="paho", endpoint="localhost", tls=False),
        )
    )
    assert type(paho).__name__ == "PahoTransport"
