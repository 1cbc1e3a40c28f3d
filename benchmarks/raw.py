"""The floor: what the same broker does for a minimal raw paho client, with TCP_NODELAY.

A responder process (`python -m benchmarks.raw responder --port P`) stands in for the service:
on `bench/<id>/go` it publishes `bench/<id>/notify` carrying its clock, and it answers every
`bench/<id>/req` on `bench/<id>/rep`. The device side here is one paho client driven by
`client.loop()` in the calling thread (no network thread, no asyncio): the least a Python client
can do per message. All publishes are QoS 1, as in the Jobs protocol.

* `notify_then_round_trip`: one notify delivery plus one request/reply round trip (plus, if asked,
  one fsynced write), the physical floor of "job created -> handler started" (notify-next, then
  start-next and its accepted reply, then the durable record that precedes the handler).
* `round_trips`: request/reply round trips back to back; two per job is the floor of a drain
  (start-next and the final update).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_socket_open = _nodelay
    return client


# -- the responder (a separate process, like the emulator) ---------------------------------------
def responder(host: str, port: int) -> int:
    client = _client(f"bench-responder-{uuid.uuid4().hex[:6]}")

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        base, _, kind = message.topic.rpartition("/")
        if kind == "go":
            c.publish(f"{base}/notify", repr(time.time()).encode(), qos=1)
        elif kind == "req":
            c.publish(f"{base}/rep", message.payload, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        print("ready", flush=True)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=60)
    client.subscribe([("bench/+/go", 1), ("bench/+/req", 1)])
    with contextlib.suppress(KeyboardInterrupt):
        client.loop_forever()
    return 0


# -- the device side -------------------------------------------------------------------------------
class RawDevice:
    """A raw paho client, stepped by hand; optionally over mTLS (the awscrt agent's path)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.client = _client(f"bench-raw-{self.id}")
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            if cert is not None and key is not None:
                context.load_cert_chain(str(cert), str(key))
            self.client.tls_set_context(context)
        self.inbox: list[tuple[str, bytes]] = []
        self.client.on_message = lambda c, u, m: self.inbox.append((m.topic, bytes(m.payload)))
        self.client.connect(host, port, keepalive=60)
        self._wait(lambda: self.client.is_connected())
        _, mid = self.client.subscribe(
            [(f"bench/{self.id}/notify", 1), (f"bench/{self.id}/rep", 1)]
        )
        acked: list[int] = []
        self.client.on_subscribe = lambda c, u, m, r, p: acked.append(m)
        self._wait(lambda: mid in acked)

    def _wait(self, condition: Any) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("raw client: no answer from the broker")
            self.client.loop(timeout=0.1)

    def _receive(self, suffix: str) -> bytes:
        topic = f"bench/{self.id}/{suffix}"
        found: list[bytes] = []

        def arrived() -> bool:
            for index, (t, payload) in enumerate(self.inbox):
                if t == topic:
                    found.append(payload)
                    del self.inbox[index]
                    return True
            return False

        self._wait(arrived)
        return found[0]

    def round_trip(self) -> float:
        start = time.perf_counter()
        self.client.publish(f"bench/{self.id}/req", b"x", qos=1)
        self._receive("rep")
        return time.perf_counter() - start

    def notify_then_round_trip(self, journal: int | None = None) -> float:
        """Seconds from the responder's notify to the reply of the request it triggers; with
        `journal` (an open file), to the end of a record written and fsynced there after the
        reply: the record a handler's start must wait for."""
        self.client.publish(f"bench/{self.id}/go", b"", qos=1)
        sent = float(self._receive("notify"))
        self.client.publish(f"bench/{self.id}/req", b"x", qos=1)
        self._receive("rep")
        if journal is not None:
            os.write(journal, b"job-0001 1 RUNNING\n")
            os.fsync(journal)
        return time.time() - sent

    def close(self) -> None:
        self.client.disconnect()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw")
    parser.add_argument("role", choices=["responder"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return responder(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
