"""The production backend: the AWS CRT MQTT 5 client, mTLS (or SigV4 WebSockets) to AWS IoT Core.

Its settings (TLS, ALPN on port 443, no SDK metrics, AWS IoT Core's flow control for AWS
endpoints) are `jobs_agent.transport.awscrt_client`'s, written out from the CRT's own classes
rather than taken from `awsiot.mqtt5_client_builder` (whose import costs every start-up); the
builder is imported for WebSockets only.

Sessions: `REJOIN_POST_SUCCESS`, so the first connection of a process starts clean (replies to a
previous process's requests never reach this one; the Jobs client asks for the current state at
start) and every reconnect after that rejoins the session for `session_expiry_seconds`. When the
broker did not keep the session, the remembered subscriptions are restored before
`on_connection_resumed` is called.

Reconnects are the CRT's own: exponential backoff with full jitter between
`reconnect_min_seconds` and `reconnect_max_seconds`. In-flight operations fail on a disconnect
(`FAIL_ALL_ON_DISCONNECT`), so `publish` never waits across an outage; the caller decides.

Threads: every CRT callback comes from a CRT event-loop thread and is handed to the asyncio loop
through the transport's own wake-up (`_call`: a deque, and on Linux an eventfd the loop watches;
elsewhere `call_soon_threadsafe`); operation futures are `concurrent.futures.Future`s wrapped
with `asyncio.wrap_future`, which uses `call_soon_threadsafe`. The two callbacks of every job, a
message received and a request's PUBACK, skip the CRT's Python objects for them
(`awscrt_client.new_client`, `publish_at_least_once`): the agent reads a message's topic and
payload and a PUBACK's codes.

The CRT's threads are not Python's: each callback takes the GIL with `PyGILState_Ensure`, and
its last `PyGILState_Release` deletes the thread state it made. So every callback (about 7 per
job) built one anew: a 16 KiB frame stack mapped, faulted in and unmapped, a `gettid` (strace,
plugin jobs: 7.4 mmap, 7.0 munmap, 7.0 gettid per job). `keep_thread_state` takes one more
ensure at the thread's first callback and never releases it: one state for the process's life.

TCP_NODELAY: `awscrt.io.SocketOptions` has no such option (awscrt 0.36: domain, type, connect
timeout and TCP keep-alive only) and the CRT leaves Nagle on: measured here, a request/reply
through mosquitto took 43 ms at p50 instead of 0.9 ms. So on Linux, after each connection
success, `set_nodelay_on_process_sockets` finds this process's established TCP sockets to the
broker's port through /proc and sets the option on those file descriptors (without taking them
over). Elsewhere, or if /proc is unreadable, it does nothing and the link is merely slower.

TLS failures on the first connection are permanent (bad certificate, unknown CA). When it is the
*broker's* certificate that fails verification, the CRT's TLS library (s2n) reports it only after
its 10-30 s "blinding" delay, so such a `connect()` fails at its timeout or after that delay.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import functools
import threading
from collections.abc import Sequence
from typing import Any

import structlog
from awscrt import exceptions, mqtt5

from jobs_agent.transport.awscrt_client import (
    client_options,
    new_client,
    publish_at_least_once,
)
from jobs_agent.transport.base import (
    FailureCallback,
    Message,
    NotConnectedError,
    Transport,
    TransportError,
)
from jobs_agent.transport.nodelay import set_nodelay_on_process_sockets
from jobs_agent.transport.options import AwscrtOptions
from jobs_agent.transport.topics import validate_topic_filter, validate_topic_name
from jobs_agent.transport.wakeup import EventfdWakeup

log = structlog.get_logger("jobs_agent.transport.awscrt")

PERMANENT_CONNACK_CODES = {
    mqtt5.ConnectReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    mqtt5.ConnectReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    mqtt5.ConnectReasonCode.BAD_USERNAME_OR_PASSWORD,
    mqtt5.ConnectReasonCode.NOT_AUTHORIZED,
    mqtt5.ConnectReasonCode.BANNED,
    mqtt5.ConnectReasonCode.BAD_AUTHENTICATION_METHOD,
}
PERMANENT_ERROR_MARKERS = ("TLS", "CERT", "PKCS", "PEM", "X509")
"""CRT error names that mean our certificate, key or trust store is wrong: no point retrying."""
OFFLINE_ERRORS = ("OFFLINE_QUEUE", "DISCONNECT", "CONNECTION", "STOPPED", "SHUTDOWN")
STOP_TIMEOUT = 30.0
"""How long a stop may wait for the CRT's confirmation (s2n's blinding delay is up to 30 s)."""
_STOPPING: set[asyncio.Task[None]] = set()
"""Stops still waiting for the CRT; referenced so neither task nor native client is collected."""


def _crt_error(what: str, exc: exceptions.AwsCrtError) -> TransportError:
    if any(marker in exc.name for marker in OFFLINE_ERRORS):
        return NotConnectedError(f"{what}: {_describe(exc)}")
    return TransportError(f"{what}: {_describe(exc)}")


def _refusal(what: str, result: mqtt5.PublishCompletionData) -> TransportError | None:
    """The broker's refusal in a QoS 1 publish's PUBACK, if it refused."""
    puback = result.puback
    if puback is None or puback.reason_code is None or int(puback.reason_code) < 0x80:
        return None
    return _refused(what, int(puback.reason_code))


def _refused(what: str, reason_code: int) -> TransportError:
    try:
        name = mqtt5.PubackReasonCode(reason_code).name
    except ValueError:
        name = str(reason_code)
    return TransportError(f"{what}: refused by the broker ({name})")


def _describe(
    exception: BaseException | None, reason: Any = None, reason_string: Any = None
) -> str:
    parts: list[str] = []
    if isinstance(exception, exceptions.AwsCrtError):
        parts.append(f"{exception.name}: {exception.message}")
    elif exception is not None:
        parts.append(str(exception) or type(exception).__name__)
    if reason is not None:
        name = getattr(reason, "name", str(reason))
        parts.append(f"reason {name}")
    if reason_string:
        parts.append(str(reason_string))
    return "; ".join(parts) or "unknown reason"


_KEPT: set[int] = set()
"""The CRT threads (`threading.get_ident`) that keep their Python thread state."""


def keep_thread_state() -> None:
    """Keep the calling CRT thread's Python thread state past this callback (see "Threads"
    above). Called with the GIL held, from a CRT callback; once per thread.

    The extra `PyGILState_Ensure` only raises the thread state's counter, so the callback's own
    release gives the GIL back without deleting it, and the next callback's ensure takes the
    same state back. At exit nothing changes: CPython deletes every thread state, kept or not,
    and a CRT thread that calls in while the interpreter finalizes is stopped as before.
    """
    ident = threading.get_ident()
    if ident in _KEPT:
        return
    ctypes.pythonapi.PyGILState_Ensure()
    _KEPT.add(ident)


class AwscrtTransport(Transport):
    def __init__(self, config: AwscrtOptions, client_id: str) -> None:
        super().__init__()
        if not config.endpoint:
            raise TransportError("awscrt transport: connection.endpoint is required")
        if config.alpn and config.port != 443:
            raise TransportError(
                f"connection.alpn: ALPN x-amzn-mqtt-ca is used on port 443 only, got port"
                f" {config.port}"
            )
        if not config.websocket and (config.cert is None or config.key is None):
            raise TransportError(
                "awscrt transport: connection.cert and connection.key are required"
                " (or connection.websocket: true)"
            )
        self.config = config
        self.client_id = client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt5.Client | None = None
        self._first: asyncio.Future[None] | None = None
        self._stopped = threading.Event()
        self._pending: collections.deque[tuple[Any, tuple[Any, ...]]] = collections.deque()
        """What CRT threads asked the loop to run (`_call`), oldest first."""
        self._woken = False
        """A wake-up is on its way to the loop (written to the eventfd, or a `_run_pending`
        scheduled) and `_run_pending` has not started yet."""
        self._wakeup = EventfdWakeup()
        """`_call`'s wake-up, open from `connect` until a stop the CRT confirmed."""
        self._ever_up = False

    # -- construction ------------------------------------------------------------------------
    def _build(self) -> mqtt5.Client:
        cfg = self.config
        try:
            options = client_options(cfg, self.client_id)
            options.on_lifecycle_event_connection_success_fn = self._crt_connection_success
            options.on_lifecycle_event_connection_failure_fn = self._crt_connection_failure
            options.on_lifecycle_event_disconnection_fn = self._crt_disconnection
            options.on_lifecycle_event_stopped_fn = self._crt_stopped
            return new_client(cfg, options, self._crt_publish_received)
        except (exceptions.AwsCrtError, OSError) as exc:
            raise TransportError(
                f"awscrt transport: cannot set up TLS (ca={cfg.ca}, cert={cfg.cert},"
                f" key={cfg.key}): {_describe(exc)}"
            ) from None

    # -- CRT callbacks (CRT threads) -----------------------------------------------------------
    def _call(self, callback: Any, *args: Any) -> None:
        """Run `callback(*args)` on the loop, in the order of the CRT's calls. Calls made before
        the loop got round to the last wake-up ride on it: a wake-up is a thread hop (a write,
        the loop's read, a GIL hand-over), and a read of the socket often delivers several
        messages (a job's last reply with the next job's notification).

        The wake-up is a write to an eventfd the loop watches (`EventfdWakeup`: no `Handle` per
        hop, one read); without one (not Linux, or before `connect`), `call_soon_threadsafe`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._pending.append((callback, args))
        if not self._woken:
            self._woken = True
            if not self._wakeup.write():
                loop.call_soon_threadsafe(self._run_pending)

    def _run_pending(self) -> None:
        self._woken = False  # first: a call appended from now on wakes the loop again
        pending = self._pending
        while pending:
            callback, args = pending.popleft()
            try:
                callback(*args)
            except Exception as exc:  # as the loop's own handles would: report, go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"awscrt callback {callback!r} failed", "exception": exc}
                )

    def _crt_publish_received(self, message: Message) -> None:
        self._call(self._deliver, message)

    def _crt_connection_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        keep_thread_state()  # the first callback of a connection, on its event-loop thread
        ports = {self.config.proxy_port if self.config.proxy_host else self.config.port}
        set_nodelay_on_process_sockets(ports)
        self._call(self._link_up, bool(data.connack_packet.session_present))

    def _crt_connection_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        connack = data.connack_packet
        reason = connack.reason_code if connack is not None else None
        permanent = reason in PERMANENT_CONNACK_CODES or (
            isinstance(data.exception, exceptions.AwsCrtError)
            and any(marker in data.exception.name for marker in PERMANENT_ERROR_MARKERS)
        )
        detail = _describe(
            data.exception, reason, connack.reason_string if connack is not None else None
        )
        self._call(self._link_failed, detail, permanent)

    def _crt_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        packet = data.disconnect_packet
        detail = _describe(
            data.exception,
            packet.reason_code if packet is not None else None,
            packet.reason_string if packet is not None else None,
        )
        self._call(self._link_down, detail)

    def _crt_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._stopped.set()

    # -- loop side -----------------------------------------------------------------------------
    def _link_failed(self, detail: str, permanent: bool) -> None:
        first = self._first
        if first is not None and not first.done():
            if permanent:
                first.set_exception(TransportError(detail))
            else:
                log.warning(
                    "cannot connect; retrying", endpoint=self.config.endpoint, reason=detail
                )
        elif not self._closing:
            log.warning("cannot reconnect; retrying", endpoint=self.config.endpoint, reason=detail)

    def _link_up(self, session_present: bool) -> None:
        if self._closing or self._ever_up:
            self._link_restored(session_present)
            return
        self._generation += 1
        self._ever_up = True
        self._mark_up()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    async def _wait(self, future: concurrent.futures.Future[Any], what: str) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except exceptions.AwsCrtError as exc:
            raise _crt_error(what, exc) from None

    async def _send_subscribe(self, topic_filter: str) -> None:
        refused = [reason for reason in await self._send_subscriptions([topic_filter]) if reason]
        if refused:
            raise TransportError(f"subscribe {topic_filter}: refused by the broker ({refused[0]})")

    async def _send_subscriptions(self, topic_filters: Sequence[str]) -> list[str]:
        what = f"subscribe {', '.join(topic_filters)}"
        if self._client is None:
            raise NotConnectedError(f"{what}: not connected")
        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE)
                for f in topic_filters
            ]
        )
        suback: mqtt5.SubackPacket = await self._wait(self._client.subscribe(packet), what)
        return [
            getattr(code, "name", str(code)) if int(code) >= 0x80 else ""
            for code in suback.reason_codes or []
        ]

    # -- the Transport contract ----------------------------------------------------------------
    async def connect(self, timeout: float | None = None) -> None:
        if self._client is not None:
            if not await self.wait_connected(timeout):
                raise TransportError(f"not reconnected to {self.config.endpoint} in {timeout}s")
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._stopped.clear()
        self._first = self._loop.create_future()
        client = self._build()
        self._wakeup.watch(self._loop, self._run_pending)  # after a build that can fail
        self._client = client
        where = f"{self.config.endpoint}:{self.config.port} as {self.client_id}"
        client.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except TimeoutError:
            self._stop_in_background()
            raise TransportError(f"cannot connect to {where} within {timeout}s") from None
        except TransportError as exc:
            self._stop_in_background()
            raise TransportError(f"cannot connect to {where}: {exc}") from None
        except asyncio.CancelledError:
            self._stop_in_background()
            raise
        log.info("connected", endpoint=self.config.endpoint, port=self.config.port)

    def _stop_in_background(self) -> None:
        """Stop without making `connect()` wait: the CRT may still be in a TLS handshake."""
        if self._first is not None and not self._first.done():
            self._first.cancel()  # a late failure event must not fail a future nobody awaits
        task = asyncio.ensure_future(self._stop())
        _STOPPING.add(task)
        task.add_done_callback(_STOPPING.discard)

    async def _stop(self) -> None:
        client, self._client = self._client, None
        self._closing = True
        self._mark_down()
        if client is None:
            return
        client.stop()
        # The CRT confirms with the stopped lifecycle event; waiting keeps the native client
        # alive until its threads no longer call us.
        if await asyncio.to_thread(self._stopped.wait, STOP_TIMEOUT):
            self._close_wakeup()
        self._cancel_tasks()

    def _close_wakeup(self) -> None:
        """Close the eventfd once the CRT confirmed its client stopped (no CRT thread writes to
        its number any more); a wake-up written but not read is handed over."""
        self._wakeup.close()
        loop = self._loop
        if self._woken and loop is not None and not loop.is_closed():
            loop.call_soon(self._run_pending)

    async def disconnect(self) -> None:
        await self._stop()

    def _require_up(self, what: str) -> mqtt5.Client:
        if not self.is_connected or self._client is None:
            raise NotConnectedError(f"{what}: not connected to {self.config.endpoint}")
        return self._client

    async def subscribe(self, topic_filter: str) -> None:
        validate_topic_filter(topic_filter)
        self._require_up(f"subscribe {topic_filter}")
        await self._send_subscribe(topic_filter)
        self._subscriptions.add(topic_filter)

    def _restores_in_packets(self) -> bool:
        return self._packs_subscriptions(AwscrtTransport)

    async def subscribe_all(self, topic_filters: Sequence[str]) -> None:
        if not self._packs_subscriptions(AwscrtTransport):
            await super().subscribe_all(topic_filters)
            return
        for topic_filter in topic_filters:
            validate_topic_filter(topic_filter)
        self._require_up(f"subscribe {', '.join(topic_filters)}")
        await self._subscribe_in_packets(topic_filters)

    async def unsubscribe(self, topic_filter: str) -> None:
        what = f"unsubscribe {topic_filter}"
        client = self._require_up(what)
        packet = mqtt5.UnsubscribePacket(topic_filters=[topic_filter])
        await self._wait(client.unsubscribe(packet), what)
        self._subscriptions.discard(topic_filter)

    def _start_publish(self, topic: str, payload: bytes) -> tuple[str, Any]:
        validate_topic_name(topic)
        what = f"publish {topic}"
        client = self._require_up(what)
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        return what, client.publish(packet)

    async def publish(self, topic: str, payload: bytes) -> None:
        what, future = self._start_publish(topic, payload)
        refusal = _refusal(what, await self._wait(future, what))
        if refusal is not None:
            raise refusal

    async def submit(self, topic: str, payload: bytes, on_failure: FailureCallback) -> None:
        """Queue the request and return: its PUBACK is looked at on the CRT thread, and only a
        failure crosses to the loop (`on_failure`). The reply proves delivery, so a request no
        longer waits for a PUBACK's thread hop before it waits for its reply (issue 18). No
        future is made for it (`publish_at_least_once`)."""
        validate_topic_name(topic)
        what = f"publish {topic}"
        client = self._require_up(what)
        on_puback = functools.partial(self._crt_published, what, on_failure)
        if not publish_at_least_once(client, topic, payload, on_puback):
            packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
            future = client.publish(packet)
            future.add_done_callback(functools.partial(self._crt_completed, what, on_failure))

    def _crt_published(
        self,
        what: str,
        on_failure: FailureCallback,
        error_code: int,
        _qos: int,
        reason_code: int,
        _reason_string: str | None,
        _user_properties: Any,
    ) -> None:
        """A submitted publish completed (CRT thread): nothing to do unless it failed."""
        if error_code:
            self._call(on_failure, _crt_error(what, exceptions.from_code(error_code)))
        elif reason_code >= 0x80:
            self._call(on_failure, _refused(what, reason_code))

    def _crt_completed(
        self, what: str, on_failure: FailureCallback, future: concurrent.futures.Future[Any]
    ) -> None:
        """`_crt_published` for a request sent through `Client.publish` (another awscrt's
        binding: `publish_at_least_once`)."""
        exc = future.exception()
        if isinstance(exc, exceptions.AwsCrtError):
            self._call(on_failure, _crt_error(what, exc))
        elif exc is not None:
            self._call(on_failure, TransportError(f"{what}: {_describe(exc)}"))
        else:
            refusal = _refusal(what, future.result())
            if refusal is not None:
                self._call(on_failure, refusal)


__all__ = ["AwscrtTransport"]
