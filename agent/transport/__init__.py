"""MQTT transports. Import a backend module only when it is used (memory on a gateway)."""

from jobs_agent.transport.base import (
    Message,
    NotConnectedError,
    Transport,
    TransportError,
)

__all__ = ["Message", "NotConnectedError", "Transport", "TransportError"]
