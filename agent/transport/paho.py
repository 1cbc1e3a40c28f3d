"""The paho-mqtt backend: any MQTT broker, e.g. a gateway's local mosquitto bridged to AWS IoT.

MQTT 5 rather than 3.1.1, because it carries what the agent needs to be operable: a session
expiry the operator configures (`session_expiry_seconds`; 3.1.1 only has "clean or not"), reason
codes on every SUBACK and PUBACK (a refused subscription is an error here, not silence), and a
reason on refused CONNACKs. mosquitto 2 and AWS IoT Core both speak it.

Sessions as in the awscrt backend: the first connection of a process starts clean
(`MQTT_CLEAN_START_FIRST_ONLY`), later reconnects rejoin the session for `session_expiry_seconds`.

Driven by the asyncio loop, with no network thread: the socket is registered with the loop
(paho's external-loop hooks, then `loop_read`, `loop_write` and `loop_misc`). A message is read,
decoded and handed to the listener in one loop callback, where a network thread (`loop_start`)
cost a thread hop per message (`call_soon_threadsafe`, a wake-up, two GIL hand-offs), and a
thread per connection (a thousand in `sim fleet`). An idle connection costs nothing.

Writes: a packet is written at once (paho with an external loop would wait for the loop to
report the socket writable), and the client writes all that is queued in one `send`. The PUBACKs
of the messages one read brought are held back until the next packet out, which is usually the
agent's request in reaction to them, or `ACK_DELAY_SECONDS`: one `send` and one wake-up of the
broker, where there was one per PUBACK (issue 18: three on the way from a job's notification to
its start-next request). QoS 1 lets the acknowledgement come later; the broker only holds back
further messages past its in-flight window.

Blocking steps stay off the loop: the TCP connect and TLS handshake of each (re)connection run
in a worker thread (`asyncio.to_thread`); after them the socket is non-blocking and served by the
loop. The first connection is awaited until its CONNACK, so the real reason of a failure is seen
and a permanent one (TLS handshake failure, certificate refused, not authorised) raises
`TransportError` at once instead of being retried forever. After that the transport reconnects by
itself, waiting a `Backoff` delay (exponential with full jitter) before each attempt.

This module is longer than 500 lines: it is paho driven by the event loop, the socket hooks,
reads, writes and held acknowledgements, connection attempts and reconnects, which all share one
paho client's state; split, each part would reach into the others' paho internals.

Caveat: a publish whose PUBACK has not arrived when the link drops fails with
`NotConnectedError`, but paho keeps the message in its session and may still deliver it after
the reconnect: QoS 1 is at-least-once, and the Jobs protocol tolerates a duplicate update.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import (
    FailureCallback,
    Message,
    NotConnectedError,
    Transport,
    TransportError,
)
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho_client import PUBACK_OK, DeviceClient, ShortPathClient
from jobs_agent.transport.paho_connect import (
    MISC_MAX_SECONDS,
    MISC_MIN_SECONDS,
    PERMANENT_CONNACK_CODES,
    Attempt,
    connect_properties,
    connect_with_retries,
    new_client,
    read_tls_alert,
)
from jobs_agent.transport.topics import validate_topic_filter, validate_topic_name

log = structlog.get_logger("jobs_agent.transport.paho")

ACK_DELAY_SECONDS = 0.002
"""How long the acknowledgements of what was read wait for a packet out to travel with (the
agent's request in reaction to a notification leaves within a fraction of that)."""


class PahoTransport(Transport):
    client_class: type[mqtt.Client] = DeviceClient
    """The paho client class (a subclass may tune paho for its use, e.g. the emulator's)."""

    def __init__(self, config: PahoOptions, client_id: str) -> None:
        super().__init__()
        if not config.endpoint:
            raise TransportError("paho transport: connection.endpoint is required")
        self.config = config
        self.client_id = client_id
        self._backoff = Backoff(config.reconnect_min_seconds, config.reconnect_max_seconds)
        self._pending: dict[int, asyncio.Future[Any] | _Submitted] = {}
        """What waits for the acknowledgement of each packet paho queued, by its mid."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._started = False
        self._connack: tuple[ReasonCode, bool] | None = None
        self._last_error = ""
        self._tls_alert = ""
        self._fd: int | None = None
        self._sock: Any = None
        self._writing = False
        self._reading = False
        """Inside `_readable`: what paho queues meanwhile (acknowledgements) is held back."""
        self._ack_flush: asyncio.TimerHandle | None = None
        self._connack_waiter: asyncio.Future[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        # Check keep-alive often enough that a PINGREQ is at most 5 % late (the broker allows
        # 50 %), but no more than once a second: idle connections must cost nothing.
        self._misc_interval = min(
            MISC_MAX_SECONDS, max(MISC_MIN_SECONDS, config.keepalive_seconds / 20)
        )
        self._client = self._make_client()

    # -- construction ------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = new_client(self.client_class, self.config, self.client_id)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_unsubscribe = self._paho_unsubscribe
        client.on_log = self._paho_log
        if isinstance(client, DeviceClient):
            client.on_qos1 = self._qos1_received
            client.on_acked = self._puback_ok
        return client

    def _open_connection(self) -> None:
        """TCP, TLS and CONNECT (blocking: run in a worker thread); the CONNACK comes later.
        The first connection of the process starts clean, later ones rejoin the session."""
        cfg = self.config
        self._client.connect(
            cfg.endpoint,
            cfg.port,
            keepalive=cfg.keepalive_seconds,
            clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_properties(cfg),
        )

    # -- handing work to the loop --------------------------------------------------------------
    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on the loop thread: now if we are on it (paho driven by the loop),
        else as soon as possible (paho called from the connect worker)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` on the loop after paho's current call returns, so that a change of
        the link's state (restore, loss) never re-enters paho from inside its callback."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    # -- paho's socket hooks (loop thread, or the connect worker) --------------------------------
    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: 44-88 ms per small request/reply (MEASURED.md).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.warning("cannot set TCP_NODELAY on the MQTT socket", error=str(exc))
        self._on_loop(self._add_reader, sock)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd if self._sock is sock else None
        self._tls_alert = read_tls_alert(sock) or self._tls_alert
        if fd is not None:
            self._sock = None
            self._fd = None
            self._on_loop(self._remove_fd, fd)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # On the loop, write now; what does not go at once (or cannot go now, inside one of
        # our callbacks) waits for the loop to report the socket writable. What is queued
        # while a read is handled (the PUBACKs of the messages read) waits for the next packet
        # out, which the agent's reaction usually is, or ACK_DELAY_SECONDS: one `send` then
        # carries them all (issue 18: a `send` and a wake-up of the broker per PUBACK, three
        # on the way from a job's notification to its request, before).
        if (
            threading.get_ident() == self._loop_thread
            and sock is self._sock
            and isinstance(client, DeviceClient)
        ):
            if self._reading:
                client._registered_write = False  # the next packet queued asks again
                self._hold_acks()
                return
            if self._ack_flush is not None:
                self._ack_flush.cancel()
                self._ack_flush = None
            if client.write_now():
                if client.want_write():
                    self._add_writer(sock)  # the socket buffer is full: wait until it drains
                elif self._writing:
                    self._remove_writer(sock)  # what a writer waited for went now
                return
        self._on_loop(self._add_writer, sock)

    def _flush_acks(self) -> None:
        """What a read queued and no packet out carried within ACK_DELAY_SECONDS."""
        self._ack_flush = None
        client = self._client
        if self._sock is not None and client.want_write():
            client._call_socket_register_write()

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() < 0:
            return
        if self._fd is not None and self._sock is not sock:
            self._remove_fd(self._fd)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock is not self._sock:
            if self._sock is not None or sock.fileno() < 0:
                return  # a socket already closed and replaced
            self._add_reader(sock)
        if not self._writing and self._fd is not None:
            self._writing = True
            self._loop.add_writer(self._fd, self._writable)

    def _remove_writer(self, sock: Any) -> None:
        if self._writing and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._writing = False

    def _remove_fd(self, fd: int) -> None:
        if self._ack_flush is not None:  # the link's acknowledgements went with it
            self._ack_flush.cancel()
            self._ack_flush = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        self._writing = False

    def _readable(self) -> None:
        client = self._client
        buffer = client if isinstance(client, ShortPathClient) else None
        self._reading = True
        if buffer is not None:
            buffer.holding_acks = True  # the PUBACKs of what is read wait for a packet out
        try:
            while True:
                client.loop_read()
                sock = self._sock
                # Bytes read but not consumed (paho stops after a packet or a few), or
                # decrypted by TLS, are invisible to the selector: handle them now. The
                # buffer's `buffered()`, asked without a call (issue 18: one per read).
                if sock is None or not (
                    (buffer is not None and buffer._rpos < len(buffer._rbuf))
                    or (isinstance(sock, ssl.SSLSocket) and sock.pending())
                ):
                    break
        finally:
            self._reading = False
            if buffer is not None:
                buffer.holding_acks = False
                if buffer.acks_waiting:
                    buffer.acks_waiting = False
                    self._hold_acks()

    def _hold_acks(self) -> None:
        """What a read queued waits for the next packet out, or ACK_DELAY_SECONDS."""
        if self._ack_flush is None and self._loop is not None and self._sock is not None:
            self._ack_flush = self._loop.call_later(ACK_DELAY_SECONDS, self._flush_acks)

    def _writable(self) -> None:
        self._client.loop_write()

    def _keep_alive(self) -> asyncio.Task[None] | None:
        """Start the keep-alive checks (`loop_misc`) once connected: a task of this link's own
        (`sim fleet` checks all of its devices from one timer instead, fleet_transport.py)."""
        return asyncio.ensure_future(self._misc())

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(self._misc_interval)  # the keep-alive timer's period
            self._client.loop_misc()

    # -- paho's callbacks (loop thread, or the connect worker) -----------------------------------
    def _paho_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # The only place paho reports why a read failed (e.g. a TLS alert from the broker).
        # Keep the first error of an attempt: later ones are consequences ("not connected").
        if level == mqtt.MQTT_LOG_ERR and not self._last_error:
            self._last_error = buf
        if level == mqtt.MQTT_LOG_ERR and "[SSL:" in buf and "ALERT" in buf and not self._tls_alert:
            self._tls_alert = buf[buf.index("[SSL:") :]

    def _paho_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = (reason, bool(flags.session_present))
        if reason.is_failure:
            if self._started:
                log.warning("connection refused by the broker", reason=str(reason))
        else:
            self._backoff.reset()
            if self._started:
                self._call(self._link_restored, bool(flags.session_present))
        self._wake_connect_waiter()

    def _paho_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        detail = self._tls_alert or self._last_error if reason.is_failure else ""
        detail = detail or str(reason)
        if self._started:  # during the first connect, the attempt reads the error afterwards
            self._last_error = self._tls_alert = ""
        self._call(self._link_down, f"disconnected: {detail}")
        self._wake_connect_waiter()
        if self._started and not self._closing:
            self._on_loop(self._schedule_reconnect)

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_loop(self._receive, Message(message.topic, bytes(message.payload)))

    def _qos1_received(self, topic: str, payload: bytes) -> None:
        if threading.get_ident() == self._loop_thread:  # read by the loop: no hop to ask for
            self._receive(Message(topic, payload))
        else:
            self._on_loop(self._receive, Message(topic, payload))

    def _receive(self, message: Message) -> None:
        """Straight to the listener, inside `_readable` (a message comes after the CONNACK,
        on the loop). A listener's exception goes to the loop's handler, as from a callback
        the loop runs, and not up through paho, which would then lose its place in the
        stream."""
        try:
            self._deliver(message)
        except Exception as exc:
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": f"message listener failed on {message.topic}", "exception": exc}
            )

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._on_loop(self._resolve, mid, [reason])

    def _paho_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self._on_loop(self._resolve, mid, list(reasons))

    def _paho_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self._on_loop(self._resolve, mid, list(reasons))

    def _wake_connect_waiter(self) -> None:
        waiter = self._connack_waiter
        if waiter is not None:
            self._on_loop(_set_done, waiter)

    # -- acknowledgements (loop thread) ---------------------------------------------------------
    def _puback_ok(self, mid: int) -> None:
        """A PUBACK saying success (`DeviceClient.on_acked`): a submitted request waits for
        nothing more, a publish hears its success."""
        if threading.get_ident() != self._loop_thread:
            self._on_loop(self._resolve, mid, [PUBACK_OK])
            return
        waiting = self._pending.pop(mid, None)
        if waiting is not None and not isinstance(waiting, _Submitted) and not waiting.done():
            waiting.set_result([PUBACK_OK])

    def _resolve(self, mid: int, reasons: list[ReasonCode]) -> None:
        waiting = self._pending.pop(mid, None)
        if isinstance(waiting, _Submitted):
            if reasons and reasons[0].is_failure:
                waiting.on_failure(_refused(waiting.topic, reasons[0]))
        elif waiting is not None and not waiting.done():
            waiting.set_result(reasons)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if isinstance(waiting, _Submitted):
                waiting.on_failure(NotConnectedError(reason))
            elif not waiting.done():
                waiting.set_exception(NotConnectedError(reason))

    def _link_dropped(self, reason: str) -> None:
        self._fail_pending(f"connection lost: {reason}")

    def _expect(self, rc: MQTTErrorCode, mid: int | None, what: str) -> asyncio.Future[Any]:
        """A future for the acknowledgement of the packet paho just queued as `mid`."""
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"{what}: not connected")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"{what}: {mqtt.error_string(rc)}")
        # paho writes the packet at once but reads its acknowledgement only in a later
        # `_readable` callback on this thread, so the future is in place before it comes.
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = future
        return future

    async def _send_subscribe(self, topic_filter: str) -> None:
        refused = [reason for reason in await self._send_subscriptions([topic_filter]) if reason]
        if refused:
            raise TransportError(f"subscribe {topic_filter}: refused by the broker ({refused[0]})")

    async def _send_subscriptions(self, topic_filters: Sequence[str]) -> list[str]:
        what = f"subscribe {', '.join(topic_filters)}"
        options = SubscribeOptions(qos=1)
        rc, mid = self._client.subscribe([(f, options) for f in topic_filters])
        reasons: list[ReasonCode] = await self._expect(rc, mid, what)
        return [str(r) if r.is_failure else "" for r in reasons]

    # -- connecting -----------------------------------------------------------------------------
    async def _attempt_once(self, deadline: float) -> Attempt:
        """One connect until its CONNACK or `deadline` (TCP and TLS in a worker thread)."""
        loop = asyncio.get_running_loop()
        self._connack = None
        self._last_error = ""
        self._tls_alert = ""
        self._connack_waiter = loop.create_future()
        try:
            await asyncio.to_thread(self._open_connection)
        except ssl.SSLError as exc:
            return Attempt(False, True, f"TLS handshake failed: {exc}")
        except (OSError, ValueError) as exc:
            return Attempt(False, False, str(exc) or type(exc).__name__)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._connack_waiter
        except TimeoutError:
            self._drop()
            return Attempt(False, False, "no CONNACK in time")
        except asyncio.CancelledError:
            self._drop()
            raise
        finally:
            self._connack_waiter = None
        if self._connack is None:
            if self._tls_alert:
                # TLS 1.3: the broker's verdict on our certificate came after the handshake.
                return Attempt(False, True, f"TLS session refused by the broker: {self._tls_alert}")
            error = self._last_error or "the broker closed the connection"
            return Attempt(False, False, f"connection closed before CONNACK: {error}")
        reason, _session_present = self._connack
        if reason.is_failure:
            self._drop()
            permanent = reason.value in PERMANENT_CONNACK_CODES
            return Attempt(False, permanent, f"connection refused by the broker: {reason}")
        return Attempt(True)

    def _drop(self) -> None:
        """Close the socket now (paho's disconnect needs a loop iteration to send DISCONNECT)."""
        self._client.disconnect()
        with contextlib.suppress(OSError):
            self._client.loop_write()
        sock = self._sock
        if sock is not None and self._fd is not None:
            self._remove_fd(self._fd)
            self._sock = None
            self._fd = None
            with contextlib.suppress(OSError):
                sock.close()

    async def connect(self, timeout: float | None = None) -> None:
        if self._started:
            await self.wait_connected(timeout)
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        await connect_with_retries(self._attempt_once, self.config, self.client_id, timeout)
        self._backoff.reset()
        self._started = True
        self._misc_task = self._keep_alive()
        self._mark_up()
        log.info(
            "connected",
            endpoint=self.config.endpoint,
            port=self.config.port,
            client_id=self.client_id,
        )

    def _schedule_reconnect(self) -> None:
        if self._closing or not self._started:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Reconnect with backoff until connected or closed (the CONNACK then restores).

        A connection the broker closes before this task resumes (a broker refusing new
        connections for a while accepts and closes them) asks for a reconnect that finds this
        task still running: so a `reconnect()` that returned is not the end, the socket is
        looked at again (the chaos run's agent stayed offline for good, every request timing
        out)."""
        while not self._closing and self._sock is None:
            delay = self._backoff.next_delay()
            await asyncio.sleep(delay)  # the backoff delay itself
            if self._closing:
                return
            try:
                await asyncio.to_thread(self._client.reconnect)
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning(
                    "cannot reconnect; retrying", endpoint=self.config.endpoint, reason=str(exc)
                )

    async def disconnect(self) -> None:
        if not self._begin_disconnect():
            return
        for task in (self._misc_task, self._reconnect_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._drop()
        self._end_disconnect()

    def _begin_disconnect(self) -> bool:
        """Stop reconnecting; False when there was no link to close (idempotent)."""
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

    def _restores_in_packets(self) -> bool:
        return self._packs_subscriptions(PahoTransport)

    async def subscribe_all(self, topic_filters: Sequence[str]) -> None:
        if not self._packs_subscriptions(PahoTransport):
            await super().subscribe_all(topic_filters)
            return
        for topic_filter in topic_filters:
            validate_topic_filter(topic_filter)
        self._require_up(f"subscribe {', '.join(topic_filters)}")
        await self._subscribe_in_packets(topic_filters)

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
        client = self._client
        if isinstance(client, ShortPathClient):  # no paho message info (its Condition)
            rc, mid = client.publish_qos1(topic, payload)
        else:
            info = client.publish(topic, payload, qos=1)
            rc, mid = info.rc, info.mid
        reasons: list[ReasonCode] = await self._expect(rc, mid, what)
        if reasons and reasons[0].is_failure:
            raise _refused(topic, reasons[0])

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        """Queue the request and return: its reply proves its delivery, so it does not wait for
        its PUBACK, which the loop reads later anyway (issue 18: a future and a wake-up of the
        requesting task per request, two per plugin job). A PUBACK that refuses it, or the link
        lost before the PUBACK came, is told to `on_failure`, on the loop, as awscrt's is."""
        validate_topic_name(topic)
        if not self.is_connected:
            self._require_up(f"publish {topic}")
        client = self._client
        if isinstance(client, ShortPathClient):
            rc, mid = client.publish_qos1(topic, payload)
        else:
            info = client.publish(topic, payload, qos=1)
            rc, mid = info.rc, info.mid
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"publish {topic}: not connected")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"publish {topic}: {mqtt.error_string(rc)}")
        # As in `_expect`: the PUBACK is read in a later `_readable` callback on this thread.
        self._pending[mid] = _Submitted(topic, on_failure)


class _Submitted:
    """A submitted publish (`PahoTransport.submit`) waiting for its PUBACK."""

    __slots__ = ("on_failure", "topic")

    def __init__(self, topic: str, on_failure: FailureCallback) -> None:
        self.topic = topic
        self.on_failure = on_failure


def _refused(topic: str, reason: ReasonCode) -> TransportError:
    return TransportError(f"publish {topic}: refused by the broker ({reason})")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["PahoTransport"]
