"""MQTT transports. Import a backend module only when it is used (memory on a gateway)."""

from jobs_agent.transport.base import (
    Message,
    NotConnectedError,
    SharedLink,
    Transport,
    TransportError,
)

__all__ = ["Message", "NotConnectedError", "SharedLink", "Transport", "TransportError"]
