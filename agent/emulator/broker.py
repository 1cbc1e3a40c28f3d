"""The emulator's own link to an MQTT broker: paho on the asyncio loop, tuned for a service.

A device agent waits for each acknowledgement; a service answering thousands of requests must
not. `BrokerTransport` is the loop-driven paho transport (`PahoTransport`: no network
thread, no thread hop per message) with these differences, each of which mattered to the
emulator's cost per job (`python -m benchmarks emulator-cost` measures it):

* subscriptions carry MQTT 5's No Local option, so the broker never sends the emulator its own
  replies and events back (it subscribes to whole topic trees that contain them: without it,
  five of every seven messages it read per job were its own);
* `publish_nowait` queues a QoS 1 publish in call order without a future or a task per message;
  `flush()` waits until all of them are acknowledged (used before disconnecting);
* requests are answered while the socket is being read, and what paho queued meanwhile (the
  acknowledgements, replies and events of every packet just read) is written once at the end,
  with the socket corked (TCP_CORK) so it leaves in as few segments as possible instead of one
  send each waking the broker; a write asked for outside a read is flushed at the end of the
  loop iteration, and only a full socket buffer waits on the selector. Without this a request
  took three loop iterations (read, answer, write);
* reading is buffered: paho reads each packet's header a byte at a time, three system calls per
  packet; here one `recv` fills a buffer paho's reads are served from;
* the two packets a service receives most take a short path (`ServiceClient`): the PUBACK of
  its own publishes (success, no properties) is not decoded into reason-code and property
  objects, and a QoS 1 request is handed over as topic and payload, its MQTT 5 properties
  skipped (no AWS IoT request API uses them), without paho's message object and filter match;
* paho's per-packet debug log lines are formatted only while connecting, where they explain a
  failure (paho formats each one whenever a log callback is set); a dropped connection is then
  reported by its reason code.

`ServiceClient` and the read buffer override paho internals (`_handle_pubackcomp`,
`_handle_publish`, `_sock_recv`, `_sock_close`, `_in_packet`): paho is pinned below 3, and
tests/emulator/test_broker_transport.py holds each short path against a real mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobs_agent.transport.base import Message, NotConnectedError, TransportError
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho import PahoTransport

__all__ = ["BrokerTransport", "broker_transport"]

_CORK: int | None = getattr(socket, "TCP_CORK", None)
"""Linux's TCP_CORK (absent elsewhere: writes then go out as paho makes them)."""


READ_SIZE = 65536
_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class ServiceClient(mqtt.Client):
    """paho's client with short paths for the packets a service receives most (five PUBACKs
    and two QoS 1 requests per job for the Jobs API). paho decodes every PUBACK into reason
    code and property objects and every PUBLISH into a message object with its properties
    before it looks at them. Anything unusual (a failure reason, properties on a PUBACK, QoS 0
    or 2, a malformed packet) takes paho's own path."""

    on_request: Any = None
    """`(topic, payload)` callback for QoS 1 publishes received (set by the transport)."""
    _rbuf: bytes = b""
    _rpos: int = 0

    # -- buffered reads ---------------------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_SIZE)  # BlockingIOError when there is nothing
            if not data:
                return data  # end of stream: paho handles the loss
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(len(self._rbuf), start + bufsize)
        return self._rbuf[start : self._rpos]

    def buffered(self) -> bool:
        """Bytes were read from the socket that paho has not consumed yet."""
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        # MQTT 5: mid (2 bytes), then an optional reason code and an optional properties length.
        size = len(packet)
        plain = (
            cmd == "PUBACK"
            and 2 <= size <= 4
            and (size < 3 or packet[2] < 0x80)
            and (size < 4 or packet[3] == 0)
        )
        if not plain:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        request = _qos1_request(self._in_packet["command"], self._in_packet["packet"])
        if request is None or self.on_request is None or self._manual_ack:
            return super()._handle_publish()
        topic, mid, payload = request
        self.on_request(topic, payload)
        return self._send_puback(mid)


def _qos1_request(command: int, packet: bytes | bytearray) -> tuple[str, int, bytes] | None:
    """(topic, packet id, payload) of an MQTT 5 QoS 1 PUBLISH, or None to let paho decode it."""
    if (command & 0x06) >> 1 != 1:
        return None
    size = len(packet)
    if size < 5:
        return None
    end = 2 + ((packet[0] << 8) | packet[1])
    if end + 3 > size:
        return None
    try:
        topic = packet[2:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = (packet[end] << 8) | packet[end + 1]
    pos = end + 2
    length = shift = 0
    for _ in range(4):  # the properties length, a variable byte integer
        if pos >= size:
            return None
        byte = packet[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        return None
    pos += length
    if pos > size or not topic:
        return None
    return topic, mid, bytes(packet[pos:])


class BrokerTransport(PahoTransport):
    client_class = ServiceClient

    def __init__(self, config: PahoOptions, client_id: str) -> None:
        super().__init__(config, client_id)
        client = self._client
        assert isinstance(client, ServiceClient)
        client.on_request = self._request
        self._reading = False
        self._flush_sock: Any = None
        self._unacked: set[int] = set()
        self._acked = asyncio.Event()
        self._acked.set()

    def _request(self, topic: str, payload: bytes) -> None:
        if self._reading:  # on the loop, inside `_readable`: answer now, flushed with the rest
            self._deliver(Message(topic, payload))
        else:
            self._call(self._deliver, Message(topic, payload))

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
        """Queue a QoS 1 publish now (in call order); raises NotConnectedError when down."""
        if not self.is_connected:
            raise NotConnectedError(f"publish {topic}: not connected to {self.config.endpoint}")
        info = self._client.publish(topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"publish {topic}: not connected")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish {topic}: {mqtt.error_string(info.rc)}")
        self._unacked.add(info.mid)
        self._acked.clear()

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        # On the loop thread (paho is driven by the loop): no hop needed for a nowait publish.
        if mid in self._unacked:
            self._unacked.discard(mid)
            if not self._unacked:
                self._acked.set()
            return
        super()._paho_publish(client, userdata, mid, reason, props)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every `publish_nowait` so far is acknowledged (or `timeout`)."""
        if self.is_connected and self._unacked:
            try:
                async with asyncio.timeout(timeout):
                    await self._acked.wait()
            except TimeoutError:
                pass

    # -- batched reads and writes -----------------------------------------------------------------
    def _readable(self) -> None:
        client = self._client
        assert isinstance(client, ServiceClient)
        self._reading = True
        try:
            super()._readable()
            # paho stops after a few packets; what it left in the buffer gets no readable event.
            while client.buffered() and self._sock is not None:
                client.loop_read()
        finally:
            self._reading = False
        self._flush()  # the acknowledgements and answers of everything just read, at once

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._flush_sock is not None:
            return
        self._flush_sock = sock
        if not self._reading:
            self._call(self._flush)  # at the end of this loop iteration

    def _flush(self) -> None:
        sock, self._flush_sock = self._flush_sock, None
        if sock is None:
            return
        if sock is not self._sock:
            self._add_writer(sock)  # a socket not (yet, or any more) ours: the selector's way
            return
        self._writable()
        if self._client.want_write():  # the socket buffer is full: wait until it drains
            self._add_writer(sock)

    def _writable(self) -> None:
        sock = self._sock
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
