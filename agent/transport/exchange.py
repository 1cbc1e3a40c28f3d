"""Request and reply over MQTT, matched by a client token: the part every AWS IoT device API
shares (Jobs, Device Shadow, DescribeStream of MQTT-based file delivery).

AWS IoT answers a request on reply topics that every client subscribed to them receives, so a
reply is ours only if it carries our own token and came on the reply topic of the request that
used it (its `key`, the protocol client's to choose). Request/reply over MQTT is fragile in
three ways absorbed here, once, for every protocol client:

* a reply can be lost with the connection: a request still waiting when the link drops is
  published again, with the same token, once the link is back (the first answer wins, a later
  duplicate finds no waiter);
* a refusal for now (throttled, an internal error) is asked again with a new token after a
  capped exponential backoff with jitter;
* one deadline covers all of it: nothing waits forever (`request` returns None when it passed);
* once the agent is stopping (`stop_waiting_for_link`), a request does not wait for a link that
  is down: it fails at once with `NotConnectedError`, as a publish on a down link does. Waiting
  for a broker that is gone kept a stopping agent alive for the whole request timeout (an hour
  or more where it is set so), and what such a request was doing is kept across the restart
  by its caller (the start-next marker, the outbox);
* once the agent stops now (`stop_waiting`, a second stop), no request waits for its answer
  longer than `ANSWER_GRACE_SECONDS` (from the stop, or from its sending after it), link up or
  down: it fails with `RequestAbandoned`. A service that does not answer held the stop for
  the request timeout; an answer on its way (milliseconds on a live link) is still taken, not
  thrown away to be asked for again, as a duplicate request, by the next start.

Requests go out with `Transport.submit`: the reply proves delivery, so a backend need not hand
each PUBACK to the loop (awscrt's cost a thread hop per request); a publish that fails after
`submit` returned comes back as news for the waiting request, as a reply or a link loss do.

The protocol client parses its topics and payloads, hands each reply to `resolve`, says what a
reply means (`read`: a value, or an exception, which `retryable` may declare worth another try)
and translates a transport's failure (`TransportError`, passed through here) into its own error,
once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from jobs_agent.backoff import Backoff
from jobs_agent.datamodel import model
from jobs_agent.transport.base import NotConnectedError, Transport, TransportError

log = structlog.get_logger("jobs_agent.transport")

R = TypeVar("R")
T = TypeVar("T")
ANSWER_GRACE_SECONDS = 2.0
"""After a stop now (`Exchange.stop_waiting`), how long an answer is still waited for: far
above a live link's round trip, far below systemd's patience."""
NOT_CONNECTED_PAUSE = 0.05
"""A backend may refuse a publish before it has marked the link down: pause so a loop cannot
spin without yielding."""


class Counters(Protocol):
    """What an exchange counts, in the protocol client's own statistics."""

    publishes: int
    republishes: int
    retries: int
    timeouts: int
    replies_ignored: int


@model(frozen=False, slots=True)
class ExchangeStats:
    """The exchange's own counts, when its client keeps none of its own."""

    publishes: int = 0
    """Request messages published, retries and re-publishes included."""
    republishes: int = 0
    """Requests published again because the link dropped while they waited."""
    retries: int = 0
    """Requests asked again (a new token) after a refusal for now or an unanswered attempt."""
    timeouts: int = 0
    """Attempts that got no answer in time."""
    replies_ignored: int = 0
    """Replies that matched no waiting request (another client's, a late duplicate)."""


class ExchangeClosed(Exception):
    """The exchange was closed while a request waited (the protocol client was closed)."""


class RequestAbandoned(TransportError):
    """The agent stops now (`Exchange.stop_waiting`): the request's answer is not waited for.
    Whether the service got the request is unknown, as after a link loss: the caller keeps
    what it was for (the start-next marker, the outbox) for the next start."""


@dataclass(eq=False, slots=True)
class _Waiter(Generic[R]):
    """One request waiting for its reply. `wake` is done when there is news (the reply, a link
    loss, a close): the request waits on that one future, with no task or event of its own."""

    key: Hashable
    wake: asyncio.Future[None]
    deadline: float
    reply: R | None = None
    answered: bool = False
    lost: bool = False
    closed: bool = False
    expired: bool = False
    """The deadline passed (`Exchange._expire`)."""
    failed: TransportError | None = None
    """A submitted publish's refusal or loss, reported after `submit` returned."""
    submitting: asyncio.Task[Any] | None = None
    """The request's task while it waits in `submit` (a backend may wait there for its
    PUBACK): the one wait the deadline must cut short by cancelling it."""
    cancelling: int = 0
    """`submitting.cancelling()` before the deadline's own cancel (another one passes)."""
    cut: bool = False
    """The deadline (or a stop, `offline`) cancelled `submitting`."""
    offline: bool = False
    """Given up because the link is down and the agent is stopping (`stop_waiting_for_link`)."""
    abandoned: bool = False
    """The agent stops now (`stop_waiting`): the deadline is the grace's end, and a request
    not answered by then fails with `RequestAbandoned`."""

    def notify(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    def fail(self, error: TransportError) -> None:
        self.failed = error
        self.notify()


class Exchange(Generic[R]):
    """The waiting requests of one protocol client on one transport; `R` is what the client
    hands to `resolve` (usually the reply's kind and its body)."""

    def __init__(self, transport: Transport, stats: Counters | None = None) -> None:
        self.transport = transport
        self.stats: Counters = stats if stats is not None else ExchangeStats()
        self._prefix = os.urandom(8).hex()  # as secrets.token_hex(8), without its imports
        self._counter = 0
        self._waiting: dict[str, _Waiter[R]] = {}
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        """One timer for every waiting request, at the earliest deadline it was armed for
        (`_arm`): a timer armed and cancelled per request (`asyncio.timeout_at`) was two per
        plugin job and a dozen Python calls each (issue 18)."""
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._link_awaited = True
        """False once the agent is stopping: no request waits for the link to come back."""
        self._answers_awaited = True
        """False once the agent stops now: no answer is waited for longer than `_grace`."""
        self._grace = ANSWER_GRACE_SECONDS
        self._pauses: set[asyncio.Future[None]] = set()
        """The pauses of requests between two attempts (`_pause`), which a stop now ends."""

    def new_token(self) -> str:
        """A token unique to this exchange (26 characters for a billion requests: within the
        64 bytes every AWS IoT API allows)."""
        self._counter += 1
        return f"{self._prefix}-{self._counter}"

    # -- from the protocol client's listeners (loop thread; never raise) ------------------------
    @property
    def waiting(self) -> int:
        """Requests published and not yet answered (or failed)."""
        return len(self._waiting)

    def waits_for(self, token: object) -> bool:
        """Whether a request is waiting with `token` (for clients that share a reply topic
        between requests and other traffic)."""
        return isinstance(token, str) and token in self._waiting

    def resolve(self, token: object, key: Hashable, reply: R) -> bool:
        """Give `reply` to the request waiting with `token` on `key`; False (and counted as
        ignored) when there is none."""
        waiter = self._waiting.get(token) if isinstance(token, str) else None
        if waiter is None or waiter.key != key or waiter.answered or waiter.closed:
            self.stats.replies_ignored += 1
            return False
        waiter.reply = reply
        waiter.answered = True
        waiter.notify()
        return True

    def link_lost(self) -> None:
        """Every waiting request is published again once the link is back."""
        for waiter in self._waiting.values():
            waiter.lost = True
            waiter.notify()

    def stop_waiting_for_link(self) -> None:
        """The agent is stopping: from now on a request whose link is down fails at once
        (`NotConnectedError`) instead of waiting for the link to come back, and so do the ones
        waiting for it now. Requests on a link that is up still wait for their answer."""
        self._link_awaited = False
        if not self.transport.is_connected:
            for waiter in self._waiting.values():
                waiter.offline = True
                self._cut(waiter)

    def stop_waiting(self, grace: float = ANSWER_GRACE_SECONDS) -> None:
        """The agent stops now (a second stop): no request waits for its answer longer than
        `grace` seconds from now (one made later: from its sending; an outcome decided as the
        abandoned step ends is still sent), nor for a link that is down; it then fails with
        `RequestAbandoned` (`NotConnectedError` for the link). Retry pauses end now."""
        self.stop_waiting_for_link()
        loop = asyncio.get_running_loop()
        self._answers_awaited = False
        self._grace = grace
        until = loop.time() + grace
        for waiter in self._waiting.values():
            waiter.abandoned = True
            waiter.deadline = min(waiter.deadline, until)
        if self._waiting and (self._timer is None or until < self._timer_at):
            self._arm(loop, until)
        for pause in self._pauses:
            _settle(pause)

    def close(self) -> None:
        """Fail every waiting request with `ExchangeClosed`. Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in self._waiting.values():
            waiter.closed = True
            waiter.notify()
        self._waiting.clear()

    # -- the request ----------------------------------------------------------------------------
    async def request(
        self,
        topic: str,
        key: Hashable,
        payload: Callable[[str], bytes],
        read: Callable[[R], T],
        *,
        deadline: float | None = None,
        within: float | None = None,
        backoff: Backoff,
        retryable: Callable[[Exception], bool] = lambda _exc: False,
        attempt: float | None = None,
        bound: Any = log,
    ) -> T | None:
        """Publish `payload(token)` on `topic` until a reply `read` accepts, or the loop time
        `deadline` (or `within` seconds from now) passes (None). `read` raises for a refusal:
        one `retryable` approves is asked again with a new token after a backoff while the
        deadline allows, otherwise it is raised. `attempt` (seconds) bounds the wait for one
        token's reply before it is asked again (None: the whole deadline). `TransportError`
        and `ExchangeClosed` pass through.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            if within is None:
                raise TypeError("request() needs deadline or within")
            deadline = loop.time() + within  # the caller need not ask for the loop too
        while True:
            token = self.new_token()
            until = deadline if attempt is None else min(deadline, loop.time() + attempt)
            reply = await self._send(loop, topic, payload(token), token, key, until, bound)
            if reply is not None:
                try:
                    return read(reply)
                except Exception as exc:
                    if not retryable(exc):
                        raise
                    delay = backoff.next_delay()
                    if loop.time() + delay >= deadline:
                        raise
                    bound.info("request refused for now, retrying", reason=str(exc), delay=delay)
            elif until >= deadline:
                return None  # the attempt ran to the end of the request's time
            else:
                delay = min(backoff.next_delay(), max(deadline - loop.time(), 0.0))
            self.stats.retries += 1
            await self._pause(loop, delay)
            if not self._answers_awaited:
                raise RequestAbandoned("the agent is stopping now: not asked again")

    async def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        topic: str,
        payload: bytes,
        token: str,
        key: Hashable,
        deadline: float,
        bound: Any,
    ) -> R | None:
        """Publish once, and again after every link loss, until answered or the deadline.
        `loop` is the running loop, passed down: asking for it is a `getpid` system call on
        Python 3.11 (issue 18)."""
        if self._closed:
            raise ExchangeClosed("the client was closed")
        waiter: _Waiter[R] = _Waiter(key, loop.create_future(), deadline)
        if not self._answers_awaited:  # a stop now came: its answer gets the grace alone
            waiter.abandoned = True
            waiter.deadline = deadline = min(deadline, loop.time() + self._grace)
        self._waiting[token] = waiter  # registered before publishing: a reply may be instant
        if self._timer is None or deadline < self._timer_at or self._timer_loop is not loop:
            self._arm(loop, deadline)
        try:
            try:
                await self._attempts(loop, topic, payload, token, waiter, bound)
            except asyncio.CancelledError:
                task = waiter.submitting
                if not waiter.cut or task is None or task.uncancel() > waiter.cancelling:
                    raise  # not (only) the deadline's: the caller's
            if waiter.closed:
                raise ExchangeClosed("the client was closed")
            if waiter.answered:
                return waiter.reply
            if waiter.abandoned:
                raise RequestAbandoned("the agent is stopping now: the answer is not waited for")
            if waiter.offline:
                raise NotConnectedError("the link is down and the agent is stopping")
        finally:
            self._waiting.pop(token, None)
        self.stats.timeouts += 1
        return None

    async def _attempts(
        self,
        loop: asyncio.AbstractEventLoop,
        topic: str,
        payload: bytes,
        token: str,
        waiter: _Waiter[R],
        bound: Any,
    ) -> None:
        """`_send`'s publishes and waits, until answered, closed or past the deadline: the waits
        for the link and the pauses end by their own time limits, the wait for news is woken by
        `_expire`, and a `submit` still waiting then is cancelled by it."""
        deadline = waiter.deadline
        first = True
        while not waiter.answered and not waiter.closed and not waiter.expired:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not self.transport.is_connected:
                if not self._link_awaited:
                    waiter.offline = True
                    break
                # Cut short by a stop (`stop_waiting_for_link`) as `submit` is by the deadline.
                task = asyncio.current_task(loop)
                waiter.submitting = task
                waiter.cancelling = 0 if task is None else task.cancelling()
                try:
                    if not await self.transport.wait_connected(remaining):
                        break
                finally:
                    if not waiter.cut:
                        waiter.submitting = None
                continue  # re-check: the reply may have come with a kept session
            waiter.lost = False
            task = asyncio.current_task(loop)
            waiter.submitting = task
            waiter.cancelling = 0 if task is None else task.cancelling()
            try:
                await self.transport.submit(topic, payload, waiter.fail)
            except NotConnectedError:
                await asyncio.sleep(min(NOT_CONNECTED_PAUSE, remaining))
                continue
            finally:
                if not waiter.cut:
                    waiter.submitting = None
            self.stats.publishes += 1
            if not first:
                self.stats.republishes += 1
                bound.info("request re-published after reconnect", client_token=token)
            first = False
            bound.debug("request published", topic=topic, client_token=token)
            await self._news(waiter)
            if waiter.failed is not None:
                await self._failed(waiter, deadline)

    async def _pause(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """The backoff between two attempts (up to `retry_max`, 30 s by default), ended by a
        stop now (`stop_waiting`): the next attempt then fails at once."""
        pause = loop.create_future()
        timer = loop.call_later(delay, _settle, pause)
        self._pauses.add(pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pauses.discard(pause)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop, when)
        self._timer_at = when
        self._timer_loop = loop

    def _expire(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """The timer: every request past its deadline is told (and cut short in `submit`);
        the timer is armed again for the earliest deadline still ahead."""
        self._timer = None
        now = max(loop.time(), when)  # a timer may run a clock tick before its time
        earliest: float | None = None
        for waiter in self._waiting.values():
            if waiter.deadline > now:
                if earliest is None or waiter.deadline < earliest:
                    earliest = waiter.deadline
            elif not waiter.expired:
                self._cut(waiter)
        if earliest is not None:
            self._arm(loop, earliest)

    @staticmethod
    def _cut(waiter: _Waiter[R]) -> None:
        """End `waiter`'s wait now: told, and cancelled if it is in a wait that hears no news
        (`submit`, or the wait for the link)."""
        waiter.expired = True
        waiter.notify()
        if waiter.submitting is not None and not waiter.cut:
            waiter.cut = True
            waiter.submitting.cancel()

    @staticmethod
    async def _failed(waiter: _Waiter[R], deadline: float) -> None:
        """A publish `submit` had queued failed: a refusal is raised, a loss is published again
        after the pause a refused publish gets (the link may not be marked down yet)."""
        error, waiter.failed = waiter.failed, None
        if error is not None and not isinstance(error, NotConnectedError):
            raise error
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(min(NOT_CONNECTED_PAUSE, max(remaining, 0.0)))

    @staticmethod
    async def _news(waiter: _Waiter[R]) -> None:
        """Wait until the reply, a link loss, a failed publish, a close or the deadline
        (`Exchange._expire`)."""
        if waiter.answered or waiter.lost or waiter.closed or waiter.expired:
            return
        if waiter.failed is not None:
            return
        if waiter.wake.done():  # woken by an earlier loss, already dealt with
            waiter.wake = asyncio.get_running_loop().create_future()
        await waiter.wake


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def subscribe_within(
    transport: Transport,
    topic_filter: str | Sequence[str],
    deadline: float | None,
    *,
    attempt: float | None = None,
) -> bool:
    """Subscribe (QoS 1) once the link is up, again when it turns out to be down, until the
    SUBACK or the loop time `deadline` (None: for as long as it takes); with `attempt`, a
    SUBACK not come within that many seconds (lost with the link) is asked for again. False
    when the deadline passed; a refusal (`TransportError`) passes through. Several filters are
    asked for together (`Transport.subscribe_all`)."""
    loop = asyncio.get_running_loop()
    while True:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return False
        if not await transport.wait_connected(remaining):
            return False
        last = attempt is None or (remaining is not None and remaining <= attempt)
        limit = remaining if last else attempt
        try:
            async with asyncio.timeout(limit):
                if isinstance(topic_filter, str):
                    await transport.subscribe(topic_filter)
                else:
                    await transport.subscribe_all(topic_filter)
            return True
        except NotConnectedError:
            pause = (
                NOT_CONNECTED_PAUSE if remaining is None else min(NOT_CONNECTED_PAUSE, remaining)
            )
            await asyncio.sleep(pause)
        except TimeoutError:
            if last:
                return False
