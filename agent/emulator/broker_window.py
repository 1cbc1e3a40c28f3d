"""The emulator's publishes that wait for the broker's in-flight window, on a short path.

A device has a request or two in flight; a service rolling a job out to thousands of devices
publishes their notifications and replies far faster than the broker acknowledges them, and
the broker's Receive Maximum (mosquitto: `max_inflight_messages`, 20 by default) holds the
rest back. paho's own `publish` queued each of them with a message info and its
`threading.Condition`, and sent it on a PUBACK through `_do_on_publish` and
`_update_inflight` (a walk of its table from the start, and `_send_publish`): in two
2,000-thing `sim fleet` rollouts 31,067 of the emulator's 36,000 publishes waited that way.
`WindowedClient` keeps them in paho's table as paho does (queued, so that a reconnect sends
them again in order) and sends them, in order, as the window frees, with the PUBLISH and the
PUBACK on `ShortPathClient`'s and `ServiceClient`'s short paths.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBLISH, mqtt_ms_queued, mqtt_ms_wait_for_puback
from paho.mqtt.enums import MessageState, MQTTErrorCode

from jobs_agent.transport.paho_client import PlainInfo, ShortPathClient, _publish_packet

__all__ = ["WindowedClient"]


class WindowedClient(ShortPathClient):
    """`ShortPathClient` whose `publish_qos1` also takes a short path when the window is full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: deque[int] = deque()
        """The packet ids of the `publish_qos1` messages waiting for the in-flight window, in
        order (`publish_qos1`); while they are all that waits, they go out without
        paho's `publish` and `_update_inflight` (`_window_freed`)."""

    # -- publishing past the in-flight window ------------------------------------------------------
    def publish_qos1(self, topic: str, payload: bytes) -> tuple[MQTTErrorCode, int]:
        """`ShortPathClient.publish_qos1`, and a short path for a publish the window (the
        broker's Receive Maximum, 20 from mosquitto by default) has no room for: a rollout's
        notifications and replies to thousands of devices at once mostly wait for it (31,067
        of 36,000 publishes in two 2,000-thing `sim fleet` rollouts). paho's `publish` made
        each one a message info with a `threading.Condition`, and its acknowledgement went
        through `_do_on_publish` and `_update_inflight` instead of `_acked`. The message
        waits in paho's `_out_messages` as paho's `publish` leaves it (queued, so a reconnect
        sends it again in order), its packet id in `_waiting`."""
        limit = self._max_inflight_messages
        if not limit or self._inflight_messages < limit:
            return super().publish_qos1(topic, payload)
        topic_bytes = topic.encode("utf-8")
        mid = self._last_mid + 1 if self._last_mid < 65535 else 1
        if not self._may_wait(topic_bytes, payload, mid):
            return super().publish_qos1(topic, payload)  # paho's `publish`
        self._last_mid = mid
        self._out_messages[mid] = _plain_message(mid, topic_bytes, payload, mqtt_ms_queued)
        self._waiting.append(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS, mid

    def _may_wait(self, topic: bytes, payload: bytes, mid: int) -> bool:
        """Whether a publish may wait for the window on the short path: what
        `_short_path_open` asks but the window, and nothing else waiting that is not ours
        (paho's order is the table's: ours go out first only when they are all that waits)."""
        out = self._out_messages
        queued = self._max_queued_messages
        return not (
            self._sock is None
            or self._on_socket_register_write is None
            or self._sockpairW is not None
            or len(out) - self._inflight_messages != len(self._waiting)
            or (queued and len(out) >= queued)
            or mid in out
            or not topic
            or len(topic) > 65535
            or b"+" in topic
            or b"#" in topic
            or len(payload) > 268435455
        )

    def _messages_reconnect_reset_out(self) -> None:
        """A new connection (or window): paho decides again what goes out and what waits, in
        its own order; what waits takes paho's path until none of it is left."""
        self._waiting.clear()
        super()._messages_reconnect_reset_out()

    def _window_freed(self) -> MQTTErrorCode:
        """Room in the window: what waits for it goes out, in order. When all that waits is
        `_waiting`'s, without paho's `_update_inflight` (a walk of the table from its start
        and `_send_publish` per message); anything else waiting, paho's own order."""
        out, waiting = self._out_messages, self._waiting
        if len(out) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if len(waiting) != len(out) - self._inflight_messages:
            waiting.clear()
            return self._update_inflight()
        limit = self._max_inflight_messages
        while waiting and (not limit or self._inflight_messages < limit):
            message = out.get(waiting[0])
            if (
                message is None
                or message.state != mqtt_ms_queued
                or type(message.info) is not PlainInfo
            ):
                waiting.clear()
                return self._update_inflight()
            waiting.popleft()
            message.state = mqtt_ms_wait_for_puback
            self._inflight_messages += 1
            _queue_packet(self, message)
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def _plain_message(mid: int, topic: bytes, payload: bytes, state: MessageState) -> mqtt.MQTTMessage:
    """A QoS 1 message as `ShortPathClient.publish_qos1` keeps it in paho's table."""
    message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)  # its __init__ makes an info
    message.mid = mid
    message._topic = topic
    message.info = PlainInfo(mid)
    message.timestamp = time.monotonic()
    message.payload = payload
    message.qos = 1
    message.retain = False
    message.dup = False
    message.properties = None
    message.state = state
    return message


def _queue_packet(client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
    """A waiting message's PUBLISH queued for the next write, as `publish_qos1` queues one."""
    payload = cast(bytes, message.payload)  # `publish_qos1`'s, made bytes there
    packet = _publish_packet(message._topic, message.mid, payload)
    client._out_packet.append(
        {
            "command": PUBLISH,
            "mid": message.mid,
            "qos": 1,
            "pos": 0,
            "to_process": len(packet),
            "packet": packet,
            "info": message.info,
        }
    )
