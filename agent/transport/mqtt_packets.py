"""The MQTT 5 packets the short paths of `paho_client` (the device's and the emulator's) read
without paho's helpers: a QoS 1 PUBLISH, a PUBACK saying success, the variable byte integer.
Plain byte layouts, kept apart from the client that uses them; anything these do not recognise
returns None, and paho decodes it its own way."""

from __future__ import annotations

from typing import Any


def plain_puback(cmd: Any, packet: bytes | bytearray) -> int | None:
    """The packet id of an MQTT 5 PUBACK saying success with no properties (nearly all of
    them), or None to let paho decode it. Its body: the packet id (2 bytes), then an optional
    reason code and an optional properties length."""
    size = len(packet)
    plain = (
        cmd == "PUBACK"
        and 2 <= size <= 4
        and (size < 3 or packet[2] < 0x80)
        and (size < 4 or packet[3] == 0)
    )
    return (packet[0] << 8) | packet[1] if plain else None


def variable_byte_integer(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """The MQTT variable byte integer at `pos` and the position after it; None when `data`
    ends inside it or it runs past its 4 bytes."""
    value = shift = 0
    for index in range(pos, min(pos + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, index + 1
    return None


def qos1_publish(command: int, packet: bytes | bytearray) -> tuple[str, int, bytes] | None:
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
    if packet[end + 2] < 0x80:  # properties shorter than 128 bytes (all of them): no call
        pos = end + 3 + packet[end + 2]
    else:
        properties = variable_byte_integer(packet, end + 2)
        if properties is None:
            return None
        length, pos = properties
        pos += length
    if pos > size or not topic:
        return None
    return topic, mid, bytes(packet[pos:])
