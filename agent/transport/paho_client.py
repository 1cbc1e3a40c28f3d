"""paho's client as the paho transport drives it: short paths for the packets a device reads
and writes most, quiet logs.

Kept apart from the transport (`paho.py`), which drives the client on the event loop, and from
how a connection is made (`paho_connect`): this is what one connection does per packet.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import LogLevel, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from jobs_agent.transport.mqtt_packets import plain_puback as plain_puback
from jobs_agent.transport.mqtt_packets import qos1_publish as qos1_publish
from jobs_agent.transport.mqtt_packets import variable_byte_integer as variable_byte_integer

log = structlog.get_logger("jobs_agent.transport.paho")

_REPORTED_LOG_LEVELS = frozenset({mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING})
READ_SIZE = 65536
PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
_PUBLISH_QOS1 = bytes([mqtt.PUBLISH | 0x02])
_PUBLISH_QOS1_BYTE = mqtt.PUBLISH | 0x02
"""The first byte of a QoS 1 PUBLISH, neither a duplicate nor retained."""
_HEAD_1, _HEAD_2 = struct.Struct("!BBH"), struct.Struct("!BBBH")  # a 1 or 2 byte length
_MID = struct.Struct("!HB")  # the packet id, then a properties length of 0
_PUBACK = struct.Struct("!BBH")  # a PUBACK saying success: its length (2), the packet id


class PlainInfo(mqtt.MQTTMessageInfo):
    """A publish's info without paho's `threading.Condition`: nothing of the project waits on
    one (`wait_for_publish`); the transports wait on a future or an event of their own."""

    __slots__ = ()

    def __init__(self, mid: int) -> None:  # no super().__init__: that makes the Condition
        self.mid = mid
        self._published = False
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        self._published = True


def _remaining_length(size: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        out.append(byte | 0x80 if size else byte)
        if not size:
            return bytes(out)


def _publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    """An MQTT 5 QoS 1 PUBLISH without properties, as paho's `_send_publish` makes it; its
    header packed at once below 16 KiB (five calls per publish fewer than byte by byte)."""
    size = len(topic)
    rest = size + len(payload) + 5  # length, packet id, properties
    head = (
        _HEAD_1.pack(_PUBLISH_QOS1[0], rest, size)
        if rest < 0x80
        else _HEAD_2.pack(_PUBLISH_QOS1[0], rest & 0x7F | 0x80, rest >> 7, size)
        if rest < 0x4000
        else _PUBLISH_QOS1 + _remaining_length(rest) + size.to_bytes(2, "big")
    )
    return b"".join((head, topic, _MID.pack(mid, 0), payload))


class ShortPathClient(mqtt.Client):
    """paho's client with buffered reads and short paths for the two packets a client of the
    AWS IoT APIs receives most: a PUBACK saying success with no properties is not decoded into
    reason-code and property objects, and a QoS 1 PUBLISH is handed to `on_qos1` as topic and
    payload, its MQTT 5 properties skipped (no AWS IoT API uses them), without paho's message
    object and filter match. Anything unusual (a failure reason, properties on a PUBACK, QoS 0
    or 2, a topic alias, a malformed packet) takes paho's own path. A packet wholly read is
    cut out of the buffer in one step. Its own QoS 1 publishes go out without paho's message
    info (`publish_qos1`). These override paho internals (`_handle_pubackcomp`,
    `_handle_publish`, `_in_packet`, `_packet_read`, `_sock_recv`, `_sock_close`): paho is
    pinned below 3, and the transport suite (tests/test_transport.py) and
    tests/emulator/test_broker_transport.py hold them against a real mosquitto."""

    on_qos1: Callable[[str, bytes], None] | None = None
    """`(topic, payload)` callback for QoS 1 publishes received (set by the transport)."""
    holding_acks = False
    """Set by the transport while it reads: a PUBACK queued then sets `acks_waiting` only."""
    acks_waiting = False
    _rbuf: bytes = b""
    _rpos: int = 0

    # -- the connection: paho hands the host name to `getaddrinfo` as text, which goes through
    # the "idna" codec; for an ASCII name that codec gives back its ASCII bytes, after loading
    # unicodedata and stringprep (0.3 MB resident for the process's whole life; issue 18).
    def _create_socket_connection(self) -> socket.socket:
        host: str = self._host
        if not host.isascii() or self._get_proxy():
            return super()._create_socket_connection()
        return socket.create_connection(
            (host.encode("ascii"), self._port),  # type: ignore[arg-type]  # bytes: getaddrinfo's
            timeout=self._connect_timeout,
            source_address=(self._bind_address, self._bind_port),
        )

    # -- buffered reads: paho reads each packet's header a byte at a time, three system calls
    # per packet; here one `recv` fills a buffer paho's reads are served from.
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf) and not self._read_into_buffer():
            return b""  # end of stream: paho handles the loss
        start = self._rpos
        self._rpos = min(len(self._rbuf), start + bufsize)
        return self._rbuf[start : self._rpos]

    def _read_into_buffer(self) -> bool:
        """One `recv` into the (used up) buffer; False at the end of the stream. Raises
        BlockingIOError when there is nothing to read."""
        data = super()._sock_recv(READ_SIZE)
        if not data:
            return False
        self._rbuf, self._rpos = data, 0
        # The keep-alive clock, once per `recv`, not per packet (issue 18: 7 in ~3 reads a job)
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return True

    def _read_next(self) -> MQTTErrorCode | None:
        """`_read_into_buffer` for `_packet_read`: None when bytes came, else what paho's read
        of a command byte returns (nothing there yet, or the connection lost)."""
        try:
            if self._read_into_buffer():
                return None
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
        return MQTTErrorCode.MQTT_ERR_CONN_LOST

    def _packet_read(self) -> MQTTErrorCode:
        """A packet wholly in the read buffer is cut out of it in one step; paho reads it a
        byte at a time for its header (one `_sock_recv` each), then its body. The buffer used
        up, it is filled first, as paho's read of a command byte would: so the first packet of
        a read takes the short path too (issue 18: about 3.6 per plugin job did not). A packet
        not wholly there yet, one paho has begun, or a header that is not a valid length,
        takes paho's own path."""
        if self._in_packet["command"] == 0 and self._rpos >= len(self._rbuf):
            unread = self._read_next()
            if unread is not None:
                return unread
        buf, start = self._rbuf, self._rpos
        size = len(buf)
        if self._in_packet["command"] != 0 or start + 2 > size:
            return super()._packet_read()
        command, first = buf[start], buf[start + 1]
        remaining = (  # a length below 16 KiB (nearly every packet) read without a call
            (first, start + 2)
            if first < 0x80
            else ((first & 0x7F) | (buf[start + 2] << 7), start + 3)
            if start + 2 < size and buf[start + 2] < 0x80
            else variable_byte_integer(buf, start + 1)
        )
        if remaining is None:
            return super()._packet_read()  # not all there yet, or paho reports the error
        length, pos = remaining
        shift = 7 * (pos - start - 1)
        end = pos + length
        if command == 0 or end > size:
            return super()._packet_read()
        self._rpos = end
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": list(buf[start + 1 : pos]),
            "remaining_mult": 1 << shift,
            "remaining_length": length,
            "packet": bytearray(buf[pos:end]),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return rc

    def buffered(self) -> bool:
        """Bytes were read from the socket that paho has not consumed yet (the selector will
        not report them: read them before waiting again)."""
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    # -- coalesced writes: paho sends each queued packet with a `send` of its own, a system call
    # and a wake-up of the broker per acknowledgement (issue 18: three on the way from a
    # job's notification to its start-next request).
    def _packet_write(self) -> MQTTErrorCode:
        """Every queued packet in one `send`, when none needs paho's bookkeeping after it is
        written (a QoS 0 PUBLISH calls on_publish, a DISCONNECT closes): paho's own loop for
        those, and for a single packet."""
        out = self._out_packet
        if len(out) < 2 or not self.writes_in_one_send():
            return super()._packet_write()
        data = b"".join([packet["packet"][packet["pos"] :] for packet in out])  # no generator
        try:
            written = self._sock_send(data)
        except (AttributeError, ValueError):
            return MQTTErrorCode.MQTT_ERR_SUCCESS  # no socket: as paho
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if written <= 0:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with self._msgtime_mutex:
            self._last_msg_out = mqtt.time_func()
        if written == len(data):  # all of it: the queue emptied in one step, not per packet
            out.clear()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        while written > 0:  # a partial write: what was written leaves the queue
            packet = out[0]
            step = min(written, packet["to_process"])
            packet["to_process"] -= step
            packet["pos"] += step
            written -= step
            if packet["to_process"] == 0:
                out.popleft()
        return self._packet_write()  # the rest, until it would block

    def writes_in_one_send(self) -> bool:
        """Whether `_packet_write` sends what is queued in one `send`: no packet in the queue
        needs paho's bookkeeping once written."""
        for packet in self._out_packet:  # no call per packet (asked twice per write)
            command = packet["command"] & 0xF0
            if command == mqtt.DISCONNECT or (command == mqtt.PUBLISH and packet["qos"] == 0):
                return False
        return True

    # -- QoS 1 publishes without paho's message info
    def publish_qos1(self, topic: str, payload: bytes) -> tuple[MQTTErrorCode, int]:
        """paho's `publish(topic, payload, qos=1)` as (rc, mid), without what the project's
        transports do not use: a message info others could wait on (a `threading.Condition`
        per message: five per job of a device, issue 18), the packet built through paho's
        helpers and debug line, the locks of a threaded client (ours are driven by the event
        loop alone). The message is kept in paho's `_out_messages` as paho keeps it, so a
        reconnect sends it again (DUP set) like any other. Anything unusual (no socket, the
        in-flight window full, a topic paho would refuse, no loop-driven writes) takes paho's
        own `publish`."""
        topic_bytes = topic.encode("utf-8")
        mid = self._last_mid + 1 if self._last_mid < 65535 else 1
        if not self._short_path_open(topic_bytes, payload, mid):
            info = self.publish(topic, payload, qos=1)
            return info.rc, info.mid
        self._last_mid = mid
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)  # its __init__ makes an info
        message.mid = mid
        message._topic = topic_bytes
        message.info = PlainInfo(mid)
        message.timestamp = time.monotonic()
        message.payload = payload
        message.qos = 1
        message.retain = False
        message.dup = False
        message.properties = None
        message.state = mqtt.mqtt_ms_wait_for_puback
        self._out_messages[mid] = message
        self._inflight_messages += 1
        packet = _publish_packet(topic_bytes, mid, payload)
        self._out_packet.append(
            {
                "command": mqtt.PUBLISH,
                "mid": mid,
                "qos": 1,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": message.info,
            }
        )
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS, mid

    def _short_path_open(self, topic: bytes, payload: bytes, mid: int) -> bool:
        """Whether `publish_qos1` may take its short path (see there)."""
        limit = self._max_inflight_messages
        queued = self._max_queued_messages
        return not (
            self._sock is None
            or self._on_socket_register_write is None
            or self._sockpairW is not None
            or (limit and self._inflight_messages >= limit)
            or (queued and len(self._out_messages) >= queued)
            or mid in self._out_messages
            or not topic
            or len(topic) > 65535
            or b"+" in topic
            or b"#" in topic
            or len(payload) > 268435455
        )

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        mid = plain_puback(cmd, self._in_packet["packet"])
        if mid is None:
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, PUBACK_OK, NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        publish = qos1_publish(self._in_packet["command"], self._in_packet["packet"])
        if publish is None or self.on_qos1 is None or self._manual_ack:
            return super()._handle_publish()
        return self._qos1_in(*publish)

    def _qos1_in(self, topic: str, mid: int, payload: bytes) -> MQTTErrorCode:
        """A plain QoS 1 PUBLISH read (`qos1_publish`): handed to `on_qos1`, then acknowledged."""
        assert self.on_qos1 is not None
        self._qos1_received(self.on_qos1, topic, payload)
        if self._sockpairW is not None or self._on_socket_register_write is None:
            return self._send_puback(mid)  # paho's queue writes or wakes its thread itself
        # The PUBACK queued as the packet it is: paho's `_send_puback`, `_send_command_with_mid`
        # and `_packet_queue` were three calls and a debug line per message (issue 18).
        packet = _PUBACK.pack(mqtt.PUBACK, 2, mid)
        self._out_packet.append(
            {
                "command": mqtt.PUBACK,
                "mid": mid,
                "qos": 1,
                "pos": 0,
                "to_process": 4,
                "packet": packet,
                "info": None,
            }
        )
        if self.holding_acks:  # paho's register call and the transport's, which held it back
            self.acks_waiting = True  # (issue 18: three calls a message, five messages a job)
        else:
            self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _qos1_received(
        self, callback: Callable[[str, bytes], None], topic: str, payload: bytes
    ) -> None:
        callback(topic, payload)


class DeviceClient(ShortPathClient):
    """The device's client: the short paths, and only the log lines the transport reads
    (errors and warnings) formatted: paho formats a debug line for every packet in and out
    whenever a log callback is set. paho is pinned below 3 (`_easy_log` and the callback
    lock are internal); tests/test_transport_paho_loop.py holds both."""

    on_acked: Callable[[int], None] | None = None
    """Called with the packet id of each `publish_qos1` a plain PUBACK acknowledged, from the
    thread reading (set by the transport)."""

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        if level in _REPORTED_LOG_LEVELS or self._logger is not None:
            super()._easy_log(level, fmt, *args)

    def _qos1_received(
        self, callback: Callable[[str, bytes], None], topic: str, payload: bytes
    ) -> None:
        with self._in_callback_mutex:  # as paho's on_message: nothing is written meanwhile
            callback(topic, payload)

    # -- reading: every packet of one `recv` in one call
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's `loop_read`, for a socket the selector says is readable: every complete
        packet of the read buffer in one call, a QoS 1 PUBLISH and a PUBACK saying success
        (five and two per plugin job) without paho's packet dictionaries and `_packet_handle`
        (`_next_plain`). paho's handled one packet per call, so the transport called it again
        per packet (issue 18: seven calls per plugin job, each building two dictionaries). A
        packet only partly read, or any other, takes `_packet_read`."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        while True:
            rc = self._next_plain()
            if rc is None:
                rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if self._rpos >= len(self._rbuf):
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _next_plain(self) -> MQTTErrorCode | None:
        """The packet at the read position (the buffer filled first when used up), handled
        as paho would, when it is wholly read and a plain QoS 1 PUBLISH (`qos1_publish`) or a
        PUBACK saying success with no properties (`plain_puback`); None for anything else,
        which `_packet_read` then reads."""
        if self._in_packet["command"] != 0:
            return None
        if self._rpos >= len(self._rbuf):
            unread = self._read_next()
            if unread is not None:
                return unread
        buf, start = self._rbuf, self._rpos
        size = len(buf)
        if start + 2 > size:
            return None
        command, first = buf[start], buf[start + 1]
        if command != _PUBLISH_QOS1_BYTE and command != mqtt.PUBACK:
            return None
        if first < 0x80:
            end = start + 2 + first
            packet = buf[start + 2 : end]
        elif start + 2 < size and buf[start + 2] < 0x80:
            end = start + 3 + ((first & 0x7F) | (buf[start + 2] << 7))
            packet = buf[start + 3 : end]
        else:
            return None
        if end > size:
            return None
        if command == mqtt.PUBACK:
            mid = plain_puback("PUBACK", packet)
            if mid is None:
                return None
            self._rpos = end
            message = self._out_messages.get(mid)
            if (
                message is not None
                and self.on_acked is not None
                and type(message.info) is PlainInfo
                and message.state == mqtt.mqtt_ms_wait_for_puback
            ):
                return self._acked(mid, message)
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, PUBACK_OK, NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self.on_qos1 is None or self._manual_ack:
            return None
        publish = qos1_publish(command, packet)
        if publish is None:
            return None
        self._rpos = end
        return self._qos1_in(*publish)

    def _acked(self, mid: int, message: mqtt.MQTTMessage) -> MQTTErrorCode:
        """paho's `_do_on_publish` for a `publish_qos1` its PUBACK acknowledged with success:
        the message leaves the table in flight and `on_acked` hears it, without paho's two
        callback locks around its `on_publish` and the transport's check for a hop (issue 18:
        two PUBACKs per plugin job). The window moves on as paho's does."""
        del self._out_messages[mid]
        message.info._published = True  # `PlainInfo._set_as_published`, without a call
        self._inflight_messages -= 1
        assert self.on_acked is not None
        self.on_acked(mid)
        if self._max_inflight_messages > 0:
            return self._update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def write_now(self) -> bool:
        """Write what is queued now, unless inside one of our callbacks: paho's own rule when
        no external loop is registered (with one, it would wait for the loop to report the
        socket writable: an epoll registration, a loop iteration and a deregistration per
        packet). False when it could not write now. Not through paho's `loop_write`, whose
        unregister callback then removed a writer the loop never had (issue 18: seven calls a
        publish, two a job): the caller asks `want_write`, the flag is reset here."""
        if not self._in_callback_mutex.acquire(False):
            return False
        self._in_callback_mutex.release()
        if self._sock is None:
            return True  # `loop_write`'s "not connected": paho reports the loss
        rc = self._packet_write()
        if rc > 0 and rc != MQTTErrorCode.MQTT_ERR_AGAIN:
            self._loop_rc_handle(rc)  # as `loop_write`: the connection is lost
        elif not self._out_packet:
            self._registered_write = False  # `_call_socket_unregister_write`'s part
        return True
