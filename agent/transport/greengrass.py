"""The Greengrass backend: MQTT to AWS IoT Core through the nucleus's IPC service.

A component does not hold the IoT connection itself; the nucleus does, and the component asks it
with `PublishToIoTCore` / `SubscribeToIoTCore` (QoS AT_LEAST_ONCE) over a local IPC socket
(`awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2`). What that means here:

* `connect()` opens the IPC connection; it fails at once (`TransportError`) when the process is
  not a Greengrass component, because no retry would make a nucleus appear.
* The state of the nucleus's own cloud link is followed with `SubscribeToIoTCoreConnectionStatus`
  where the nucleus offers it: DISCONNECTED is reported as connection-lost (and `publish` raises
  `NotConnectedError`), CONNECTED as connection-resumed with `session_present=True`, since the
  nucleus keeps the component's subscriptions. A nucleus without that operation is treated as
  always connected.
* Each subscription is its own IPC stream. A stream that closes or fails without being asked to
  is taken as a lost link: connection-lost is reported, the stream is reopened with backoff, and
  connection-resumed(`session_present=False`) follows once every lost stream is open again.
* `publish` returns when the nucleus accepted the message (it spools it for the cloud), which is
  the acknowledgement IPC offers; it is not the cloud's PUBACK.

All IPC callbacks arrive on the IPC client's threads and are handed to the loop with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import Message, NotConnectedError, Transport, TransportError
from jobs_agent.transport.topics import validate_topic_filter, validate_topic_name

log = structlog.get_logger("jobs_agent.transport.greengrass")

QOS_AT_LEAST_ONCE = "1"
"""`awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE`, spelled out to keep the import lazy."""
CONNECTED = "CONNECTED"
IpcClientFactory = Callable[[], Any]
"""Returns an object with the `GreengrassCoreIPCClientV2` methods used here."""


def _default_client() -> Any:
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    return GreengrassCoreIPCClientV2()


class GreengrassTransport(Transport):
    def __init__(
        self,
        client_factory: IpcClientFactory | None = None,
        *,
        reconnect_min_seconds: float = 1.0,
        reconnect_max_seconds: float = 120.0,
    ) -> None:
        super().__init__()
        self._factory = client_factory or _default_client
        self._backoff = Backoff(reconnect_min_seconds, reconnect_max_seconds)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, Any] = {}
        """Open subscription streams (the IPC operation objects) by topic filter."""
        self._broken: set[str] = set()
        """Remembered filters whose stream closed unexpectedly and is being reopened."""
        self._status_stream: Any = None
        self._cloud_up = True
        self._repair: asyncio.Task[None] | None = None

    # -- IPC callbacks (IPC threads) -----------------------------------------------------------
    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _stream_handlers(self, topic_filter: str) -> dict[str, Any]:
        def on_event(event: Any) -> None:
            message = getattr(event, "message", None)
            if message is not None and message.topic_name is not None:
                payload = message.payload
                data = payload.encode() if isinstance(payload, str) else bytes(payload or b"")
                self._call(self._deliver, Message(message.topic_name, data))

        def on_error(error: Exception) -> bool:
            self._call(self._stream_lost, topic_filter, f"stream error: {error}")
            return True  # close it; it is reopened from the loop

        def on_closed() -> None:
            self._call(self._stream_lost, topic_filter, "stream closed")

        return {
            "on_stream_event": on_event,
            "on_stream_error": on_error,
            "on_stream_closed": on_closed,
        }

    def _status_event(self, event: Any) -> None:
        status = getattr(getattr(event, "connection_status_event", None), "status", None)
        if status is not None:
            self._call(self._cloud_status, status == CONNECTED)

    # -- loop side -----------------------------------------------------------------------------
    def _cloud_status(self, up: bool) -> None:
        if self._closing or up == self._cloud_up:
            return
        self._cloud_up = up
        if not up:
            self._link_down("the Greengrass nucleus lost its connection to AWS IoT Core")
        elif not self._broken:
            self._mark_up()
            self._connection_resumed(True)

    def _stream_lost(self, topic_filter: str, reason: str) -> None:
        if self._closing or self._streams.pop(topic_filter, None) is None:
            return  # closed on purpose (unsubscribe, disconnect) or already handled
        self._broken.add(topic_filter)
        self._link_down(f"subscription {topic_filter}: {reason}")
        if self._repair is None or self._repair.done():
            self._repair = asyncio.ensure_future(self._reopen_streams())

    async def _reopen_streams(self) -> None:
        while self._broken and not self._closing:
            await asyncio.sleep(self._backoff.next_delay())
            for topic_filter in sorted(self._broken):
                try:
                    await self._open_stream(topic_filter)
                except TransportError as exc:
                    log.warning(
                        "cannot subscribe again after reconnecting",
                        topic_filter=topic_filter,
                        error=str(exc),
                    )
                    break
                self._broken.discard(topic_filter)
        if not self._closing and self._cloud_up:
            self._backoff.reset()
            self._mark_up()
            self._connection_resumed(False)

    async def _open_stream(self, topic_filter: str) -> None:
        try:
            future, operation = self._client.subscribe_to_iot_core_async(
                topic_name=topic_filter,
                qos=QOS_AT_LEAST_ONCE,
                **self._stream_handlers(topic_filter),
            )
            self._streams[topic_filter] = operation
            await asyncio.wrap_future(future)
        except Exception as exc:
            self._streams.pop(topic_filter, None)
            raise TransportError(f"subscribe {topic_filter} over Greengrass IPC: {exc}") from exc

    # -- the Transport contract ----------------------------------------------------------------
    async def connect(self, timeout: float | None = None) -> None:
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self._client = await asyncio.wait_for(asyncio.to_thread(self._factory), timeout)
        except TimeoutError:
            raise TransportError(f"no Greengrass IPC connection within {timeout}s") from None
        except Exception as exc:
            raise TransportError(
                "cannot connect to the Greengrass nucleus over IPC (is this process running as"
                f" a Greengrass component with aws.greengrass#PublishToIoTCore access?): {exc}"
            ) from exc
        await self._follow_cloud_status()
        if self._cloud_up:
            self._mark_up()
        log.info("connected", via="greengrass-ipc", cloud_connected=self._cloud_up)

    async def _follow_cloud_status(self) -> None:
        """Subscribe to the nucleus's cloud link status, where the nucleus supports it."""
        subscribe = getattr(self._client, "subscribe_to_iot_core_connection_status_async", None)
        if subscribe is None:
            return
        try:
            future, self._status_stream = subscribe(on_stream_event=self._status_event)
            await asyncio.wrap_future(future)  # the response is empty; events carry the status
        except Exception as exc:  # an older nucleus: no status, assume connected
            log.info("cloud connection status unavailable", error=str(exc))
            self._status_stream = None

    async def disconnect(self) -> None:
        if self._client is None or self._closing:
            return
        self._closing = True
        self._mark_down()
        if self._repair is not None:
            self._repair.cancel()
        operations = [*self._streams.values(), self._status_stream]
        self._streams.clear()
        for operation in operations:
            if operation is not None:
                try:
                    await asyncio.wrap_future(operation.close())
                except Exception as exc:  # closing an already broken stream
                    log.debug("cannot close an IPC stream", error=str(exc))
        client, self._client = self._client, None
        closed: concurrent.futures.Future[Any] = client.close(executor_wait=False)
        try:
            await asyncio.wrap_future(closed)
        except Exception as exc:
            log.debug("cannot close the IPC client", error=str(exc))

    def _require_up(self, what: str) -> None:
        if self._client is None or not self.is_connected:
            raise NotConnectedError(f"{what}: not connected (Greengrass IPC)")

    async def subscribe(self, topic_filter: str) -> None:
        validate_topic_filter(topic_filter)
        self._require_up(f"subscribe {topic_filter}")
        if topic_filter not in self._streams:
            await self._open_stream(topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._require_up(f"unsubscribe {topic_filter}")
        self._broken.discard(topic_filter)
        operation = self._streams.pop(topic_filter, None)
        if operation is not None:
            await asyncio.wrap_future(operation.close())

    async def publish(self, topic: str, payload: bytes) -> None:
        validate_topic_name(topic)
        what = f"publish {topic}"
        self._require_up(what)
        try:
            future = self._client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=payload
            )
            await asyncio.wrap_future(future)
        except Exception as exc:
            raise TransportError(f"{what} over Greengrass IPC: {exc}") from exc
