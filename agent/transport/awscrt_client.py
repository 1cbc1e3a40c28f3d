"""The settings of the awscrt backend's MQTT 5 client, written out as `awscrt.mqtt5.ClientOptions`.

awsiotsdk's `awsiot.mqtt5_client_builder` fills these in for AWS IoT Core, but importing it
imports the whole `awsiot` package (the CRT's MQTT 3.1.1 client, its request-response client):
0.77 MB resident and 96 M instructions (callgrind, 9 % of a process importing asyncio,
structlog and this backend) at every start-up, for a dozen settings (issue 18). So the mTLS
client, the one nearly every device uses, is built here from the CRT's own classes, with each
setting the builder makes that matters to AWS IoT Core (awsiotsdk 1.31,
https://aws.github.io/aws-iot-device-sdk-python-v2/awsiot/mqtt5_client_builder.html):

- TLS: the certificate and key from their files (`TlsContextOptions` with mutual TLS), the CA
  file in place of the system's trust store when `connection.ca` is set, the CRT's default
  cipher preference and TLS versions (the builder sets `TlsCipherPref.DEFAULT`, the default).
- ALPN `x-amzn-mqtt-ca` on port 443, as the builder sets it by itself (when the CRT has ALPN):
  AWS IoT Core's default endpoint configuration authenticates MQTT with an X.509 client
  certificate on 443 only with that protocol name in the ClientHello ("Device communication
  protocols", https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html). On 8883 no
  ALPN is sent, as before. `connection.alpn` asks for port 443 and is refused with another port.
- SDK metrics: off (`disable_metrics`; with it unset the CRT itself appends the SDK's name,
  version and platform to the CONNECT user name, for AWS's own statistics). Nothing in IoT Core
  or the Jobs service depends on them, a user name the broker checks (a custom authorizer's
  query string) must arrive as written, and the builder's version look-up
  (`importlib.metadata`) cost 2.6 MB resident and 31 ms at start-up. The user name (empty when
  none is configured, as the builder makes it) and the password are sent as written.
- Flow control: the builder's default is the CRT's AWS IoT Core limits
  (`ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS`: at most 8 subscriptions per
  SUBSCRIBE, 100 publishes/s, 512 KB/s out). Its throttle spaces operations out: measured here
  through mosquitto, a request sent within about 16 ms of the previous operation waited until
  that mark, so a request/reply round trip took 16.5 ms instead of 0.5 ms. Over the internet
  the round trip is longer than that spacing and IoT Core's limits are real, so it is kept for
  AWS endpoints (`*.amazonaws.com`, `*.amazonaws.com.cn`) and off for any other broker
  (`flow_control_for`).
- Topic aliasing, CONNACK and socket connect timeouts, ack timeout, the time connected before
  the reconnect delay resets: the builder leaves them unset (the CRT's defaults), so does this.
- Keep-alive, session behaviour, offline queue, reconnect backoff and jitter: the agent's own
  choices (the backend's docstring says why), passed as the builder would pass them.

WebSockets signed with SigV4 (`connection.websocket`) still go through the builder, imported
only then: that path's handshake signing is not covered by a broker here (the test mosquitto is
built without WebSockets), and the builder is the reference for it. The builder fills in only
what the options given to it leave unset: the TLS context (ALPN `http/1.1` on 443), the signing
transform. awsiotsdk's custom-authorizer builders (ALPN `mqtt` without a client certificate)
have no configuration here: `connection.cert` and `.key` are required without WebSockets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog
from awscrt import http, io, mqtt5

from jobs_agent.transport.base import Message, TransportError
from jobs_agent.transport.options import AwscrtOptions

log = structlog.get_logger("jobs_agent.transport.awscrt")

ALPN_PORT = 443
MQTT_ALPN = "x-amzn-mqtt-ca"
"""AWS IoT Core's ALPN protocol name for MQTT with an X.509 client certificate on port 443."""
PING_TIMEOUT_MS = 30_000
"""The CRT's default, lowered for a short keep-alive: it must stay below the keep-alive."""


def region_from_endpoint(endpoint: str) -> str:
    """`abc-ats.iot.eu-west-1.amazonaws.com` -> `eu-west-1` (the SigV4 signing region)."""
    parts = endpoint.split(".")
    if "iot" in parts:
        index = parts.index("iot")
        if index + 1 < len(parts):
            return parts[index + 1]
    raise TransportError(
        f"connection.region: cannot be derived from the endpoint {endpoint!r}; set it explicitly"
    )


def flow_control_for(endpoint: str) -> mqtt5.ExtendedValidationAndFlowControlOptions:
    """IoT Core's client-side limits for AWS endpoints only (see the backend's docstring)."""
    host = endpoint.rstrip(".").lower()
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
    return mqtt5.ExtendedValidationAndFlowControlOptions.NONE


@functools.cache
def client_bootstrap() -> io.ClientBootstrap:
    """The process's CRT event loop, one thread, shared by its connections (an agent has one).

    Without it the CRT makes its default group with one thread per two processors: one on this
    2-core machine, but three idle threads more on an 8-core gateway, each with its stack and
    its allocator arena (issue 18). Its DNS resolver is made on the same group, as the default
    one is.
    """
    group = io.EventLoopGroup(1)
    return io.ClientBootstrap(group, io.DefaultHostResolver(group))


def mtls_context_options(config: AwscrtOptions) -> io.TlsContextOptions:
    """Mutual TLS from the certificate and key files, the CA file, ALPN on port 443 (OSError
    for a file that cannot be read)."""
    if config.cert is None or config.key is None:
        raise TransportError("awscrt transport: connection.cert and connection.key are required")
    tls = io.TlsContextOptions.create_client_with_mtls_from_path(str(config.cert), str(config.key))
    if config.ca is not None:
        tls.override_default_trust_store_from_path(None, str(config.ca))
    if config.port == ALPN_PORT and io.is_alpn_available():
        tls.alpn_list = [MQTT_ALPN]
    return tls


def connect_packet(config: AwscrtOptions, client_id: str) -> mqtt5.ConnectPacket:
    """What every CONNECT of the client carries: the user name as written, no SDK metrics; the
    password with a user name only, as paho's backend sends it."""
    return mqtt5.ConnectPacket(
        client_id=client_id,
        keep_alive_interval_sec=config.keepalive_seconds,
        session_expiry_interval_sec=config.session_expiry_seconds,
        username=config.username,
        password=config.password.encode() if config.username and config.password else None,
    )


def client_options(config: AwscrtOptions, client_id: str) -> mqtt5.ClientOptions:
    """The client's settings, callbacks aside; with the mTLS context unless over WebSockets,
    where the builder makes its own (`websocket_client`)."""
    options = mqtt5.ClientOptions(
        host_name=config.endpoint,
        port=config.port,
        bootstrap=client_bootstrap(),
        connect_options=connect_packet(config, client_id),
        session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
        extended_validation_and_flow_control_options=flow_control_for(config.endpoint),
        offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
        retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
        min_reconnect_delay_ms=max(1, int(config.reconnect_min_seconds * 1000)),
        max_reconnect_delay_ms=max(1, int(config.reconnect_max_seconds * 1000)),
        ping_timeout_ms=min(PING_TIMEOUT_MS, config.keepalive_seconds * 1000 // 2),
        disable_metrics=True,
    )
    if config.proxy_host:
        options.http_proxy_options = http.HttpProxyOptions(config.proxy_host, config.proxy_port)
    if not config.websocket:
        options.tls_ctx = io.ClientTlsContext(mtls_context_options(config))
    return options


def websocket_client(config: AwscrtOptions, options: mqtt5.ClientOptions) -> mqtt5.Client:
    """MQTT over WebSockets, the handshake signed with SigV4 from the default credential chain,
    through awsiotsdk's builder (see above: imported only for this path)."""
    from awscrt import auth
    from awsiot import mqtt5_client_builder

    return mqtt5_client_builder.websockets_with_default_aws_signing(
        region=config.region or region_from_endpoint(config.endpoint),
        credentials_provider=auth.AwsCredentialsProvider.new_default_chain(client_bootstrap()),
        client_options=options,
        endpoint=config.endpoint,
        username=config.username,
        ca_filepath=str(config.ca) if config.ca is not None else None,
        enable_metrics_collection=False,
    )


class _ReceivedAsMessage(mqtt5._ClientCore):  # type: ignore[misc]
    """The client's Python core, whose `_on_publish` the binding calls for each PUBLISH
    received, handing it only what the agent reads: its topic and payload, as a `Message`.

    The CRT's own `_on_publish` builds a `PublishPacket` (twenty attributes, the QoS enum), its
    user properties, a closure for manual PUBACK control and a `PublishReceivedData` for every
    message: 29 k instructions a message, five messages a plugin job (callgrind, a real
    `jobs-agent run` through mosquitto with mTLS, awscrt 0.36.1). The agent reads none of the
    rest and never takes PUBACK control, so returning False leaves the PUBACK to the CRT as
    before: the bytes on the wire are the same.
    """

    def _on_publish(
        self, payload: bytes | None, qos: int, retain: bool, topic: str, *_: object
    ) -> bool:
        self._on_publish_cb(Message(topic, payload or b""))
        return False


_LEAN = mqtt5._ClientCore._on_publish.__code__.co_varnames[1:5] == (
    "payload",
    "qos",
    "retain",
    "topic",
)
"""The binding passes a PUBLISH's payload, QoS, retain flag and topic first (awscrt 0.14 and
later); a CRT that did otherwise is given the CRT's own core."""


def new_client(
    config: AwscrtOptions, options: mqtt5.ClientOptions, on_message: Callable[[Message], None]
) -> mqtt5.Client:
    """The client, `on_message` called on the CRT's thread with each message received.

    `mqtt5.Client` makes its core from the module's `_ClientCore` as it is constructed, so the
    name is `_ReceivedAsMessage` while this one is made (on the loop's thread, the one place
    the agent makes a client) and the CRT's again at once after."""
    if not _LEAN:
        options.on_publish_callback_fn = lambda data: on_message(
            Message(data.publish_packet.topic, bytes(data.publish_packet.payload or b""))
        )
        return websocket_client(config, options) if config.websocket else mqtt5.Client(options)
    options.on_publish_callback_fn = on_message
    crt_core = mqtt5._ClientCore
    mqtt5._ClientCore = _ReceivedAsMessage
    try:
        return websocket_client(config, options) if config.websocket else mqtt5.Client(options)
    finally:
        mqtt5._ClientCore = crt_core


PubackCallback = Callable[[int, int, int, "str | None", Any], None]
"""The binding's completion of a publish: error code (0: none), QoS, PUBACK reason code, reason
string, user properties."""
_AT_LEAST_ONCE = mqtt5.QoS.AT_LEAST_ONCE


_binding_publish: Callable[..., None] = mqtt5._awscrt.mqtt5_client_publish
"""The binding's publish, as awscrt 0.36's `Client.publish` calls it (13 positional arguments)."""
_direct = True
"""Whether `publish_at_least_once` still calls the binding itself: False for good after the
binding refused the call (another awscrt, whose publish takes other arguments)."""


def publish_at_least_once(
    client: mqtt5.Client, topic: str, payload: bytes, on_puback: PubackCallback
) -> bool:
    """Send a QoS 1 PUBLISH; `on_puback` is called on the CRT's thread with its completion.
    False, and nothing sent, where the binding's publish takes other arguments than the
    awscrt this was checked against (0.36.1): the caller then publishes through
    `Client.publish`, the public way, from then on.

    `mqtt5.Client.publish` makes a `concurrent.futures.Future` and, at the PUBACK, a
    `PublishCompletionData`, a `PubackPacket` and the reason code's enum, then sets the
    future's result under its lock: 30 k instructions a publish on the CRT's thread, two a
    plugin job, for a request whose reply proves its delivery (`AwscrtTransport.submit`). This
    is the same call into the binding with the same arguments as `publish` gives it for
    `PublishPacket(topic=, payload=, qos=AT_LEAST_ONCE)`, so the same bytes on the wire, with
    the binding's completion taken as it comes. awsiotsdk pins one awscrt per release and the
    project allows a range of releases, so a binding whose arguments differ refuses the call
    (`TypeError`, or `AttributeError` for a client without `_binding`) before sending
    anything, and is not called again."""
    global _direct
    if not _direct:
        return False
    try:
        _binding_publish(
            client._binding,
            _AT_LEAST_ONCE,
            payload,
            False,
            topic,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            on_puback,
        )
    except (TypeError, AttributeError) as exc:
        _direct = False
        log.warning(
            "awscrt's binding takes other publish arguments; requests go through"
            " Client.publish from now on",
            error=str(exc),
        )
        return False
    return True


__all__ = [
    "client_bootstrap",
    "client_options",
    "flow_control_for",
    "mtls_context_options",
    "new_client",
    "publish_at_least_once",
    "region_from_endpoint",
    "websocket_client",
]
