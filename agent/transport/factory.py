"""Build the configured transport, importing only that backend.

Each backend pulls in its own library (paho, or awscrt+awsiot, a further 6 MB resident), and a
gateway runs one of them, so the imports live inside the branches (MEASURED.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs_agent.config import AgentConfig
from jobs_agent.transport.base import Transport, TransportError

if TYPE_CHECKING:
    from jobs_agent.transport.local import LocalBus


def create_transport(config: AgentConfig, *, bus: LocalBus | None = None) -> Transport:
    """The `Transport` for `config.connection.transport`; `local` needs the in-process `bus`."""
    connection = config.connection
    client_id = config.client_id
    kind = connection.transport
    if kind == "local":
        if bus is None:
            raise TransportError(
                "transport local: needs an in-process LocalBus (embedded emulator)"
            )
        from jobs_agent.transport.local import LocalTransport

        return LocalTransport(bus, client_id)
    if not client_id:
        raise TransportError("thing_name (or connection.client_id) is required for MQTT")
    if kind == "paho":
        from jobs_agent.transport.paho import PahoTransport

        return PahoTransport(connection, client_id)
    if kind == "awscrt":
        from jobs_agent.transport.awscrt import AwscrtTransport

        return AwscrtTransport(connection, client_id)
    if kind == "greengrass":
        from jobs_agent.transport.greengrass import GreengrassTransport

        return GreengrassTransport(
            reconnect_min_seconds=connection.reconnect_min_seconds,
            reconnect_max_seconds=connection.reconnect_max_seconds,
        )
    raise TransportError(f"connection.transport: unknown transport {kind!r}")
