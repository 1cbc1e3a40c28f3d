"""The Device Shadow MQTT API ("Device Shadow MQTT topics") in front of `ShadowService`.

Request topics, for the classic shadow (`$aws/things/{thing}/shadow/...`) and for a named one
(`$aws/things/{thing}/shadow/name/{shadowName}/...`): `get`, `update` and `delete`. A refused
request is answered on its `/rejected` topic with the error response document (`code`,
`message`, `timestamp`, and `clientToken` when the request had a valid one); what an accepted
change publishes (`/update/accepted`, `/update/delta`, `/update/documents`, `/delete/accepted`)
comes from the service's listener, so changes made over HTTP or by the Jobs service are
published too. Everything else under `shadow/` (the reply topics themselves, unknown verbs) is
not answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.shadows import (
    ShadowError,
    ShadowMessage,
    ShadowService,
    client_token_of,
)
from jobs_agent.jsontext import compact
from jobs_agent.transport.base import Message

log = structlog.get_logger(__name__)

SUBSCRIPTION = "$aws/things/+/shadow/#"
_VERBS = frozenset({"get", "update", "delete"})


def parse_shadow_topic(topic: str) -> tuple[str, str | None, str] | None:
    """(thing, shadow name or None for the classic shadow, verb) of a request topic."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow":
        thing, name, verb = parts[2], None, parts[4]
    elif len(parts) == 7 and parts[:2] == ["$aws", "things"] and parts[3:5] == ["shadow", "name"]:
        thing, name, verb = parts[2], parts[5], parts[6]
    else:
        return None
    if verb not in _VERBS or not thing or name == "":
        return None
    return thing, name, verb


def shadow_topic(thing: str, shadow_name: str | None, suffix: str) -> str:
    prefix = f"$aws/things/{thing}/shadow"
    if shadow_name is not None:
        prefix += f"/name/{shadow_name}"
    return f"{prefix}/{suffix}"


class ShadowMqtt:
    """Serves the shadow topics of every thing on `link`."""

    def __init__(self, service: ShadowService, link: MqttLink) -> None:
        self.service = service
        self.link = link
        self._started = False
        link.route("shadow", SUBSCRIPTION, self._on_message)

    def start(self) -> None:
        if not self._started:
            self.service.add_listener(self._on_messages)
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.service.remove_listener(self._on_messages)

    # -- outbound ---------------------------------------------------------------------------
    def _send(self, topic: str, body: Mapping[str, Any]) -> None:
        self.link.send(topic, compact(body).encode("utf-8"))

    def _on_messages(self, messages: list[ShadowMessage]) -> None:
        """Service listener (any thread): publish on the loop."""
        self.link.call_on_loop(self._publish, messages)

    def _publish(self, messages: list[ShadowMessage]) -> None:
        if not self._started:
            return
        for message in messages:
            topic = shadow_topic(message.thing_name, message.shadow_name, message.operation)
            self._send(topic, message.payload)

    # -- inbound ----------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        parsed = parse_shadow_topic(message.topic)
        if parsed is None:
            return  # replies, events and unknown verbs are not requests
        thing, name, verb = parsed
        try:
            if verb == "get":
                body = self.service.get(thing, name)
                token = client_token_of(message.payload)
                if token is not None:
                    body["clientToken"] = token
                self._send(shadow_topic(thing, name, "get/accepted"), body)
            elif verb == "update":
                self.service.update(thing, name, message.payload)
            else:
                self.service.delete(thing, name, client_token_of(message.payload))
        except ShadowError as exc:
            self._reject(thing, name, verb, exc.code, exc.message, message.payload)
        except Exception as exc:
            log.exception("emulator_shadow_request_failed", topic=message.topic)
            self._reject(thing, name, verb, 500, f"Internal service failure: {exc}", b"")

    def _reject(
        self,
        thing: str,
        name: str | None,
        verb: str,
        code: int,
        text: str,
        payload: bytes,
    ) -> None:
        now = self.service.timestamp()
        error: dict[str, Any] = {"code": code, "message": text, "timestamp": now}
        token = client_token_of(payload)
        if token is not None:
            error["clientToken"] = token
        self._send(shadow_topic(thing, name, f"{verb}/rejected"), error)
