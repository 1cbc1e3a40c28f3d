"""The device's Device Shadow client over a `Transport`: get, update and delete of the classic
shadow and of named shadows (`$package` among them), as the Jobs client talks to the Jobs topics.

* Replies are matched by our own `clientToken` and the reply topic of the request
  (`jobs_agent.transport.exchange`): `/update/accepted` is published to every subscriber for
  every change (the Jobs service writing `$package`, another client), so only our token counts.
* The reply topics of a shadow and verb are subscribed on first use, and only those two
  (`get/accepted`, `get/rejected`, ...): the IoT policy needs nothing else.
* One deadline per call covers the subscription, re-publishes after a lost link, and retries
  of 429 and 500 with capped exponential backoff and jitter; then `ShadowTimeout`.
* A rejection raises the exception of its code (`jobs_agent.shadow.errors`); a failure of the
  link (a refused subscription or publish) is a `ShadowLinkError`, translated once, here.

An `update` with `version` that is re-published after a lost link may find its first copy
applied and answer 409: a `ShadowVersionConflict` means "get the shadow and decide", never
"the change was not made".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.datamodel import model
from jobs_agent.shadow import topics
from jobs_agent.shadow.errors import (
    ShadowError,
    ShadowLinkError,
    ShadowRejected,
    ShadowTimeout,
    rejection,
)
from jobs_agent.shadow.topics import ReplyKind, Verb
from jobs_agent.transport.base import Message, Transport, TransportError
from jobs_agent.transport.exchange import (
    Exchange,
    ExchangeClosed,
    ExchangeStats,
    subscribe_within,
)
from jobs_agent.vocabulary import is_thing_name

log = structlog.get_logger("jobs_agent.shadow")

_Reply = tuple[ReplyKind, Mapping[str, Any]]
_SECTIONS = frozenset({"desired", "reported"})


@model(slots=True)
class ShadowDocument:
    """A shadow as `get` answers it (`delta` only where desired and reported differ)."""

    version: int
    desired: Mapping[str, Any] | None = None
    reported: Mapping[str, Any] | None = None
    delta: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    timestamp: float | None = None


@model(slots=True)
class ShadowUpdated:
    """What `update/accepted` says: the state as accepted and the shadow's new version."""

    state: Mapping[str, Any]
    version: int
    timestamp: float | None = None


class ShadowClient:
    """Device Shadow over MQTT for one thing. See the module docstring."""

    def __init__(
        self,
        transport: Transport,
        thing_name: str,
        *,
        request_timeout: float = 30.0,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if not is_thing_name(thing_name):
            raise ValueError(f"invalid thing name {thing_name!r}")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        Backoff(retry_min, retry_max)  # checks the pair now rather than on the first retry
        self.transport = transport
        self.thing_name = thing_name
        self.request_timeout = request_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.stats = ExchangeStats()
        self.exchange: Exchange[_Reply] = Exchange(transport, self.stats)
        self._subscribed: set[tuple[str | None, Verb]] = set()
        self._locks: dict[tuple[str | None, Verb], asyncio.Lock] = {}
        self._started = False
        self._closed = False

    @property
    def retries(self) -> int:
        """Requests asked again after a 429 or a 500."""
        return self.stats.retries

    async def start(self) -> None:
        """Take the transport's listeners (subscriptions are made on first use)."""
        if self._closed:
            raise ShadowError("the shadow client is closed")
        self.transport.set_message_callback(self._on_message)
        self.transport.set_connection_callbacks(self._on_lost, None)
        self._started = True

    async def close(self) -> None:
        """Stop listening and fail waiting requests. Idempotent; the link stays as it is."""
        if self._closed:
            return
        self._closed = True
        self.transport.set_message_callback(None)
        self.transport.set_connection_callbacks(None, None)
        self.exchange.close()

    # -- operations ----------------------------------------------------------------------------
    async def get(self, shadow_name: str | None) -> ShadowDocument:
        """GetThingShadow; `ShadowNotFound` when there is none."""
        reply = await self._request(shadow_name, Verb.GET, {})
        state = _object(reply.get("state") or {}, "state")
        return ShadowDocument(
            version=_version(reply),
            desired=_section(state, "desired"),
            reported=_section(state, "reported"),
            delta=_section(state, "delta"),
            metadata=_section(reply, "metadata"),
            timestamp=_timestamp(reply),
        )

    async def update(
        self, shadow_name: str | None, state: Mapping[str, Any], *, version: int | None = None
    ) -> ShadowUpdated:
        """UpdateThingShadow with `{"state": state}`; `version` makes it conditional
        (`ShadowVersionConflict` when the shadow has moved on)."""
        if not isinstance(state, Mapping) or not set(state) <= _SECTIONS:
            raise ValueError('state must be a mapping with "desired" and/or "reported"')
        body: dict[str, Any] = {"state": dict(state)}
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                raise ValueError(f"version must be a non-negative integer, got {version!r}")
            body["version"] = version
        reply = await self._request(shadow_name, Verb.UPDATE, body)
        return ShadowUpdated(
            state=_object(reply.get("state") or {}, "state"),
            version=_version(reply),
            timestamp=_timestamp(reply),
        )

    async def delete(self, shadow_name: str | None, *, version: int | None = None) -> int:
        """DeleteThingShadow; the version the deleted shadow had."""
        body: dict[str, Any] = {} if version is None else {"version": version}
        return _version(await self._request(shadow_name, Verb.DELETE, body))

    # -- the request machinery -----------------------------------------------------------------
    async def _request(
        self, shadow_name: str | None, verb: Verb, body: dict[str, Any]
    ) -> Mapping[str, Any]:
        if not self._started or self._closed:
            raise ShadowError("the shadow client is not started (or already closed)")
        if shadow_name is not None and not topics.is_valid_shadow_name(shadow_name):
            raise ValueError(f"invalid shadow name {shadow_name!r}")
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        operation = f"{verb} {shadow_name or '(classic)'}"
        bound = log.bind(operation=operation)
        await self._subscribe(shadow_name, verb, deadline, operation)

        def payload(token: str) -> bytes:
            return json.dumps({**body, "clientToken": token}, separators=(",", ":")).encode()

        try:
            reply = await self.exchange.request(
                topics.request_topic(self.thing_name, shadow_name, verb),
                (shadow_name, verb),
                payload,
                _read,
                deadline=deadline,
                backoff=Backoff(self.retry_min, self.retry_max),
                retryable=lambda exc: isinstance(exc, ShadowRejected) and exc.retryable,
                bound=bound,
            )
        except ShadowRejected as error:
            bound.info("shadow request rejected", code=error.code)
            raise
        except ExchangeClosed:
            raise ShadowError("the shadow client was closed") from None
        except TransportError as exc:
            raise ShadowLinkError(f"shadow {operation}: {exc}") from exc
        if reply is None:
            bound.warning("shadow request timed out")
            raise ShadowTimeout(operation, self.request_timeout)
        return reply

    async def _subscribe(
        self, shadow_name: str | None, verb: Verb, deadline: float, operation: str
    ) -> None:
        key = (shadow_name, verb)
        if key in self._subscribed:
            return
        async with self._locks.setdefault(key, asyncio.Lock()):
            for topic_filter in topics.reply_filters(self.thing_name, shadow_name, verb):
                try:
                    subscribed = await subscribe_within(self.transport, topic_filter, deadline)
                except TransportError as exc:
                    raise ShadowLinkError(f"cannot subscribe to {topic_filter}: {exc}") from exc
                if not subscribed:
                    raise ShadowTimeout(operation, self.request_timeout)
            self._subscribed.add(key)

    # -- transport listeners (loop thread; must not raise) -------------------------------------
    def _on_lost(self, reason: str) -> None:
        self.exchange.link_lost()

    def _on_message(self, message: Message) -> None:
        parsed = topics.parse_reply_topic(message.topic)
        if parsed is None or parsed.thing_name != self.thing_name:
            return
        try:
            body = json.loads(message.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            log.debug("shadow reply that is not a JSON object ignored", topic=message.topic)
            return
        key = (parsed.shadow_name, parsed.verb)
        self.exchange.resolve(body.get("clientToken"), key, (parsed.kind, body))


def _read(reply: _Reply) -> Mapping[str, Any]:
    """An accepted reply's body; a rejection raises the exception of its code."""
    kind, body = reply
    if kind is ReplyKind.ACCEPTED:
        return body
    code = body.get("code")
    message = body.get("message")
    if isinstance(code, bool) or not isinstance(code, int):
        raise ShadowError(f"malformed rejection: code {code!r}")
    token = body.get("clientToken")
    text = message if isinstance(message, str) else ""
    raise rejection(code, text, token if isinstance(token, str) else None)


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShadowError(f"malformed reply: {name} is not an object")
    return value


def _section(parent: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = parent.get(name)
    return None if value is None else _object(value, name)


def _version(reply: Mapping[str, Any]) -> int:
    version = reply.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ShadowError(f"malformed reply: version {version!r}")
    return version


def _timestamp(reply: Mapping[str, Any]) -> float | None:
    value = reply.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
