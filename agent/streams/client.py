"""The device's MQTT-based file delivery client over a `Transport`.

The agent has one MQTT connection; this client gets a view of it (`transport.shared`), owns that
view's listeners as the Jobs client owns its own, and so never disturbs the Jobs client nor
imports a backend. What it absorbs so the caller does not have to:

* **Matching.** Every request carries a client token `c` made of this client's random prefix and
  the operation's number; answers without one of this operation's tokens are ignored, so blocks
  of an earlier attempt (another stream version) can never be mixed into this one.
* **A window.** `fetch` keeps up to `window` GetStream requests outstanding, each for at most
  the 128 KB the service answers one request with: consecutive blocks with `o` and `n`, or in
  CBOR any blocks within a span through the bitmap `b`.
* **Loss.** A request not fully answered within `request_timeout` gives its missing blocks back
  to the queue; they are asked for again after a backoff (exponential, full jitter). When the
  link drops, every outstanding request is void: once it is back (the transport has restored
  the subscriptions a lost session forgot) the blocks still missing are asked for again.
* **A bound.** `StreamTimeout` when nothing new arrives for `stall_timeout` seconds while the
  link is up. While it is down the client waits for it: the caller's own deadline (the job's
  timeout, a cancellation) bounds that.
* **Rejections** raise typed errors (`agent.streams.errors`): `VersionMismatch` means start
  over, everything else means stop; a failure of the link (a refused subscription or publish)
  is a `StreamLinkError`, translated once, here.

DescribeStream is one request and one reply: it goes through the request/reply exchange every
protocol client shares (`transport.exchange`). GetStream is a window of requests each answered
by many messages, which no other API has: that loop is this module's own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.datamodel import model
from jobs_agent.streams import protocol
from jobs_agent.streams.errors import (
    StreamLinkError,
    StreamProtocolError,
    StreamRejected,
    StreamsError,
    StreamTimeout,
    rejection,
)
from jobs_agent.streams.protocol import (
    Codec,
    DataBlock,
    Format,
    Rejection,
    StreamDescription,
    Verb,
)
from jobs_agent.streams.window import Fetch, Get
from jobs_agent.transport.base import Message, NotConnectedError, Transport, TransportError
from jobs_agent.transport.exchange import (
    Exchange,
    ExchangeClosed,
    ExchangeStats,
    subscribe_within,
)

log = structlog.get_logger("jobs_agent.streams")

MAX_INBOX = 4096
"""Answers waiting to be read; past this many, newer ones are dropped (and asked for again)."""
CLOSE_WITHIN = 2.0
"""The most `close()` waits for the broker to acknowledge the unsubscriptions."""
_NOT_CONNECTED_PAUSE = 0.05
_POLICY_HINT = "does the IoT policy (or a local broker's ACL) allow this thing's streams topics?"

BlockSink = Callable[[int, bytes], None]
"""Called with (block id, bytes) once per block; it may raise (a full disk ends the fetch)."""


@model(frozen=False, slots=True)
class StreamStats(ExchangeStats):
    """Counters for tests, logs and benchmarks: the exchange's (DescribeStream, and every
    GetStream in `publishes` and `timeouts`) and the fetch's own."""

    blocks: int = 0
    """New blocks handed to the sink."""
    duplicates: int = 0
    voided: int = 0
    """Requests outstanding when the link dropped (their missing blocks were asked again)."""
    ignored: int = 0
    """Answers not for this client's current operation, or malformed."""

    @property
    def requests(self) -> int:
        """Requests published (DescribeStream and GetStream, first sends and repeats)."""
        return self.publishes


@model(slots=True)
class _Lost:
    reason: str


@model(slots=True)
class _Resumed:
    session_present: bool


_Item = tuple[Verb, Mapping[str, Any]] | _Lost | _Resumed
_Reply = tuple[Verb, Mapping[str, Any]]


@model(slots=True)
class _Owner:
    """The tokens of one operation: `start` followed by a counter."""

    start: str

    def __call__(self, token: str | None) -> bool:
        return token is not None and token.startswith(self.start)


class StreamsClient:
    """One stream of one thing over a `Transport` (a view of the agent's link). See the module
    docstring."""

    def __init__(
        self,
        link: Transport,
        thing_name: str,
        stream_id: str,
        *,
        fmt: Format = Format.JSON,
        request_timeout: float = 10.0,
        stall_timeout: float = 120.0,
        window: int = 4,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if not protocol.is_valid_stream_id(stream_id):
            raise ValueError(f"invalid stream id {stream_id!r}")
        if request_timeout <= 0 or stall_timeout <= 0 or window < 1:
            raise ValueError("timeouts must be positive and the window at least 1")
        Backoff(retry_min, retry_max)  # validates the pair now rather than on the first retry
        self.link = link
        self.thing_name = thing_name
        self.stream_id = stream_id
        self.codec = Codec(fmt)  # StreamsError for CBOR without cbor2
        self.fmt = fmt
        self.request_timeout = request_timeout
        self.stall_timeout = stall_timeout
        self.window = window
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.stats = StreamStats()
        self.last_anonymous_rejection: Rejection | None = None
        """A rejection without a client token (a request the service could not read)."""
        self._prefix = protocol.prefix(thing_name, stream_id)
        self._token_prefix = secrets.token_hex(6)
        self._operation = 0
        self._counter = 0
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._exchange: Exchange[_Reply] = Exchange(link, self.stats)
        self._busy = asyncio.Lock()
        self._listening = False
        self._subscribed: list[str] = []
        self._log = log.bind(stream_id=stream_id, format=fmt.value)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on the link, then subscribe to the stream's answers (QoS 1).

        Waits for the link while it is down. Raises `StreamLinkError` if the broker refuses.
        """
        if self._listening:
            return
        self.link.set_message_callback(self._on_message)
        self.link.set_connection_callbacks(self._on_lost, self._on_resumed)
        self._listening = True
        try:
            for verb in (Verb.DATA, Verb.REJECTED, Verb.DESCRIPTION):
                topic_filter = protocol.topic(self.thing_name, self.stream_id, verb, self.fmt)
                await self._subscribe(topic_filter)
                self._subscribed.append(topic_filter)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Unsubscribe (when the link is up, for a moment at most) and stop listening.

        A subscription left behind (the link was down) is restored by the transport with the
        link; what comes on it then finds no listener. Idempotent.
        """
        with contextlib.suppress(TransportError, TimeoutError):
            async with asyncio.timeout(CLOSE_WITHIN):
                for topic_filter in self._subscribed:
                    if self.link.is_connected:
                        await self.link.unsubscribe(topic_filter)
        self._subscribed.clear()
        if self._listening:
            self._exchange.close()
            self.link.set_message_callback(None)
            self.link.set_connection_callbacks(None, None)
            self._listening = False

    async def __aenter__(self) -> StreamsClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _subscribe(self, topic_filter: str) -> None:
        """Subscribe for as long as the link stays down (the caller's own deadline, the job's
        timeout or a cancellation, bounds that), again when a SUBACK is lost with the link."""
        try:
            await subscribe_within(self.link, topic_filter, None, attempt=self.request_timeout)
        except TransportError as exc:
            raise StreamLinkError(f"{exc}; {_POLICY_HINT}") from None

    # -- operations ----------------------------------------------------------------------------
    async def describe(self) -> StreamDescription:
        """DescribeStream: the stream's version and its files with their sizes. Asked again
        after `request_timeout` without an answer, for up to `stall_timeout` while the link is
        up (then `StreamTimeout`); a link that is down is waited for."""
        async with self._busy:
            self._next_operation()
            topic = protocol.topic(self.thing_name, self.stream_id, Verb.DESCRIBE, self.fmt)
            loop = asyncio.get_running_loop()
            while True:
                try:
                    answer = await self._exchange.request(
                        topic,
                        Verb.DESCRIBE,
                        lambda token: self.codec.encode(protocol.describe_request(token)),
                        self._read_description,
                        deadline=loop.time() + self.stall_timeout,
                        backoff=Backoff(self.retry_min, self.retry_max),
                        retryable=lambda exc: isinstance(exc, StreamRejected) and exc.retryable,
                        attempt=self.request_timeout,
                        bound=self._log,
                    )
                except ExchangeClosed:
                    raise StreamsError("the streams client was closed") from None
                except TransportError as exc:
                    raise StreamLinkError(f"{exc}; {_POLICY_HINT}") from None
                if answer is not None:
                    return answer
                if self.link.is_connected:
                    raise self._stalled("no answer to DescribeStream")
                await self.link.wait_connected(None)

    def _read_description(self, reply: _Reply) -> StreamDescription:
        verb, body = reply
        if verb is Verb.REJECTED:
            refused = protocol.parse_rejection(body)
            raise rejection(refused.code, refused.message, self.stream_id)
        return protocol.parse_description(body)

    async def fetch(
        self,
        file_id: int,
        *,
        size: int,
        block_size: int,
        version: int | None,
        missing: Iterable[int],
        on_block: BlockSink,
    ) -> None:
        """GetStream until every block in `missing` went to `on_block` (once each).

        `version` (from `describe`) is sent with every request, so a stream updated meanwhile
        is a `VersionMismatch` rather than blocks of two different files.
        """
        count = protocol.block_count(size, block_size)
        if not protocol.MIN_BLOCK_SIZE <= block_size <= protocol.MAX_BLOCK_SIZE:
            raise ValueError(f"block size {block_size} is out of bounds")
        if count - 1 > protocol.MAX_OFFSET:
            raise ValueError(f"{count} blocks: more than GetStream's offsets can reach")
        wanted = sorted({b for b in missing if 0 <= b < count})
        state = Fetch(file_id, size, block_size, self.fmt, set(wanted), collections.deque(wanted))
        async with self._busy:
            await self._run_fetch(state, self._owned_by(self._next_operation()), version, on_block)

    async def _run_fetch(
        self, state: Fetch, ours: _Owner, version: int | None, on_block: BlockSink
    ) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.retry_min, self.retry_max)
        not_before = 0.0
        last_progress = loop.time()
        while state.missing:
            ready = self.link.is_connected and loop.time() >= not_before
            if ready and not await self._fill_window(state, ours, version):
                not_before = loop.time() + _NOT_CONNECTED_PAUSE
            now = loop.time()
            timeout: float | None = None  # while the link is down: until it is back
            if self.link.is_connected:
                if now - last_progress > self.stall_timeout:
                    raise self._stalled(f"{len(state.missing)} blocks missing, none came")
                wake = [last_progress + self.stall_timeout, *state.deadlines()]
                if not_before > now:
                    wake.append(not_before)
                timeout = max(min(wake) - now, 0.0)
            item = await self._next_item(timeout)
            if item is None:
                expired = state.expire(loop.time())
                if expired:
                    self.stats.timeouts += expired
                    not_before = loop.time() + backoff.next_delay()
                    self._log.info("GetStream unanswered, asking again", requests=expired)
            elif isinstance(item, _Lost):
                self.stats.voided += state.void()
                self._log.info("link lost mid-fetch", missing=len(state.missing))
            elif isinstance(item, _Resumed):
                last_progress, not_before = loop.time(), 0.0
            elif item[0] is Verb.DATA:
                if self._take_block(state, item[1], ours, on_block):
                    last_progress = loop.time()
                    backoff.reset()
            elif item[0] is Verb.REJECTED:
                token = self._raise_if_ours(item[1], ours)
                if token is not None:  # refused for now: ask again later
                    state.give_back(state.outstanding.pop(token, Get(set(), 0.0)).blocks)
                    not_before = loop.time() + backoff.next_delay()
            else:
                self.stats.ignored += 1

    async def _fill_window(self, state: Fetch, ours: _Owner, version: int | None) -> bool:
        """Send requests until the window is full; False if the link refused one."""
        topic = protocol.topic(self.thing_name, self.stream_id, Verb.GET, self.fmt)
        loop = asyncio.get_running_loop()
        while len(state.outstanding) < self.window:
            blocks = state.next_blocks()
            if not blocks:
                return True
            token = self._token(ours)
            body = protocol.get_request(
                token, state.file_id, state.block_size, blocks, version=version, fmt=self.fmt
            )
            # Registered before publishing: the answer may come before the acknowledgement.
            get = Get(set(blocks), loop.time() + self.request_timeout)
            state.outstanding[token] = get
            if not await self._publish(topic, body):
                state.give_back(state.outstanding.pop(token, get).blocks)
                return False
            get.deadline = loop.time() + self.request_timeout
        return True

    def _take_block(
        self,
        state: Fetch,
        body: Mapping[str, Any],
        ours: _Owner,
        on_block: BlockSink,
    ) -> bool:
        """Hand a block of this fetch to the sink; True if it was new."""
        try:
            block: DataBlock = protocol.parse_block(body)
            if not ours(block.token) or block.file_id != state.file_id:
                self.stats.ignored += 1
                return False
            if block.block_id not in state.missing:
                self.stats.duplicates += 1
                return False
            expected = protocol.block_length(block.block_id, state.size, state.block_size)
            data = block.payload_bytes(expected)
        except StreamProtocolError as exc:
            self.stats.ignored += 1
            self._log.warning("malformed block ignored", error=str(exc))
            return False
        on_block(block.block_id, data)
        state.received(block.block_id)
        self.stats.blocks += 1
        return True

    # -- plumbing ------------------------------------------------------------------------------
    def _next_operation(self) -> int:
        """A new operation: tokens of earlier ones no longer count, and whatever is still
        waiting in the inbox (their answers, old link events) is dropped."""
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._operation += 1
        return self._operation

    def _owned_by(self, operation: int) -> _Owner:
        return _Owner(f"{self._token_prefix}-{operation}-")

    def _token(self, ours: _Owner) -> str:
        self._counter += 1
        return f"{ours.start}{self._counter}"

    def _raise_if_ours(self, body: Mapping[str, Any], ours: _Owner) -> str | None:
        """Raise the typed error of a rejection of ours; return its token when it is only
        transient; None (and nothing raised) when it is someone else's."""
        refused = protocol.parse_rejection(body)
        if not ours(refused.token):
            self.stats.ignored += 1
            return None
        error = rejection(refused.code, refused.message, self.stream_id)
        if error.retryable:
            self._log.info("request refused for now", code=refused.code)
            return refused.token
        self._log.info("request rejected", code=refused.code, message=refused.message)
        raise error

    def _stalled(self, what: str) -> StreamTimeout:
        detail = f"stream {self.stream_id}: {what} for {self.stall_timeout:g} s"
        anonymous = self.last_anonymous_rejection
        if anonymous is not None:
            detail += f" (last rejection: {anonymous.code}: {anonymous.message})"
        return StreamTimeout(detail)

    async def _publish(self, topic: str, body: Mapping[str, Any]) -> bool:
        """Publish once; False when the link is down (the caller asks again later)."""
        try:
            async with asyncio.timeout(self.request_timeout):
                await self.link.publish(topic, self.codec.encode(body))
        except (NotConnectedError, TimeoutError):
            return False
        except TransportError as exc:
            raise StreamLinkError(f"{exc}; {_POLICY_HINT}") from None
        self.stats.publishes += 1
        return True

    async def _next_item(self, timeout: float | None) -> _Item | None:
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get()
        except TimeoutError:
            return None

    # -- the link's listeners (on the loop thread; must not block or raise) --------------------
    def _on_message(self, message: Message) -> None:
        verb = protocol.parse_verb(message.topic, self._prefix, self.fmt)
        if verb is None:
            self.stats.ignored += 1
            return
        try:
            body = self.codec.decode(message.payload)
        except StreamsError as exc:
            self.stats.ignored += 1
            self._log.warning("malformed answer ignored", topic=message.topic, error=str(exc))
            return
        token = body.get("c")
        if verb is Verb.REJECTED and token is None:
            refused = protocol.parse_rejection(body)
            self.last_anonymous_rejection = refused
            self._log.warning("rejection without a client token", code=refused.code)
        if verb is Verb.DESCRIPTION or self._exchange.waits_for(token):
            self._exchange.resolve(token, Verb.DESCRIBE, (verb, body))
        else:
            self._put((verb, body))

    def _on_lost(self, reason: str) -> None:
        self._exchange.link_lost()
        self._put(_Lost(reason))

    def _on_resumed(self, session_present: bool) -> None:
        self._put(_Resumed(session_present))

    def _put(self, item: _Item) -> None:
        if self._inbox.qsize() >= MAX_INBOX and not isinstance(item, _Lost | _Resumed):
            self.stats.ignored += 1
            return
        self._inbox.put_nowait(item)


__all__ = ["BlockSink", "StreamStats", "StreamsClient"]
