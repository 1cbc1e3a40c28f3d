"""Build the transport the options name, importing only that backend.

Each backend pulls in its own library (paho, or awscrt+awsiot, a further 6 MB resident), and a
gateway runs one of them, so the imports live inside the builders (MEASURED.md). A builder
receives its backend's own options (`jobs_agent.transport.options`) and the client id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from jobs_agent.transport.base import Transport, TransportError
from jobs_agent.transport.options import (
    AwscrtOptions,
    GreengrassOptions,
    LocalOptions,
    PahoOptions,
    TransportOptions,
)

if TYPE_CHECKING:
    from jobs_agent.transport.local import LocalBus


class DeviceConnection(Protocol):
    """A device's transport options and client id (what `AgentConfig` has)."""

    @property
    def connection(self) -> TransportOptions: ...

    @property
    def client_id(self) -> str: ...


def _paho(options: TransportOptions, client_id: str) -> Transport:
    from jobs_agent.transport.paho import PahoTransport

    assert isinstance(options, PahoOptions)
    return PahoTransport(options, client_id)


def _awscrt(options: TransportOptions, client_id: str) -> Transport:
    from jobs_agent.transport.awscrt import AwscrtTransport

    assert isinstance(options, AwscrtOptions)
    return AwscrtTransport(options, client_id)


def _greengrass(options: TransportOptions, client_id: str) -> Transport:
    from jobs_agent.transport.greengrass import GreengrassTransport

    assert isinstance(options, GreengrassOptions)
    return GreengrassTransport(
        reconnect_min_seconds=options.reconnect_min_seconds,
        reconnect_max_seconds=options.reconnect_max_seconds,
    )


_BUILDERS: dict[type[TransportOptions], Callable[[TransportOptions, str], Transport]] = {
    PahoOptions: _paho,
    AwscrtOptions: _awscrt,
    GreengrassOptions: _greengrass,
}


def create_transport(device: DeviceConnection, *, bus: LocalBus | None = None) -> Transport:
    """The `Transport` for `device.connection`; `local` needs the in-process `bus`."""
    options = device.connection
    client_id = device.client_id
    if isinstance(options, LocalOptions):
        if bus is None:
            raise TransportError(
                "transport local: needs an in-process LocalBus (embedded emulator)"
            )
        from jobs_agent.transport.local import LocalTransport

        return LocalTransport(bus, client_id)
    if not client_id:
        raise TransportError("thing_name (or connection.client_id) is required for MQTT")
    builder = _BUILDERS.get(type(options))
    if builder is None:
        raise TransportError(f"connection.transport: unknown transport {options.transport!r}")
    return builder(options, client_id)
