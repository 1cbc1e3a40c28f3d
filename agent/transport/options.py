"""Each backend's own options, as an httpx transport takes its own arguments.

A backend receives its options object and nothing else: it never reads the agent's
configuration. The configuration file's `connection:` section is checked against the options
of the transport it names (`connection.transport`), with the rule declared on each field, so a
key that one backend does not have is an error that says which backend has it. These classes
import no backend library: the configuration is checked before a backend is loaded, and only
the one in use is ever imported (`jobs_agent.transport.factory`).

Adding a transport: its options class here (registered in `TRANSPORT_OPTIONS`), its backend
module, and its line in the factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from jobs_agent.datamodel import model
from jobs_agent.option_rules import (
    CLIENT_ID,
    boolean,
    int_in,
    number_in,
    option,
    path,
    string,
)

Problem = tuple[str, str]
"""(option name, what is wrong): a rule that involves more than one option."""


class TransportOptions:
    """What every backend takes: the client id (empty: the thing name).

    The transports' options are models of their own fields, each declared on the class the
    configuration names: this class and `MqttOptions` only share their rules and say which
    fields their rules read. A model below another dataclass is made frozen by dataclasses,
    which compiles its `__setattr__` and `__delattr__` (an `exec` each) when it is defined, at
    every start before the first request: five classes here, about 5 M instructions (issue 18;
    datamodel.py)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # each options class is a dataclass
    transport: ClassVar[str] = ""
    client_id: str

    def problems(self) -> Iterator[Problem]:
        """Rules between options, checked when the configuration is loaded."""
        return iter(())

    @property
    def endpoint_name(self) -> str:
        """The broker's host name, for logs and the heartbeat file ("" without one)."""
        return ""


@model
class LocalOptions(TransportOptions):
    """The in-process bus of an embedded emulator (development and tests)."""

    transport: ClassVar[str] = "local"
    client_id: str = option("", CLIENT_ID)


@model
class GreengrassOptions(TransportOptions):
    """The nucleus's IPC service; the nucleus holds the endpoint and the certificates."""

    transport: ClassVar[str] = "greengrass"
    client_id: str = option("", CLIENT_ID)
    reconnect_min_seconds: float = option(1.0, number_in(0.01, 3600))
    reconnect_max_seconds: float = option(120.0, number_in(0.01, 3600))

    def problems(self) -> Iterator[Problem]:
        yield from _reconnect_order(self.reconnect_min_seconds, self.reconnect_max_seconds)


class MqttOptions(TransportOptions):
    """What a direct MQTT 5 connection (the paho and awscrt backends) takes: the fields below
    are each declared on `PahoOptions` and `AwscrtOptions` (TransportOptions says why)."""

    endpoint: str
    port: int
    cert: Path | None
    key: Path | None
    ca: Path | None
    alpn: bool
    username: str
    password: str
    keepalive_seconds: int
    session_expiry_seconds: int
    reconnect_min_seconds: float
    reconnect_max_seconds: float

    def problems(self) -> Iterator[Problem]:
        if not self.endpoint:
            yield (
                "endpoint",
                f"required with transport {self.transport}"
                " (the AWS IoT data endpoint or the broker's host name)",
            )
        yield from self._credential_problems()
        yield from _reconnect_order(self.reconnect_min_seconds, self.reconnect_max_seconds)

    def _credential_problems(self) -> Iterator[Problem]:
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            yield missing, "required when the other half of the key pair is given"

    @property
    def endpoint_name(self) -> str:
        return self.endpoint


@model
class PahoOptions(MqttOptions):
    """Any MQTT 5 broker, e.g. a gateway's local mosquitto bridged to AWS IoT."""

    transport: ClassVar[str] = "paho"
    client_id: str = option("", CLIENT_ID)
    endpoint: str = option("", string())
    port: int = option(8883, int_in(1, 65535))
    cert: Path | None = option(None, path(optional=True))
    key: Path | None = option(None, path(optional=True))
    ca: Path | None = option(None, path(optional=True))
    alpn: bool = option(False, boolean())
    """mTLS on port 443 with ALPN `x-amzn-mqtt-ca`."""
    username: str = option("", string())
    password: str = option("", string(), secret=True)
    keepalive_seconds: int = option(1200, int_in(30, 1200))
    session_expiry_seconds: int = option(3600, int_in(0, 604800))
    reconnect_min_seconds: float = option(1.0, number_in(0.01, 3600))
    reconnect_max_seconds: float = option(120.0, number_in(0.01, 3600))
    tls: bool = option(True, boolean())
    """False for a plain TCP local broker."""


@model
class AwscrtOptions(MqttOptions):
    """AWS IoT Core through the AWS CRT (production): mTLS, or SigV4 WebSockets."""

    transport: ClassVar[str] = "awscrt"
    client_id: str = option("", CLIENT_ID)
    endpoint: str = option("", string())
    port: int = option(8883, int_in(1, 65535))
    cert: Path | None = option(None, path(optional=True))
    key: Path | None = option(None, path(optional=True))
    ca: Path | None = option(None, path(optional=True))
    alpn: bool = option(False, boolean())
    """mTLS on port 443 with ALPN `x-amzn-mqtt-ca`."""
    username: str = option("", string())
    password: str = option("", string(), secret=True)
    keepalive_seconds: int = option(1200, int_in(30, 1200))
    session_expiry_seconds: int = option(3600, int_in(0, 604800))
    reconnect_min_seconds: float = option(1.0, number_in(0.01, 3600))
    reconnect_max_seconds: float = option(120.0, number_in(0.01, 3600))
    websocket: bool = option(False, boolean())
    """MQTT over WebSockets signed with SigV4 from the default AWS credential chain."""
    region: str = option("", string())
    """Signing region for WebSockets; empty means: taken from the endpoint."""
    proxy_host: str = option("", string())
    proxy_port: int = option(0, int_in(0, 65535))

    def _credential_problems(self) -> Iterator[Problem]:
        if not self.websocket and (self.cert is None or self.key is None):
            yield (
                "cert and connection.key",
                "required with transport awscrt unless connection.websocket is true",
            )
        else:
            yield from super()._credential_problems()


def _reconnect_order(low: float, high: float) -> Iterator[Problem]:
    if low > high:
        yield "reconnect_min_seconds", "must not exceed reconnect_max_seconds"


TRANSPORT_OPTIONS: dict[str, type[TransportOptions]] = {
    options.transport: options
    for options in (AwscrtOptions, PahoOptions, GreengrassOptions, LocalOptions)
}
"""The transports by the name `connection.transport` gives them, in the order they are listed."""


def transport_options(transport: str = "awscrt", **values: Any) -> TransportOptions:
    """The options of the transport named `transport`, from keyword values (TypeError for a
    value that transport does not take)."""
    try:
        cls = TRANSPORT_OPTIONS[transport]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}") from None
    return cls(**values)
