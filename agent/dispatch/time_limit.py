"""A Python plugin's and a script step's time limits, and the one loop timer behind them.

A limit cancels the plugin's task when it passes and that cancel is taken back as the timeout,
as `asyncio.timeout` does. Most plugins end long before their limit (an hour by default): a
timer of its own per job was armed and cancelled at once, and each cancelled one stayed in the
loop's heap of timers until its hour was up or the loop swept them (more than half the heap
cancelled), so every other timer of the agent (a request's deadline, paho's acknowledgement
delay) was pushed into and popped from a heap of a hundred or so, a Python `__lt__` per
comparison (issue 18: 33 per plugin job over paho). The limits of a loop now share one timer,
armed for the earliest of them and left armed when a job ends: it finds nothing due when it
fires, and is armed again for the limits still running, if any. One per loop, not per
dispatcher: `sim fleet` runs thousands of dispatchers on one loop, which would otherwise keep a
live timer each in the heap for as long as a limit.

A script step's limit (`StepLimit`, the sandbox's) is on the same timer: it was an
`asyncio.timeout` of its own per step, armed and cancelled around the step's wait, with the same
cancelled timer left in the heap for the step's limit (an hour by default).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from jobs_agent_handlers.outcome import point_of_no_return

if TYPE_CHECKING:
    from jobs_agent_handlers.api import Handler, JobContext


class Limit(Protocol):
    """What the loop's one timer expires: a deadline on the loop's clock, and what to do then."""

    @property
    def deadline(self) -> float: ...

    def expire(self) -> None: ...


class TimeLimit:
    """One plugin run's limit (the object the task's cancel is told apart by)."""

    __slots__ = ("cancelling", "ctx", "deadline", "expired", "handler", "task", "timeout")

    def __init__(
        self, task: asyncio.Task[Any], handler: Handler, ctx: JobContext, timeout: float
    ) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.handler = handler
        self.ctx = ctx
        self.timeout = timeout
        self.deadline = task.get_loop().time() + timeout
        """On the loop's clock."""
        self.expired = False

    def expire(self) -> None:
        # Past its point of no return (an A/B update after its slot switch) a handler is not
        # cut short: that would leave the device half done. It bounds its own steps
        # (handlers/api.py POINT_OF_NO_RETURN).
        if point_of_no_return(getattr(self.ctx, "checkpoint_data", None)) is None:
            self.expired = True
            self.task.cancel()
        else:
            self.ctx.log.warning(
                "plugin time limit passed; not stopped: past its point of no return",
                handler=self.handler.name,
                timeout=self.timeout,
            )


class StepLimit:
    """A script step's limit: when it passes, the step's wait (`woken`, which its exit and its
    job's cancellation also complete) ends, and the sandbox stops the step as timed out, as it
    did when its own `asyncio.timeout` raised."""

    __slots__ = ("_woken", "deadline")

    def __init__(self, woken: asyncio.Future[None], timeout: float) -> None:
        self._woken = woken
        self.deadline = woken.get_loop().time() + timeout
        """On the loop's clock."""

    def expire(self) -> None:
        if not self._woken.done():
            self._woken.set_result(None)


_latest: TimeLimits | None = None
"""The limits of the loop the last plugin or step ran on (`time_limits`)."""


def time_limits(loop: asyncio.AbstractEventLoop) -> TimeLimits:
    """The limits of `loop` (made at its first plugin or step run; one loop per process but in
    tests, where a new loop makes a new one and the earlier one's timer ends with its loop)."""
    global _latest
    limits = _latest
    if limits is None or limits.loop is not loop:
        limits = _latest = TimeLimits(loop)
    return limits


class TimeLimits:
    """The limits running on one loop, behind one timer armed for the earliest deadline."""

    __slots__ = ("_armed", "_limits", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._limits: dict[Limit, None] = {}
        """The limits of the runs not yet ended (a set in the order they started)."""
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        """When the timer fires: every limit whose deadline is not later is due then."""

    def start(self, limit: Limit) -> None:
        self._limits[limit] = None
        if self._timer is None or limit.deadline < self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._arm(limit.deadline)

    def end(self, limit: Limit) -> None:
        """The run ended: its limit never expires now (the timer stays armed, see above)."""
        self._limits.pop(limit, None)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = [limit for limit in self._limits if limit.deadline <= self._armed]
        for limit in due:
            del self._limits[limit]
        if self._limits:
            self._arm(min(limit.deadline for limit in self._limits))
        for limit in due:
            try:
                limit.expire()
            except Exception as exc:  # as with a timer of its own: told, the others still expire
                self.loop.call_exception_handler(
                    {"message": "a time limit failed to expire", "exception": exc}
                )
