"""Python's floor for an agent's start-up: the imports an agent cannot do without, a connection,
its subscriptions and its first request, and nothing else.

`python -m benchmarks.python_floor paho|awscrt --thing T ...` imports asyncio (with ssl), json,
sqlite3, structlog and yaml (the packages the project is built on, which issue 18 keeps) and the
transport's MQTT client (paho.mqtt.client; awscrt's mqtt5 and io, without awsiot's builders),
connects (TCP_NODELAY; mTLS for awscrt), subscribes to the start-next replies and `notify-next`,
says READY=1 on NOTIFY_SOCKET, publishes StartNextPendingJobExecution, then waits for SIGTERM.
The startup benchmark measures these processes as it measures the agent (`python -S`, see
harness.Tree): exec -> first request, exec -> READY=1, RSS once settled.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

IMPORTS = {
    "paho": ["paho.mqtt.client"],
    "awscrt": ["awscrt.mqtt5", "awscrt.io"],
}
COMMON = ["asyncio", "ssl", "json", "sqlite3", "structlog", "yaml"]
_KEEP: list[object] = []


def _subscriptions(thing: str) -> list[str]:
    prefix = f"$aws/things/{thing}/jobs"
    return [
        f"{prefix}/start-next/accepted",
        f"{prefix}/start-next/rejected",
        f"{prefix}/notify-next",
    ]


def _ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)


def paho(host: str, port: int, thing: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=mqtt.MQTTv5)
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    acked: list[int] = []
    client.on_subscribe = lambda c, u, mid, reasons, props: acked.append(mid)
    client.connect(host, port, keepalive=1200)
    _, mid = client.subscribe([(f, 1) for f in _subscriptions(thing)])
    while mid not in acked:
        client.loop(timeout=1.0)
    _ready()
    client.publish(f"$aws/things/{thing}/jobs/start-next", b'{"clientToken":"floor-1"}', qos=1)
    client.loop(timeout=0.1)


def awscrt(host: str, port: int, thing: str, ca: str, cert: str, key: str) -> object:
    from awscrt import io, mqtt5

    options = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
    options.override_default_trust_store_from_path(None, ca)
    connected = threading.Event()
    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name=host,
            port=port,
            tls_ctx=io.ClientTlsContext(options),
            connect_options=mqtt5.ConnectPacket(client_id=thing, keep_alive_interval_sec=1200),
            on_lifecycle_event_connection_success_fn=lambda data: connected.set(),
        )
    )
    client.start()
    if not connected.wait(30):
        raise SystemExit("python_floor: no connection")
    subscriptions = [mqtt5.Subscription(f, mqtt5.QoS.AT_LEAST_ONCE) for f in _subscriptions(thing)]
    client.subscribe(mqtt5.SubscribePacket(subscriptions=subscriptions)).result(30)
    _ready()
    client.publish(
        mqtt5.PublishPacket(
            topic=f"$aws/things/{thing}/jobs/start-next",
            payload=b'{"clientToken":"floor-1"}',
            qos=mqtt5.QoS.AT_LEAST_ONCE,
        )
    ).result(30)
    return client  # kept alive until SIGTERM


def main(argv: list[str]) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    role = argv[0]
    import importlib

    for name in COMMON + IMPORTS[role]:
        importlib.import_module(name)
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    host, port, thing = options["--host"], int(options["--port"]), options["--thing"]
    if role == "paho":
        paho(host, port, thing)
    else:
        client = awscrt(host, port, thing, options["--ca"], options["--cert"], options["--key"])
        _KEEP.append(client)  # a client that is collected disconnects
    signal.sigwait({signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
