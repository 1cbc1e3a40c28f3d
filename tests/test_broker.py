"""The test broker itself: the fixtures every transport test trusts must enforce what they claim.

Plain paho clients (no project code) so a failure here points at the fixture, not a transport.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.fixtures.broker import Mosquitto

TIMEOUT = 5.0


def _client(
    *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    if ca is not None:
        client.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
    return client


def _round_trip(client: mqtt.Client, host: str, port: int) -> bytes:
    """Connect, subscribe, publish to self; return the payload received."""
    connected = threading.Event()
    subscribed = threading.Event()
    received: list[bytes] = []
    got = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        if not rc.is_failure:
            connected.set()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: object, p: object) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        got.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT), "no CONNACK"
        client.subscribe("fixture/check", qos=1)
        assert subscribed.wait(TIMEOUT), "no SUBACK"
        client.publish("fixture/check", b"hello", qos=1)
        assert got.wait(TIMEOUT), "message not delivered"
        return received[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _refused(client: mqtt.Client, host: str, port: int) -> bool:
    """True if the TLS handshake or the MQTT connection is refused."""
    outcome = threading.Event()
    accepted: list[bool] = []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        accepted.append(not rc.is_failure)
        outcome.set()

    def on_disconnect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        outcome.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]  # floats work; quick stop
    try:
        # With TLS 1.3 the server's verdict on the client certificate can arrive after the
        # handshake returns, so a refusal shows either here or as a dropped connection.
        client.connect(host, port)
    except (ssl.SSLError, OSError):
        return True
    client.loop_start()
    try:
        assert outcome.wait(TIMEOUT), "neither accepted nor refused"
        return accepted != [True]
    finally:
        client.disconnect()
        client.loop_stop()


def test_plain_listener_round_trip(mosquitto: Mosquitto) -> None:
    assert _round_trip(_client(), mosquitto.host, mosquitto.port) == b"hello"


def test_mtls_listener_accepts_device_certificate(mosquitto: Mosquitto) -> None:
    certs = mosquitto.certs
    client = _client(ca=certs.ca, cert=certs.device_cert, key=certs.device_key)
    assert _round_trip(client, "localhost", mosquitto.tls_port) == b"hello"
    # use_identity_as_username: the broker knows the device by its certificate's CN.
    assert "u'gw-test'" in mosquitto.log_text()


def test_mtls_listener_refuses_rogue_certificate(mosquitto: Mosquitto) -> None:
    certs = mosquitto.certs
    client = _client(ca=certs.ca, cert=certs.rogue_device_cert, key=certs.rogue_device_key)
    assert _refused(client, mosquitto.host, mosquitto.tls_port)


def test_mtls_listener_refuses_client_without_certificate(mosquitto: Mosquitto) -> None:
    client = _client(ca=mosquitto.certs.ca)
    assert _refused(client, mosquitto.host, mosquitto.tls_port)


def test_restart_keeps_ports(fresh_mosquitto: Mosquitto) -> None:
    port, tls_port = fresh_mosquitto.port, fresh_mosquitto.tls_port
    fresh_mosquitto.restart()
    assert (fresh_mosquitto.port, fresh_mosquitto.tls_port) == (port, tls_port)
    assert _round_trip(_client(), fresh_mosquitto.host, port) == b"hello"
