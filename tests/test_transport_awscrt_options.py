"""The awscrt backend's client, built from the CRT's own classes instead of awsiotsdk's builder
(issue 18), carries every setting of the builder that AWS IoT Core relies on: the builder itself
is the reference, and a real TLS peer on port 443 sees the ALPN name and the user name the CRT
sends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from awscrt import io, mqtt5

from jobs_agent.transport.awscrt_client import (
    MQTT_ALPN,
    client_bootstrap,
    client_options,
    mtls_context_options,
)
from jobs_agent.transport.options import AwscrtOptions
from tests.fixtures.certs import CertPaths

IOT_ENDPOINT = "abc123-ats.iot.eu-west-1.amazonaws.com"
USERNAME = "gw?x-amz-customauthorizer-name=device-auth"
"""A user name a broker checks (a custom authorizer's query string): it must arrive as written."""
CALLBACKS = {
    "on_publish_callback_fn",
    "on_lifecycle_event_stopped_fn",
    "on_lifecycle_event_attempting_connect_fn",
    "on_lifecycle_event_connection_success_fn",
    "on_lifecycle_event_connection_failure_fn",
    "on_lifecycle_event_disconnection_fn",
}
"""Set by the transport itself on the options, not by the builder's defaults."""


def options_for(certs: CertPaths, **values: Any) -> AwscrtOptions:
    return AwscrtOptions(
        **{"cert": certs.device_cert, "key": certs.device_key, "ca": certs.ca, **values}
    )


def credentials(config: AwscrtOptions) -> dict[str, Any]:
    """The user name and password as the agent gave them to the builder: both, with a user
    name only."""
    if not config.username:
        return {}
    return {
        "username": config.username,
        "password": config.password.encode() if config.password else None,
    }


def built_by_the_builder(config: AwscrtOptions, client_id: str) -> mqtt5.ClientOptions:
    """The options awsiotsdk's `mtls_from_path` makes from the agent's settings, as the agent
    passed them to it before: the builder fills in the options object it is given."""
    from awsiot import mqtt5_client_builder

    options = mqtt5.ClientOptions(host_name=config.endpoint)
    mqtt5_client_builder.mtls_from_path(
        cert_filepath=str(config.cert),
        pri_key_filepath=str(config.key),
        client_options=options,
        endpoint=config.endpoint,
        port=config.port,
        client_id=client_id,
        keep_alive_interval_sec=config.keepalive_seconds,
        ping_timeout_ms=min(30_000, config.keepalive_seconds * 1000 // 2),
        session_expiry_interval_sec=config.session_expiry_seconds,
        session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
        offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
        retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
        min_reconnect_delay_ms=max(1, int(config.reconnect_min_seconds * 1000)),
        max_reconnect_delay_ms=max(1, int(config.reconnect_max_seconds * 1000)),
        client_bootstrap=client_bootstrap(),
        ca_filepath=str(config.ca),
        **credentials(config),
        enable_metrics_collection=False,
    )
    return options


@pytest.mark.parametrize("username", ["", USERNAME])
@pytest.mark.parametrize("port", [8883, 443])
def test_the_client_options_are_the_builders_for_aws_iot_core(
    broker_certs: CertPaths, port: int, username: str
) -> None:
    """Field by field, the options made here equal the builder's for an AWS endpoint, with its
    AWS IoT Core flow control, SDK metrics off and the user name as written (empty without
    one, as the builder makes it); only the TLS context is another object of the same kind
    (its ALPN is the next test's), and the callbacks are the transport's to set."""
    config = options_for(
        broker_certs, endpoint=IOT_ENDPOINT, port=port, username=username, password="pw"
    )
    ours = client_options(config, "gw-options")
    theirs = built_by_the_builder(config, "gw-options")
    for field in dataclasses.fields(mqtt5.ClientOptions):
        if field.name in CALLBACKS or field.name in ("tls_ctx", "connect_options"):
            continue
        assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    for field in dataclasses.fields(mqtt5.ConnectPacket):
        mine, builders = (getattr(o.connect_options, field.name) for o in (ours, theirs))
        assert mine == builders, field.name
    assert isinstance(ours.tls_ctx, io.ClientTlsContext)
    assert (
        ours.extended_validation_and_flow_control_options
        == mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
    )
    assert ours.disable_metrics is True and ours.metrics is None
    assert ours.connect_options.username == username


def test_another_broker_gets_no_aws_iot_core_throttle(broker_certs: CertPaths) -> None:
    """The one setting deliberately not the builder's: its flow control only delays requests on
    a broker that is not AWS IoT Core (16 ms spacing measured through mosquitto)."""
    ours = client_options(options_for(broker_certs, endpoint="localhost"), "gw-local")
    assert (
        ours.extended_validation_and_flow_control_options
        == mqtt5.ExtendedValidationAndFlowControlOptions.NONE
    )


@pytest.mark.parametrize(("port", "alpn"), [(443, [MQTT_ALPN]), (8883, None)])
def test_alpn_x_amzn_mqtt_ca_is_offered_on_port_443_only(
    broker_certs: CertPaths, port: int, alpn: list[str] | None
) -> None:
    """AWS IoT Core takes an X.509 client certificate on port 443 only with ALPN
    `x-amzn-mqtt-ca`; the builder offers it there and nowhere else."""
    assert io.is_alpn_available()
    config = options_for(broker_certs, endpoint=IOT_ENDPOINT, port=port)
    assert mtls_context_options(config).alpn_list == alpn


class PeerOn443:
    """A TLS peer on localhost:443 that takes one MQTT connection, with the test CA's server
    certificate and the device certificate required: it records the ALPN name the client
    offered and the CONNECT packet, and accepts it."""

    def __init__(self, certs: CertPaths, listener: socket.socket) -> None:
        self.listener = listener
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server_cert, certs.server_key)
        self.context.load_verify_locations(certs.ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols([MQTT_ALPN, "mqtt"])
        self.alpn: str | None = None
        self.connect: bytes = b""

    def serve_one(self) -> None:
        connection, _ = self.listener.accept()
        with self.context.wrap_socket(connection, server_side=True) as tls:
            self.alpn = tls.selected_alpn_protocol()
            self.connect = read_packet(tls)
            tls.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: success, no properties
            while tls.recv(4096):  # until the client's DISCONNECT and close
                pass


def read_packet(tls: ssl.SSLSocket) -> bytes:
    """One MQTT packet's body (after its fixed header)."""
    first = tls.recv(1)
    assert first == b"\x10", first  # CONNECT
    length = shift = 0
    while True:
        byte = tls.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        body += tls.recv(length - len(body))
    return body


def connect_credentials(body: bytes) -> tuple[str | None, bytes | None]:
    """The user name and password of an MQTT 5 CONNECT body without a will."""
    flags = body[7]
    pos = 10  # protocol name (6), level (1), flags (1), keep-alive (2)
    length = shift = 0
    while True:  # the properties' length
        byte = body[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    pos += length

    def field() -> bytes:
        nonlocal pos
        size = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2 + size
        return body[pos - size : pos]

    field()  # the client id
    username = field().decode() if flags & 0x80 else None
    password = field() if flags & 0x40 else None
    return username, password


@contextlib.contextmanager
def port_443() -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 443))
    except OSError as exc:
        listener.close()
        pytest.skip(f"cannot listen on port 443: {exc}")
    listener.listen(1)
    try:
        yield listener
    finally:
        listener.close()


async def test_a_peer_on_port_443_sees_alpn_and_the_user_name_as_written(
    broker_certs: CertPaths,
) -> None:
    """A real mTLS connection on port 443: the client offers `x-amzn-mqtt-ca`, and its CONNECT
    carries the user name and password as written (no SDK metrics appended to the user name)."""
    from jobs_agent.transport.awscrt import AwscrtTransport

    config = options_for(
        broker_certs, endpoint="localhost", port=443, username=USERNAME, password="secret"
    )
    with port_443() as listener:
        peer = PeerOn443(broker_certs, listener)
        serving = asyncio.ensure_future(asyncio.to_thread(peer.serve_one))
        transport = AwscrtTransport(config, "gw-443")
        try:
            await transport.connect(timeout=30.0)
        finally:
            await transport.disconnect()
        await asyncio.wait_for(serving, 30.0)
    assert peer.alpn == MQTT_ALPN
    assert connect_credentials(peer.connect) == (USERNAME, b"secret")


def test_a_websocket_client_is_still_made_by_the_builder(broker_certs: CertPaths) -> None:
    """WebSockets keep awsiotsdk's builder, imported then: given the options made here, it adds
    its TLS context and SigV4 handshake and keeps the rest (no broker here speaks WebSockets,
    so this checks the client is made from them, not a connection)."""
    from jobs_agent.transport.awscrt_client import websocket_client

    config = AwscrtOptions(
        endpoint=IOT_ENDPOINT, port=443, websocket=True, ca=broker_certs.ca, username=USERNAME
    )
    options = client_options(config, "gw-ws")
    assert options.tls_ctx is None  # the builder's to make, with ALPN http/1.1 on 443
    client = websocket_client(config, options)
    assert isinstance(client, mqtt5.Client)
    assert isinstance(options.tls_ctx, io.ClientTlsContext)
    assert options.websocket_handshake_transform is not None
    assert options.disable_metrics is True and options.metrics is None
    assert options.connect_options.username == USERNAME
    assert options.bootstrap is client_bootstrap()
