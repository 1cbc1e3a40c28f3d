"""MQTT-based file delivery's device topics in front of `StreamService`.

`$aws/things/{thing}/streams/{streamId}/describe/{json|cbor}` is answered on
`.../description/{fmt}`, `.../get/{fmt}` (GetStream) with one message per block on
`.../data/{fmt}`, and a refused request on `.../rejected/{fmt}` (`o` the error code, `m` the
message, `c` the client token when it was valid). Keys are the page's abbreviations (`c`, `s`,
`f`, `l`, `o`, `n`, `b`; `i`, `p`; `d`, `r`, `z`).

Formats: JSON, and CBOR (RFC 8949) through the `cbor2` library, where the block bitmap `b` and a
block's payload `p` are byte strings. In JSON the bitmap is a hexadecimal string (`"0x130080"`,
the page's example). How JSON carries a block's bytes is a point where the page and AWS's own
device library disagree: the page says "a string which represents the value of the data block in
hexadecimal notation", the AWS IoT MQTT file streams library for devices decodes it as base64.
Hexadecimal is the default and base64 the other reading (`stream-json-payload=hex|base64`,
readings.py); a device can tell them apart by length (2 x `l` characters for hexadecimal).

An unknown request verb below `streams/{streamId}/` with a known format is `InvalidTopic` on that
format's rejected topic; the reply topics themselves are never answered.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.emulator.link import MqttLink
from jobs_agent.emulator.streams import StreamError, StreamService, client_token
from jobs_agent.jsontext import compact
from jobs_agent.streams.protocol import cbor_available, cbor_module
from jobs_agent.transport.base import Message

log = structlog.get_logger(__name__)

SUBSCRIPTION = "$aws/things/+/streams/#"
FORMATS = ("json", "cbor")
_REQUESTS = {"get": "data", "describe": "description"}
_REPLIES = frozenset({"data", "description", "rejected"})


def parse_stream_topic(topic: str) -> tuple[str, str, str, str] | None:
    """(thing, stream id, verb, format) of a topic `$aws/things/T/streams/S/VERB/FORMAT`."""
    parts = topic.split("/")
    if len(parts) != 7 or parts[:2] != ["$aws", "things"] or parts[3] != "streams":
        return None
    thing, stream, verb, fmt = parts[2], parts[4], parts[5], parts[6]
    if not thing or not stream or fmt not in FORMATS:
        return None
    return thing, stream, verb, fmt


class StreamsMqtt:
    """Serves the streams topics of every thing on `link`."""

    def __init__(
        self, service: StreamService, link: MqttLink, *, json_payload_base64: bool = False
    ) -> None:
        self.service = service
        self.link = link
        self.json_payload_base64 = json_payload_base64
        link.route("streams", SUBSCRIPTION, self._on_message)

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, fmt: str, body: Mapping[str, Any]) -> bytes:
        if fmt == "cbor":
            return bytes(cbor_module().dumps(dict(body)))
        out = dict(body)
        payload = out.get("p")
        if isinstance(payload, bytes):
            out["p"] = (
                base64.b64encode(payload).decode("ascii")
                if self.json_payload_base64
                else payload.hex()
            )
        return compact(out).encode("utf-8")

    @staticmethod
    def _decode(fmt: str, payload: bytes) -> dict[str, Any]:
        if fmt == "cbor":
            try:
                body = cbor_module().loads(payload) if payload else {}
            except Exception:
                raise StreamError("InvalidCbor", "the request is not a CBOR document") from None
        else:
            try:
                body = json.loads(payload) if payload.strip() else {}
            except ValueError:
                raise StreamError("InvalidJson", "the request is not a JSON document") from None
        if not isinstance(body, dict):
            raise StreamError("InvalidRequest", "the request must be a map")
        bitmap = body.get("b")
        if isinstance(bitmap, str):
            text = bitmap[2:] if bitmap[:2].lower() == "0x" else bitmap
            try:
                body["b"] = binascii.unhexlify(text if len(text) % 2 == 0 else "0" + text)
            except (binascii.Error, ValueError):
                raise StreamError("InvalidRequest", "b must be a hexadecimal bitmap") from None
        elif isinstance(bitmap, bytearray):
            body["b"] = bytes(bitmap)
        return body

    def _send(
        self, thing: str, stream: str, suffix: str, fmt: str, body: Mapping[str, Any]
    ) -> None:
        topic = f"$aws/things/{thing}/streams/{stream}/{suffix}/{fmt}"
        self.link.send(topic, self._encode(fmt, body))

    # -- requests ---------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        parsed = parse_stream_topic(message.topic)
        if parsed is None:
            return
        thing, stream, verb, fmt = parsed
        if verb in _REPLIES:
            return
        if fmt == "cbor" and not cbor_available():
            log.error(
                "emulator_cbor_unavailable",
                topic=message.topic,
                hint="install cbor2 (pip install 'jobs-agent[emulator]') to serve CBOR streams",
            )
            return
        token: str | None = None
        try:
            if verb not in _REQUESTS:
                raise StreamError("InvalidTopic", f"{message.topic} is not a streams topic")
            request = self._decode(fmt, message.payload)
            token = client_token(request)
            self.service.counters["GetStream" if verb == "get" else "DescribeStream"] += 1
            if verb == "describe":
                body = self.service.device_description(stream)
                if token is not None:
                    body = {"c": token, **body}
                self._send(thing, stream, "description", fmt, body)
                return
            for block in self.service.blocks(stream, request):
                answer: dict[str, Any] = {}
                if token is not None:
                    answer["c"] = token
                answer.update(f=block.file_id, l=len(block.data), i=block.block_id, p=block.data)
                self._send(thing, stream, "data", fmt, answer)
        except StreamError as exc:
            error: dict[str, Any] = {"o": exc.code, "m": exc.message}
            if token is not None and exc.echo_token:
                error["c"] = token
            self._send(thing, stream, "rejected", fmt, error)
        except Exception as exc:
            log.exception("emulator_stream_request_failed", topic=message.topic)
            self._send(thing, stream, "rejected", fmt, {"o": "InternalError", "m": str(exc)})
