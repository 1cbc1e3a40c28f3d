"""paho driven by the asyncio loop itself: no network thread per connection.

`PahoTransport` gives each connection its own paho thread (`loop_start`), which is right for one
agent but not for `jobs-agent sim fleet`, where a thousand connections share one process and two
cores: a thousand threads each waking every second and contending for the GIL. Here the socket
is registered with the event loop instead (paho's external-loop hooks: `on_socket_open/close`,
`on_socket_register_write/unregister_write`, then `loop_read`, `loop_write` and `loop_misc`), so
an idle connection costs nothing until its socket is readable or its keep-alive is due.

Everything above the socket is `PahoTransport`'s (callbacks, session handling, resubscription,
error reporting); only how paho is driven differs. Blocking steps stay off the loop: the TCP
connect and TLS handshake of each (re)connection run in a worker thread (`asyncio.to_thread`),
after which the socket is non-blocking and served by the loop. paho callbacks then run on the
loop thread; `_call` still defers them with `call_soon`, so they never re-enter paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho import (
    PERMANENT_CONNACK_CODES,
    PahoTransport,
    _Attempt,
)

log = structlog.get_logger("jobs_agent.transport.paho_async")

MISC_MIN_SECONDS = 1.0
MISC_MAX_SECONDS = 30.0


class AsyncPahoTransport(PahoTransport):
    def __init__(self, config: PahoOptions, client_id: str) -> None:
        super().__init__(config, client_id)
        self._loop_thread: int | None = None
        self._fd: int | None = None
        self._sock: Any = None
        self._writing = False
        self._connack_waiter: asyncio.Future[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        # Check keep-alive often enough that a PINGREQ is at most 5 % late (the broker allows
        # 50 %), but no more than once a second: idle connections must cost nothing.
        self._misc_interval = min(
            MISC_MAX_SECONDS, max(MISC_MIN_SECONDS, config.keepalive_seconds / 20)
        )
        client = self._client
        client.on_socket_open = self._async_socket_open
        client.on_socket_close = self._async_socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    # -- paho's external-loop hooks (loop thread, or the connect worker) ------------------------
    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on the loop thread: now if we are on it, else as soon as possible."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def _async_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._paho_socket_open(client, userdata, sock)
        self._on_loop(self._add_reader, sock)

    def _async_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd if self._sock is sock else None
        self._paho_socket_close(client, userdata, sock)
        if fd is not None:
            self._sock = None
            self._fd = None
            self._on_loop(self._remove_fd, fd)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    # -- loop side ------------------------------------------------------------------------------
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
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        self._writing = False

    def _readable(self) -> None:
        client = self._client
        while True:
            client.loop_read()
            sock = self._sock
            # TLS may hold decrypted bytes the selector cannot see: drain them now.
            if not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                break

    def _writable(self) -> None:
        self._client.loop_write()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(self._misc_interval)  # the keep-alive timer's period
            self._client.loop_misc()

    # -- connection state from paho's callbacks ---------------------------------------------------
    def _paho_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        super()._paho_connect(client, userdata, flags, reason, props)
        self._wake_connect_waiter()

    def _paho_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        super()._paho_disconnect(client, userdata, flags, reason, props)
        self._wake_connect_waiter()
        if self._started and not self._closing:
            self._on_loop(self._schedule_reconnect)

    def _wake_connect_waiter(self) -> None:
        waiter = self._connack_waiter
        if waiter is not None:
            self._on_loop(_set_done, waiter)

    # -- connecting -----------------------------------------------------------------------------
    async def _attempt_once(self, deadline: float) -> _Attempt:
        ok, permanent, reason = await self._attempt_async(deadline)
        return _Attempt(ok, permanent, reason)

    async def _attempt_async(self, deadline: float) -> tuple[bool, bool, str]:
        """One connect until CONNACK: (ok, permanent, reason)."""
        loop = asyncio.get_running_loop()
        self._connack = None
        self._last_error = ""
        self._tls_alert = ""
        self._connack_waiter = loop.create_future()
        try:
            await asyncio.to_thread(self._open_connection)
        except ssl.SSLError as exc:
            return False, True, f"TLS handshake failed: {exc}"
        except (OSError, ValueError) as exc:
            return False, False, str(exc) or type(exc).__name__
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._connack_waiter
        except TimeoutError:
            self._drop()
            return False, False, "no CONNACK in time"
        finally:
            self._connack_waiter = None
        if self._connack is None:
            if self._tls_alert:
                return False, True, f"TLS session refused by the broker: {self._tls_alert}"
            return False, False, f"connection closed before CONNACK: {self._last_error}"
        reason, _session_present = self._connack
        if reason.is_failure:
            self._drop()
            permanent = reason.value in PERMANENT_CONNACK_CODES
            return False, permanent, f"connection refused by the broker: {reason}"
        return True, False, ""

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
        await self._connect_with_retries(timeout)
        self._backoff.reset()
        self._started = True
        self._misc_task = asyncio.ensure_future(self._misc())
        self._mark_up()
        log.debug(
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
        """Reconnect with backoff until connected or closed (the CONNACK then restores)."""
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
                continue
            return

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


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["AsyncPahoTransport"]
