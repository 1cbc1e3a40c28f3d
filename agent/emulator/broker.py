"""The emulator's own link to an MQTT broker: paho on the asyncio loop, tuned for a service.

A device agent waits for each acknowledgement; a service answering thousands of requests must
not. `BrokerTransport` is the loop-driven paho transport (`PahoTransport`: no network
thread, no thread hop per message) with these differences, each of which mattered to the
emulator's cost per job (`python -m benchmarks emulator-cost` measures it):

* subscriptions carry MQTT 5's No Local option, so the broker never sends the emulator its own
  replies and events back (it subscribes to whole topic trees that contain them: without it,
  five of every seven messages it read per job were its own);
* `publish_nowait` queues a QoS 1 publish in call order without a future or a task per message;
  `flush()` waits until all of them are acknowledged (used before disconnecting). The publish
  and its PUBACK take a short path (`ShortPathClient.publish_qos1`): the packet is built in one
  join, the message kept in paho's own outgoing table (so a reconnect sends it again as paho
  would) without the `threading.Condition` paho makes per message, and the PUBACK handled
  without paho's callback locks (184 of the 1,514 Python calls per job of a drain);
* requests are answered while the socket is being read, and what paho queued meanwhile (the
  acknowledgements, replies and events of every packet just read) is written once at the end,
  in one `send` (`ShortPathClient._packet_write`, called by the transport itself, without
  paho's `loop_write` and its unregister callback) so it leaves in as few segments as possible
  instead of one send each waking the broker (when a packet cannot be joined, the socket is
  corked with TCP_CORK around paho's sends instead; a drain's emulator thread went from 23.3 to
  10.5 system calls per job); a write asked for outside a read is flushed at the end of the
  loop iteration, and only a full socket buffer waits on the selector. Without this a request
  took three loop iterations (read, answer, write);
* reading is one `recv` per readable event into a buffer, then every complete packet in it
  (`ServiceClient.loop_read`); the two packets a service receives most are cut from the buffer
  without paho's packet dictionaries and dispatch: the PUBACK of its own publishes and a QoS 1
  request handed over as topic and payload (465 -> 340 Python calls of the transport per job,
  266 with the writes above and a PUBLISH header packed at once, counted by
  tests/emulator/test_broker_costs.py); anything else, or a packet only partly read, takes
  `ShortPathClient`'s and paho's path;
* paho's per-packet debug log lines are formatted only while connecting, where they explain a
  failure (paho formats each one whenever a log callback is set); a dropped connection is then
  reported by its reason code.

`ShortPathClient` overrides paho internals: paho is pinned below 3, and
tests/emulator/test_broker_transport.py holds each short path against a real mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import DISCONNECT, PUBACK, PUBLISH, mqtt_ms_wait_for_puback
from paho.mqtt.enums import MQTTErrorCode, _ConnectionState
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobs_agent.emulator.broker_window import WindowedClient
from jobs_agent.transport.base import Message, NotConnectedError, TransportError
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho import PahoTransport
from jobs_agent.transport.paho_client import (
    READ_SIZE,
    PlainInfo,
    plain_puback,
    qos1_publish,
    variable_byte_integer,
)

__all__ = ["BrokerTransport", "broker_transport"]

_CORK: int | None = getattr(socket, "TCP_CORK", None)
"""Linux's TCP_CORK (absent elsewhere: writes then go out as paho makes them)."""
_PUBLISH_QOS1 = bytes([PUBLISH | 0x02])
PUBLISH_QOS1 = PUBLISH | 0x02
"""The first byte of a QoS 1 PUBLISH, neither a duplicate nor retained (a PUBACK's is PUBACK:
its flags are zero)."""
_CONNECTED = _ConnectionState.MQTT_CS_CONNECTED
RECEIVE_MAXIMUM_ABSENT = 65535
"""MQTT 5: a CONNACK without Receive Maximum allows this many unacknowledged QoS 1 publishes."""


class ServiceClient(WindowedClient):
    """paho's client for a service: the short paths and buffered reads of `ShortPathClient`
    (five PUBACKs and two QoS 1 requests per job for the Jobs API), requests answered by the
    transport while the socket is read, and a short path for its own QoS 1 publishes and
    their PUBACKs (`publish_qos1`, `on_acked`)."""

    on_acked: Callable[[int], None] | None = None
    """Called with the packet id of each `publish_qos1` the broker acknowledged."""

    # -- reading: one `recv`, then every packet it holds -------------------------------------------
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's `loop_read`, for a socket the selector says is readable: one `recv` into the
        read buffer, then every complete packet in it, the PUBACKs of `publish_qos1` and plain
        requests without paho's packet dictionaries and dispatch (`_acked`, `_requested`).
        paho's own read took the first packet of each `recv` a byte at a time (three
        `_sock_recv` calls for its header), and each PUBACK (five per job) went through
        `_packet_handle` and its handler. A packet only partly read takes paho's path, which
        reads the rest. While PUBACKs of publishes already written are due, it reads on (as
        paho did, up to as many packets as it had messages in flight): the broker acknowledges
        a joined write one publish at a time, and a `recv` that finds the next PUBACK costs
        less than the loop iteration of another readable event."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        while True:
            if self._rpos >= len(self._rbuf) and self._in_packet["command"] == 0:
                filled = self._fill()
                if filled is not None:
                    return filled
            rc = self._read_buffered()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc < 0 or self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if self._rpos < len(self._rbuf) or not self._inflight_messages or self._out_packet:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing due that could be there yet

    def _fill(self) -> MQTTErrorCode | None:
        """One `recv` into the read buffer: None when it brought bytes, else what `loop_read`
        returns (nothing there yet, or the connection lost, in paho's words)."""
        try:
            data = mqtt.Client._sock_recv(self, READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        self._rbuf, self._rpos = data, 0
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return None

    def _read_buffered(self) -> MQTTErrorCode:
        """Every complete packet of the read buffer (then SUCCESS), or the first error."""
        while True:
            first = self._rbuf[self._rpos] if self._in_packet["command"] == 0 else 0
            rc = (
                self._acked()
                if first == PUBACK
                else self._requested()
                if first == PUBLISH_QOS1
                else None
            )
            if rc is None:
                rc = self._packet_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._rpos >= len(self._rbuf):
                return rc

    def _acked(self) -> MQTTErrorCode | None:
        """The PUBACKs at the read position, as long as each acknowledges a `publish_qos1`
        with success (reason code below 0x80) and no properties: handled as
        `_handle_pubackcomp` would, without its packet dictionaries, in one loop (the broker
        acknowledges a joined write one publish at a time: two or three PUBACKs per `recv`,
        before a call and three `len` each). None when the first is any other packet (paho's
        path reads it)."""
        buf, pos, out, on_acked = self._rbuf, self._rpos, self._out_messages, self.on_acked
        size, start = len(buf), pos
        while pos + 3 < size and buf[pos] == PUBACK and on_acked is not None:
            length = buf[pos + 1]
            end = pos + 2 + length
            if end > size or not 2 <= length <= 4:
                break
            if (length > 2 and buf[pos + 4] >= 0x80) or (length > 3 and buf[pos + 5] != 0):
                break  # a failure, or properties: paho decodes those
            mid = (buf[pos + 2] << 8) | buf[pos + 3]
            message = out.get(mid)
            if (
                message is None
                or type(message.info) is not PlainInfo
                or message.state != mqtt_ms_wait_for_puback
            ):
                break
            del out[mid]
            message.info._published = True  # `PlainInfo._set_as_published`, without a call
            self._inflight_messages -= 1
            pos = self._rpos = end
            on_acked(mid)
        return None if pos == start else self._window_freed()

    def _requested(self) -> MQTTErrorCode | None:
        """The QoS 1 PUBLISH at the read position (a request), when wholly read and plain
        (`qos1_publish`): handed to `on_qos1` and acknowledged as `_handle_publish` does,
        without its packet dictionaries and paho's PUBACK helpers. None for anything else."""
        if self.on_qos1 is None or self._manual_ack:
            return None
        buf, start = self._rbuf, self._rpos
        remaining = variable_byte_integer(buf, start + 1)
        if remaining is None or remaining[0] + remaining[1] > len(buf):
            return None
        length, pos = remaining
        publish = qos1_publish(PUBLISH_QOS1, buf[pos : pos + length])
        if publish is None:
            return None
        self._rpos = pos + length
        topic, mid, payload = publish
        self.on_qos1(topic, payload)
        return self._packet_queue(PUBACK, bytes((PUBACK, 2, mid >> 8, mid & 0xFF)), mid, 1)

    def _release(self, mid: int, message: Any) -> MQTTErrorCode:
        del self._out_messages[mid]
        message.info._set_as_published()
        self._inflight_messages -= 1
        assert self.on_acked is not None
        self.on_acked(mid)
        return self._window_freed()

    # -- writing: everything queued in one `send` ------------------------------------------------
    def writes_in_one_send(self) -> bool:
        """`ShortPathClient.writes_in_one_send` in one loop without a call per packet (two
        per packet there, asked twice per write: 30 calls per job)."""
        for packet in self._out_packet:
            command = packet["command"] & 0xF0
            if command == DISCONNECT or (command == PUBLISH and packet["qos"] == 0):
                return False
        return True

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        mid = plain_puback(cmd, self._in_packet["packet"])
        message = None if mid is None else self._out_messages.get(mid)
        if (
            message is None
            or not isinstance(message.info, PlainInfo)
            or message.state != mqtt_ms_wait_for_puback
            or self.on_acked is None
        ):
            return super()._handle_pubackcomp(cmd)
        assert mid is not None  # message is None otherwise
        return self._release(mid, message)


class BrokerTransport(PahoTransport):
    client_class = ServiceClient

    def __init__(self, config: PahoOptions, client_id: str) -> None:
        super().__init__(config, client_id)
        client = self._client
        assert isinstance(client, ServiceClient)
        self._service_client = client
        """`_client`, typed: the per-message paths ask no `isinstance` of it."""
        client.on_qos1 = self._request
        client.on_acked = self._acked_nowait
        self._reading = False
        self._tls = config.tls
        self._flush_sock: Any = None
        self._unacked: set[int] = set()
        self._acked = asyncio.Event()
        self._flushing = 0
        """`flush` calls waiting for `_acked`: only then is it cleared and set (a clear per
        publish and a set per emptied window were seven calls of asyncio's code per job)."""

    def _request(self, topic: str, payload: bytes) -> None:
        if self._reading:  # on the loop, inside `_readable`: answer now, flushed with the rest
            self._deliver(Message(topic, payload))
        else:
            self._call(self._deliver, Message(topic, payload))

    # -- the broker's receive maximum ------------------------------------------------------------
    def _paho_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if not reason.is_failure:
            self._take_receive_maximum(client, props)
        super()._paho_connect(client, userdata, flags, reason, props)

    @staticmethod
    def _take_receive_maximum(client: mqtt.Client, props: Any) -> None:
        """Keep as many QoS 1 publishes in flight as the broker's CONNACK allows (MQTT 5's
        Receive Maximum; 65,535 when absent). paho keeps its own 20 whatever the broker says:
        mosquitto says 20 by default, but a broker given a larger `max_inflight_messages` then
        took no more than 20 of the emulator's replies and events per round trip. Called
        before paho sends again what the connection lost (`on_connect` comes first), so those
        are split by the new window too."""
        wanted = getattr(props, "ReceiveMaximum", None) if props is not None else None
        window = int(wanted) if wanted else RECEIVE_MAXIMUM_ABSENT
        if window == client._max_inflight_messages:
            return
        client._max_inflight_messages = window
        client._messages_reconnect_reset_out()  # in flight or waiting, by the new window

    # -- subscriptions without echo -------------------------------------------------------------
    async def _send_subscribe(self, topic_filter: str) -> None:
        what = f"subscribe {topic_filter}"
        options = SubscribeOptions(qos=1, noLocal=True)
        rc, mid = self._client.subscribe(topic_filter, options=options)
        reasons: list[ReasonCode] = await self._expect(rc, mid, what)
        refused = [r for r in reasons if r.is_failure]
        if refused:
            raise TransportError(f"{what}: refused by the broker ({refused[0]})")

    # -- publishing without waiting -------------------------------------------------------------
    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 publish now (in call order); raises NotConnectedError when down.
        "Down" is paho's state, not the announced one: after a reconnect the link is announced
        up only once every filter is subscribed again, and a request on a filter already back
        arrives before that; its reply must go out (a device would wait for it in vain)."""
        client = self._service_client
        if client._state is not _CONNECTED:  # `is_connected()`, without a call per publish
            raise NotConnectedError(f"publish {topic}: not connected to {self.config.endpoint}")
        rc, mid = client.publish_qos1(topic, payload)
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"publish {topic}: not connected")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish {topic}: {mqtt.error_string(rc)}")
        self._unacked.add(mid)

    def _acked_nowait(self, mid: int) -> None:
        """A `publish_nowait` acknowledged (the short path of `ServiceClient`)."""
        unacked = self._unacked
        unacked.discard(mid)
        if not unacked and self._flushing:
            self._acked.set()

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        # On the loop thread (paho is driven by the loop): no hop needed for a nowait publish.
        if mid in self._unacked:
            self._acked_nowait(mid)
            return
        super()._paho_publish(client, userdata, mid, reason, props)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every `publish_nowait` so far is acknowledged (or `timeout`)."""
        if self._client.is_connected() and self._unacked:
            self._acked.clear()
            self._flushing += 1
            try:
                async with asyncio.timeout(timeout):
                    await self._acked.wait()
            except TimeoutError:
                pass
            finally:
                self._flushing -= 1

    # -- batched reads and writes -----------------------------------------------------------------
    def _readable(self) -> None:
        """`PahoTransport._readable` without its calls per event (its `isinstance` checks and
        the `buffered()` method): bytes read but not consumed, or decrypted by TLS, are
        invisible to the selector and read now. Then the acknowledgements and answers of
        everything just read go out at once."""
        client = self._service_client
        self._reading = True
        try:
            while True:
                client.loop_read()
                sock = self._sock
                if sock is None or not (
                    client._rpos < len(client._rbuf)
                    or (self._tls and isinstance(sock, ssl.SSLSocket) and sock.pending())
                ):
                    break
        finally:
            self._reading = False
        self._flush()

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._flush_sock is not None:
            return
        self._flush_sock = sock
        if not self._reading:
            self._call(self._flush)  # at the end of this loop iteration

    def _flush(self) -> None:
        """What was queued, written now. The usual case (a joined write, no writer on the
        selector) calls `_packet_write` itself: paho's `loop_write` around it asked
        `want_write` and went through the unregister callback, its lock and the transport's
        loop hop to remove a writer that was never added (~15 calls per write, two writes
        per job)."""
        sock, self._flush_sock = self._flush_sock, None
        if sock is None:
            return
        if sock is not self._sock:
            self._add_writer(sock)  # a socket not (yet, or any more) ours: the selector's way
            return
        client = self._service_client
        if self._writing or not client.writes_in_one_send():
            self._writable()  # paho's `loop_write` (corked), or the selector's writer
        else:
            rc = client._packet_write()
            if rc > 0 and rc != MQTTErrorCode.MQTT_ERR_AGAIN:
                client._loop_rc_handle(rc)  # as `loop_write`: the connection is lost
                return
            if not client._out_packet:
                client._registered_write = False  # `_call_socket_unregister_write`'s part
        if client.want_write():  # the socket buffer is full: wait until it drains
            self._add_writer(sock)

    def _writable(self) -> None:
        sock = self._sock
        client = self._service_client
        if client.writes_in_one_send():  # `ShortPathClient._packet_write`: nothing to cork
            super()._writable()
            return
        cork = _CORK is not None and sock is not None
        if cork:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
            except OSError:
                cork = False
        try:
            super()._writable()
        finally:
            if cork:
                # OSError: the socket closed while writing, and paho reports the loss
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)

    # -- quiet once connected ---------------------------------------------------------------------
    def _quiet(self) -> None:
        # paho formats every packet's debug line whenever a log callback is set.
        self._client.on_log = None

    def _link_restored(self, session_present: bool) -> None:
        super()._link_restored(session_present)
        self._quiet()

    def _paho_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        client.on_log = self._paho_log  # reconnect attempts explain their failures again
        super()._paho_disconnect(client, userdata, flags, reason, props)

    async def connect(self, timeout: float | None = None) -> None:
        await super().connect(timeout)
        self._quiet()

    async def disconnect(self) -> None:
        await self.flush()
        await super().disconnect()


def broker_transport(config: PahoOptions, client_id: str | None = None) -> BrokerTransport:
    """The emulator's transport for `config` (a paho connection to a broker)."""
    return BrokerTransport(config, client_id or config.client_id)
