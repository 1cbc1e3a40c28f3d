"""How the paho transport makes its connection: paho's client with TLS and credentials as
configured, the CONNECT's properties, the first connect's attempts with backoff, and the TLS
alert a refusing broker sent. Kept apart from the client's packet paths (`paho_client`), which
run per message; this runs per connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from jobs_agent.backoff import Backoff
from jobs_agent.transport.base import TransportError
from jobs_agent.transport.options import PahoOptions

log = structlog.get_logger("jobs_agent.transport.paho")

ALPN_MQTT = "x-amzn-mqtt-ca"
CONNECT_ATTEMPT_SECONDS = 10.0
"""Upper bound for one TCP+TLS+CONNACK attempt during the first connect."""
MISC_MIN_SECONDS = 1.0
MISC_MAX_SECONDS = 30.0
"""Bounds of the keep-alive check's period (`loop_misc`)."""
PERMANENT_CONNACK_CODES = {
    0x84,  # Unsupported Protocol Version
    0x85,  # Client Identifier not valid
    0x86,  # Bad User Name or Password
    0x87,  # Not authorized
    0x8A,  # Banned
    0x8C,  # Bad authentication method
}


class Attempt(NamedTuple):
    """What one first-connect attempt ended with."""

    ok: bool
    permanent: bool = False
    reason: str = ""


def new_client(client_class: type[mqtt.Client], config: PahoOptions, client_id: str) -> mqtt.Client:
    """An MQTT 5 client of `client_class` with the TLS and credentials `config` names."""
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if config.tls:
        client.tls_set_context(ssl_context(config))
    if config.username:
        client.username_pw_set(config.username, config.password or None)
    client.connect_timeout = CONNECT_ATTEMPT_SECONDS
    return client


def ssl_context(config: PahoOptions) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        if config.cert is not None and config.key is not None:
            context.load_cert_chain(str(config.cert), str(config.key))
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"paho transport: cannot load TLS files (ca={config.ca}, cert={config.cert},"
            f" key={config.key}): {exc}"
        ) from None
    if config.alpn:
        context.set_alpn_protocols([ALPN_MQTT])
    return context


def connect_properties(config: PahoOptions) -> Properties:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = config.session_expiry_seconds
    return properties


def read_tls_alert(sock: Any) -> str:
    """The TLS alert a broker sent on `sock` before closing it ("" if none).

    With TLS 1.3 a broker refusing our certificate sends its alert after the handshake; paho
    often fails on writing CONNECT first ("EOF occurred in violation of protocol") and never
    reads the alert. Read here, before paho closes the socket, the operator gets "unknown ca" /
    "certificate required" instead of a vague EOF."""
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    try:
        sock.setblocking(False)
        sock.recv(1)
    except ssl.SSLError as exc:
        if not isinstance(exc, ssl.SSLWantReadError | ssl.SSLEOFError):
            return str(exc)
    except OSError:
        pass
    return ""


async def connect_with_retries(
    attempt: Callable[[float], Awaitable[Attempt]],
    cfg: PahoOptions,
    client_id: str,
    timeout: float | None,
) -> None:
    """`attempt` (until a deadline), back off with jitter, attempt again until connected or
    `timeout`; a permanent refusal (TLS, credentials) raises at once instead of retrying
    forever."""
    where = f"{cfg.endpoint}:{cfg.port} as {client_id}"
    start = time.monotonic()
    backoff = Backoff(cfg.reconnect_min_seconds, cfg.reconnect_max_seconds)
    last = ""
    while True:
        remaining = None if timeout is None else start + timeout - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TransportError(f"cannot connect to {where} within {timeout}s: {last}")
        deadline = time.monotonic() + min(
            CONNECT_ATTEMPT_SECONDS, remaining if remaining is not None else 1e9
        )
        outcome = await attempt(deadline)
        if outcome.ok:
            return
        if outcome.permanent:
            raise TransportError(f"cannot connect to {where}: {outcome.reason}")
        last = outcome.reason
        delay = backoff.next_delay()
        log.warning(
            "cannot connect; retrying", endpoint=cfg.endpoint, reason=last, delay=round(delay, 2)
        )
        remaining = None if timeout is None else start + timeout - time.monotonic()
        await asyncio.sleep(delay if remaining is None else max(0.0, min(delay, remaining)))
