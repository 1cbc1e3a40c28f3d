"""The paho transport of `sim fleet`'s devices: subscriptions asked together go in one SUBSCRIBE.

A device's Jobs client subscribes to its eight reply and event filters at once (`asyncio.gather`
in `JobsClient.start`). Through `PahoTransport` each is a SUBSCRIBE packet of its own, written
at once, and a SUBACK that paho decodes into reason-code and property objects: cProfile of the
fleet process while 1,000 things connected put a third of its CPU time on the loop thread there
(paho's `Properties` alone: 1.9 of 18.8 s), and each packet woke the broker once more.
`FleetTransport` collects the filters asked for during one turn of the event loop and sends
them as one SUBSCRIBE with one filter each (MQTT 5 allows many); the broker answers with one
SUBACK holding a reason code per filter, in order, and each caller gets its own: a refused
filter fails only its own `subscribe`, a lost link fails every caller of the batch with
`NotConnectedError`, as it fails each waiting subscribe of `PahoTransport`, and the callers ask
again (`subscribe_within`).

The keep-alive checks (paho's `loop_misc`, which sends a PINGREQ when the link has been quiet for
the keep-alive) of all the devices run from one loop timer (`KeepAlives`), at the period the
gateway's transport gives each link its own task for: a task per device held a timer each in
the loop's heap (5,000 of them at 5,000 things, every other timer's push and pop comparing
against them), and each woke on its own, a task step per device every 15 s, so a thing's share
grew with the rollout's length, i.e. with the fleet's size (issue 18). Nothing else differs from
the gateway's transport.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobs_agent.transport.base import NotConnectedError, TransportError
from jobs_agent.transport.options import PahoOptions
from jobs_agent.transport.paho import PahoTransport

log = structlog.get_logger("jobs_agent.sim.fleet_transport")


class KeepAlives:
    """The keep-alive checks of a fleet's devices on one loop, from one timer (see above)."""

    def __init__(self) -> None:
        self._links: dict[FleetTransport, None] = {}
        """The connected devices, in the order they connected (a dict as an ordered set)."""
        self._interval: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        """Times the timer checked every device (tests count them)."""

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: FleetTransport, interval: float) -> None:
        """Check `link` every `interval` seconds from now on (the shortest asked, if they
        differ)."""
        self._links[link] = None
        if self._interval is None or interval < self._interval:
            self._interval = interval
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(interval, self._tick)

    def discard(self, link: FleetTransport) -> None:
        self._links.pop(link, None)
        if not self._links and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self.ticks += 1
        for link in tuple(self._links):
            try:
                link.check_keep_alive()
            except Exception:  # one device's failure must not skip the others' pings
                log.exception("keep-alive check failed", client_id=link.client_id)
        if self._links and self._interval is not None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)


@dataclass
class _Batch:
    """Filters asked for in one loop turn, and each caller's future for its reason code."""

    filters: list[str] = field(default_factory=list)
    waiters: list[asyncio.Future[ReasonCode]] = field(default_factory=list)


class FleetTransport(PahoTransport):
    """`PahoTransport` whose subscriptions of one loop turn share a SUBSCRIBE (see above)."""

    def __init__(
        self, config: PahoOptions, client_id: str, keep_alives: KeepAlives | None = None
    ) -> None:
        super().__init__(config, client_id)
        self._batch: _Batch | None = None
        self._keep_alives = KeepAlives() if keep_alives is None else keep_alives
        """Whose timer checks this link's keep-alive: the fleet's (one for all of its
        devices), or one of its own."""
        self.subscribe_packets = 0
        """SUBSCRIBE packets sent (tests count them)."""

    def _keep_alive(self) -> asyncio.Task[None] | None:
        self._keep_alives.add(self, self._misc_interval)
        return None

    def check_keep_alive(self) -> None:
        """Send a PINGREQ if the link has been quiet for the keep-alive (`KeepAlives`)."""
        self._client.loop_misc()

    async def disconnect(self) -> None:
        self._keep_alives.discard(self)
        await super().disconnect()

    async def _send_subscribe(self, topic_filter: str) -> None:
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_soon(self._send_batch, batch)  # after the others of this turn
        waiter: asyncio.Future[ReasonCode] = loop.create_future()
        batch.filters.append(topic_filter)
        batch.waiters.append(waiter)
        reason = await waiter
        if reason.is_failure:
            raise TransportError(f"subscribe {topic_filter}: refused by the broker ({reason})")

    def _send_batch(self, batch: _Batch) -> None:
        if self._batch is batch:
            self._batch = None
        what = "subscribe " + ", ".join(batch.filters)
        options = SubscribeOptions(qos=1)
        try:
            rc, mid = self._client.subscribe([(f, options) for f in batch.filters])
            acknowledged = self._expect(rc, mid, what)
        except TransportError as exc:
            _fail(batch, exc)
            return
        self.subscribe_packets += 1
        acknowledged.add_done_callback(lambda done: _settle(batch, done))


def _fail(batch: _Batch, exc: BaseException) -> None:
    for waiter in batch.waiters:
        if not waiter.done():
            waiter.set_exception(exc)


def _settle(batch: _Batch, done: asyncio.Future[Any]) -> None:
    """Hand each caller its filter's reason code from the SUBACK (or the batch's failure)."""
    if done.cancelled():
        _fail(batch, NotConnectedError("subscribe: cancelled"))
        return
    exc = done.exception()
    if exc is not None:
        _fail(batch, exc)
        return
    reasons: list[ReasonCode] = done.result()
    if len(reasons) != len(batch.waiters):
        _fail(
            batch,
            TransportError(
                f"subscribe: the broker answered {len(reasons)} reason codes"
                f" for {len(batch.waiters)} filters"
            ),
        )
        return
    for waiter, reason in zip(batch.waiters, reasons, strict=True):
        if not waiter.done():
            waiter.set_result(reason)


__all__ = ["FleetTransport", "KeepAlives"]
