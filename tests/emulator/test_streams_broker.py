"""A 5 MiB stream file through a real mosquitto, with the connection dropped mid-transfer.

Issue 17's service side: the emulator (its own broker transport, as `sim serve` runs it) serves
MQTT-based file delivery to a device that is a plain paho MQTT 5 client: it asks for the missing
blocks with a bitmap (CBOR), the broker restarts halfway (every connection drops, sessions are
lost), both sides reconnect, the device asks again for what it still misses, and the file it
puts together has the right SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from jobs_agent.config import ConnectionConfig
from jobs_agent.emulator.broker import broker_transport
from jobs_agent.emulator.embedded import Emulator
from jobs_agent.emulator.streams import parse_files
from tests.fixtures.broker import Mosquitto

SIZE = 5 * 1024 * 1024
BLOCK = 4096
PER_REQUEST = 32  # 128 KB of blocks, the most one request is answered with
ROLE = "arn:aws:iam::123456789012:role/StreamRole"


class Downloader:
    """The device: asks for missing blocks until it has them all."""

    def __init__(self, broker: Mosquitto, thing: str, stream: str) -> None:
        self.broker = broker
        self.base = f"$aws/things/{thing}/streams/{stream}"
        self.blocks: dict[int, bytes] = {}
        self.rejected: list[Any] = []
        self.connects = 0
        self._changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, thing, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(f"{self.base}/data/cbor", qos=1)
        client.subscribe(f"{self.base}/rejected/cbor", qos=1)
        with self._changed:
            self.connects += 1
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = cbor2.loads(message.payload)
        with self._changed:
            if message.topic.endswith("/rejected/cbor"):
                self.rejected.append(body)
            else:
                assert body["f"] == 0 and body["l"] == len(body["p"])
                self.blocks[body["i"]] = body["p"]
            self._changed.notify_all()

    def request_missing(self, total: int) -> None:
        missing = [i for i in range(total) if i not in self.blocks][:PER_REQUEST]
        if not missing:
            return
        offset = missing[0]
        bitmap = bytearray((missing[-1] - offset) // 8 + 1)
        for block in missing:
            bitmap[(block - offset) // 8] |= 1 << ((block - offset) % 8)
        request = {"c": "dl", "s": 1, "f": 0, "l": BLOCK, "o": offset, "n": PER_REQUEST}
        request["b"] = bytes(bitmap)
        self.client.publish(f"{self.base}/get/cbor", cbor2.dumps(request), qos=1)

    def download(self, total: int, drop_at: int, timeout: float = 60.0) -> bytes:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        dropped = False
        try:
            with self._changed:
                self._changed.wait_for(lambda: self.connects >= 1, 10)
            while len(self.blocks) < total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.blocks)} of {total} blocks")
                if not dropped and len(self.blocks) >= drop_at:
                    dropped = True
                    self.broker.restart()  # every connection drops; sessions are lost
                    with self._changed:
                        self._changed.wait_for(lambda: self.connects >= 2, 15)
                before = len(self.blocks)
                self.request_missing(total)
                with self._changed:
                    # a whole answer, or nothing for a while: ask again for what is missing
                    self._changed.wait_for(
                        lambda b=before: (
                            len(self.blocks) >= min(total, b + PER_REQUEST) or bool(self.rejected)
                        ),
                        1.0,
                    )
                assert not self.rejected, self.rejected
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        assert dropped
        return b"".join(self.blocks[i] for i in range(total))


@pytest.fixture
async def served(fresh_mosquitto: Mosquitto) -> AsyncIterator[Emulator]:
    config = ConnectionConfig(
        transport="paho",
        endpoint=fresh_mosquitto.host,
        port=fresh_mosquitto.port,
        tls=False,
        client_id="stream-emulator",
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.3,
    )
    emulator = Emulator(broker_transport(config), tick_seconds=None)
    await emulator.start(connect_timeout=10)
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.mark.slow
async def test_a_5_mib_stream_survives_a_connection_drop(
    served: Emulator, fresh_mosquitto: Mosquitto
) -> None:
    content = os.urandom(SIZE)
    service = served.service
    service.put_s3_object("firmware", "image.bin", content)
    service.streams.create(
        "image",
        parse_files([{"fileId": 0, "s3Location": {"bucket": "firmware", "key": "image.bin"}}]),
        ROLE,
    )
    total = -(-SIZE // BLOCK)
    device = Downloader(fresh_mosquitto, "gateway-1", "image")
    data = await asyncio.to_thread(device.download, total, total // 2)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(content).hexdigest()
    assert device.connects >= 2
    assert service.counters["GetStream"] >= total // PER_REQUEST
