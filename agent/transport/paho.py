"""The paho-mqtt backend: any MQTT broker, e.g. a gateway's local mosquitto bridged to AWS IoT.

MQTT 5 rather than 3.1.1, because it carries what the agent needs to be operable: a session
expiry the operator configures (`session_expiry_seconds`; 3.1.1 only has "clean or not"), reason
codes on every SUBACK and PUBACK (a refused subscription is an error here, not silence), and a
reason on refused CONNACKs. mosquitto 2 and AWS IoT Core both speak it.

Sessions as in the awscrt backend: the first connection of a process starts clean
(`MQTT_CLEAN_START_FIRST_ONLY`), later reconnects rejoin the session for `session_expiry_seconds`.

Threads: paho's network loop runs in its own thread (`loop_start`). Every paho callback only
hands its arguments to the asyncio loop with `call_soon_threadsafe`; all state below is touched
on the loop thread, except the reconnect delay, which paho reads in its own thread.

Connecting: the first connection is made by `connect()` in a worker thread (`client.connect` and
`client.loop` until the CONNACK), so the real exception of a failure is seen and a permanent one
(TLS handshake failure, certificate refused, not authorised) raises `TransportError` at once
instead of being retried forever. After that paho reconnects by itself; the delay before each
attempt comes from `Backoff` (exponential with full jitter), set through `reconnect_delay_set`
just before paho waits, since paho's own backoff has no jitter.

Caveat: a publish whose PUBACK has not arrived when the link drops fails with
`NotConnectedError`, but paho keeps the message in its session and may still deliver it after
the reconnect: QoS 1 is at-least-once, and the Jobs protocol tolerates a duplicate update.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import Message, NotConnectedError, Transport, TransportError
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.topics import validate_topic_filter, validate_topic_name

log = structlog.get_logger("jobs_agent.transport.paho")

ALPN_MQTT = "x-amzn-mqtt-ca"
CONNECT_ATTEMPT_SECONDS = 10.0
"""Upper bound for one TCP+TLS+CONNACK attempt during the first connect."""
PERMANENT_CONNACK_CODES = {
    0x84,  # Unsupported Protocol Version
    0x85,  # Client Identifier not valid
    0x86,  # Bad User Name or Password
    0x87,  # Not authorized
    0x8A,  # Banned
    0x8C,  # Bad authentication method
}


class _Attempt:
    """What one first-connect attempt ended with."""

    def __init__(self, ok: bool, permanent: bool = False, reason: str = "") -> None:
        self.ok = ok
        self.permanent = permanent
        self.reason = reason


class PahoTransport(Transport):
    client_class: type[mqtt.Client] = mqtt.Client
    """The paho client class (a subclass may tune paho for its use, e.g. the emulator's)."""

    def __init__(self, config: PahoOptions, client_id: str) -> None:
        super().__init__()
        if not config.endpoint:
            raise TransportError("paho transport: connection.endpoint is required")
        self.config = config
        self.client_id = client_id
        self._backoff = Backoff(config.reconnect_min_seconds, config.reconnect_max_seconds)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        # Written by paho's thread, read by the first-connect worker in the same thread.
        self._connack: tuple[ReasonCode, bool] | None = None
        self._last_error = ""
        self._tls_alert = ""
        self._abort = threading.Event()
        self._client = self._make_client()

    # -- construction ------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = self.client_class(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if cfg.tls:
            client.tls_set_context(self._ssl_context())
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        client.connect_timeout = CONNECT_ATTEMPT_SECONDS
        client.on_socket_open = self._paho_socket_open
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_unsubscribe = self._paho_unsubscribe
        client.on_log = self._paho_log
        client.on_socket_close = self._paho_socket_close
        return client

    def _ssl_context(self) -> ssl.SSLContext:
        cfg = self.config
        try:
            context = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca else None)
            if cfg.cert is not None and cfg.key is not None:
                context.load_cert_chain(str(cfg.cert), str(cfg.key))
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                f"paho transport: cannot load TLS files (ca={cfg.ca}, cert={cfg.cert},"
                f" key={cfg.key}): {exc}"
            ) from None
        if cfg.alpn:
            context.set_alpn_protocols([ALPN_MQTT])
        return context

    def _open_connection(self) -> None:
        """TCP, TLS and CONNECT (blocking: run in a worker thread); the CONNACK comes later.
        The first connection of the process starts clean, later ones rejoin the session."""
        cfg = self.config
        self._client.connect(
            cfg.endpoint,
            cfg.port,
            keepalive=cfg.keepalive_seconds,
            clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._connect_properties(),
        )

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_seconds
        return properties

    # -- paho callbacks (paho's thread, or the first-connect worker) ---------------------------
    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _paho_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: 44-88 ms per small request/reply (MEASURED.md).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.warning("cannot set TCP_NODELAY on the MQTT socket", error=str(exc))

    def _paho_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # With TLS 1.3 a broker refusing our certificate sends its alert after the handshake;
        # paho often fails on writing CONNECT first ("EOF occurred in violation of protocol")
        # and never reads the alert. Read it here, before paho closes the socket, so the
        # operator gets "unknown ca" / "certificate required" instead of a vague EOF.
        if not isinstance(sock, ssl.SSLSocket):
            return
        try:
            sock.setblocking(False)
            sock.recv(1)
        except ssl.SSLError as exc:
            if not isinstance(exc, ssl.SSLWantReadError | ssl.SSLEOFError):
                self._tls_alert = str(exc)
        except OSError:
            pass

    def _paho_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # The only place paho reports why a read failed (e.g. a TLS alert from the broker).
        # Keep the first error of an attempt: later ones are consequences ("not connected").
        if level == mqtt.MQTT_LOG_ERR and not self._last_error:
            self._last_error = buf
        if level == mqtt.MQTT_LOG_ERR and "[SSL:" in buf and "ALERT" in buf and not self._tls_alert:
            self._tls_alert = buf[buf.index("[SSL:") :]

    def _schedule_retry_delay(self) -> None:
        # paho waits `min_delay` next, because reconnect_delay_set clears its doubling state.
        delay = self._backoff.next_delay()
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _paho_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = (reason, bool(flags.session_present))
        if reason.is_failure:
            self._schedule_retry_delay()
            if self._started:
                log.warning("connection refused by the broker", reason=str(reason))
            return
        self._backoff.reset()
        if self._started:
            self._call(self._link_restored, bool(flags.session_present))

    def _paho_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._schedule_retry_delay()

    def _paho_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._schedule_retry_delay()
        detail = self._tls_alert or self._last_error if reason.is_failure else ""
        detail = detail or str(reason)
        if self._started:  # during the first connect, _attempt() reads the error afterwards
            self._last_error = self._tls_alert = ""
        self._call(self._link_down, f"disconnected: {detail}")

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self._deliver, Message(message.topic, bytes(message.payload)))

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._call(self._resolve, mid, [reason])

    def _paho_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self._call(self._resolve, mid, list(reasons))

    def _paho_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self._call(self._resolve, mid, list(reasons))

    # -- loop side -----------------------------------------------------------------------------
    def _resolve(self, mid: int, reasons: list[ReasonCode]) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(NotConnectedError(reason))

    def _link_dropped(self, reason: str) -> None:
        self._fail_pending(f"connection lost: {reason}")

    def _expect(self, rc: MQTTErrorCode, mid: int | None, what: str) -> asyncio.Future[Any]:
        """A future for the acknowledgement of the packet paho just queued as `mid`."""
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"{what}: not connected")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"{what}: {mqtt.error_string(rc)}")
        # paho may already have called on_publish/on_subscribe in its thread, but that call is
        # queued behind us on this loop, so the future is in place when it runs.
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = future
        return future

    async def _send_subscribe(self, topic_filter: str) -> None:
        what = f"subscribe {topic_filter}"
        rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))
        reasons: list[ReasonCode] = await self._expect(rc, mid, what)
        refused = [r for r in reasons if r.is_failure]
        if refused:
            raise TransportError(f"{what}: refused by the broker ({refused[0]})")

    # -- first connect -------------------------------------------------------------------------
    def _attempt(self, deadline: float) -> _Attempt:
        """One blocking connect, until CONNACK or failure; runs in a worker thread."""
        self._connack = None
        self._last_error = ""
        self._tls_alert = ""
        try:
            self._open_connection()
        except ssl.SSLError as exc:
            return _Attempt(False, True, f"TLS handshake failed: {exc}")
        except (OSError, ValueError) as exc:
            return _Attempt(False, False, str(exc) or type(exc).__name__)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while self._connack is None and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            if self._abort.is_set() or time.monotonic() > deadline:
                self._client.disconnect()
                return _Attempt(False, False, "no CONNACK in time")
            rc = self._client.loop(timeout=0.05)
        if self._connack is None:
            self._client.disconnect()
            if self._tls_alert:
                # TLS 1.3: the broker's verdict on our certificate came after the handshake.
                return _Attempt(
                    False, True, f"TLS session refused by the broker: {self._tls_alert}"
                )
            error = self._last_error or mqtt.error_string(rc)
            return _Attempt(False, False, f"connection closed before CONNACK: {error}")
        reason, _session_present = self._connack
        if reason.is_failure:
            self._client.disconnect()
            permanent = reason.value in PERMANENT_CONNACK_CODES
            return _Attempt(False, permanent, f"connection refused by the broker: {reason}")
        if self._abort.is_set():  # connect() was cancelled while we were busy
            self._client.disconnect()
            return _Attempt(False, False, "cancelled")
        return _Attempt(True)

    async def _attempt_once(self, deadline: float) -> _Attempt:
        """One first-connect attempt until CONNACK or `deadline` (paho's blocking connect runs
        in a worker thread so the real error is visible)."""
        try:
            return await asyncio.to_thread(self._attempt, deadline)
        except asyncio.CancelledError:
            self._abort.set()
            raise

    async def _connect_with_retries(self, timeout: float | None) -> None:
        """Attempt, back off with jitter, attempt again until connected or `timeout`; a
        permanent refusal (TLS, credentials) raises at once instead of retrying forever."""
        cfg = self.config
        where = f"{cfg.endpoint}:{cfg.port} as {self.client_id}"
        start = time.monotonic()
        backoff = Backoff(cfg.reconnect_min_seconds, cfg.reconnect_max_seconds)
        last = ""
        while True:
            remaining = None if timeout is None else start + timeout - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TransportError(f"cannot connect to {where} within {timeout}s: {last}")
            deadline = time.monotonic() + min(
                CONNECT_ATTEMPT_SECONDS, remaining if remaining is not None else 1e9
            )
            outcome = await self._attempt_once(deadline)
            if outcome.ok:
                return
            if outcome.permanent:
                raise TransportError(f"cannot connect to {where}: {outcome.reason}")
            last = outcome.reason
            delay = backoff.next_delay()
            log.warning(
                "cannot connect; retrying",
                endpoint=cfg.endpoint,
                reason=last,
                delay=round(delay, 2),
            )
            remaining = None if timeout is None else start + timeout - time.monotonic()
            await asyncio.sleep(delay if remaining is None else max(0.0, min(delay, remaining)))

    async def connect(self, timeout: float | None = None) -> None:
        if self._started:
            await self.wait_connected(timeout)
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._abort.clear()
        await self._connect_with_retries(timeout)
        self._backoff.reset()
        self._schedule_retry_delay()
        self._started = True
        self._client.loop_start()
        self._mark_up()
        log.info(
            "connected",
            endpoint=self.config.endpoint,
            port=self.config.port,
            client_id=self.client_id,
        )

    async def disconnect(self) -> None:
        if not self._begin_disconnect():
            return
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._end_disconnect()

    def _begin_disconnect(self) -> bool:
        """Stop reconnecting; False when there was no link to close (idempotent)."""
        self._abort.set()
        open_link = self._started and not self._closing
        self._closing = True
        self._started = False
        if open_link:
            self._mark_down()
        return open_link

    def _end_disconnect(self) -> None:
        self._fail_pending("disconnected")
        self._cancel_tasks()

    # -- operations ----------------------------------------------------------------------------
    def _require_up(self, what: str) -> None:
        if not self.is_connected:
            raise NotConnectedError(f"{what}: not connected to {self.config.endpoint}")

    async def subscribe(self, topic_filter: str) -> None:
        validate_topic_filter(topic_filter)
        self._require_up(f"subscribe {topic_filter}")
        await self._send_subscribe(topic_filter)
        self._subscriptions.add(topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        what = f"unsubscribe {topic_filter}"
        self._require_up(what)
        rc, mid = self._client.unsubscribe(topic_filter)
        await self._expect(rc, mid, what)
        self._subscriptions.discard(topic_filter)

    async def publish(self, topic: str, payload: bytes) -> None:
        validate_topic_name(topic)
        what = f"publish {topic}"
        self._require_up(what)
        info = self._client.publish(topic, payload, qos=1)
        reasons: list[ReasonCode] = await self._expect(info.rc, info.mid, what)
        if reasons and reasons[0].is_failure:
            raise TransportError(f"{what}: refused by the broker ({reasons[0]})")
