"""Coalesce a handler's progress and the step-timeout heartbeat into few IN_PROGRESS updates.

A handler may call `progress()` a hundred thousand times in a tight loop; the service must see at
most one update per `interval` carrying the latest state. Independently, the step timer set with
`stepTimeoutInMinutes` must be renewed before half of it has passed. Both needs are served by
one sender so that a progress update also counts as the heartbeat and no message is sent that
is not needed.

It is driven by a timer on the loop (`start`), armed only when something is due: a task that
slept between updates cost every script job a task made, stepped, cancelled and stepped again,
though most send nothing (issue 18). Only a send runs in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from jobs_agent.vocabulary import step_timeout_problem

Send = Callable[[Mapping[str, Any] | None, int | None], Awaitable[bool]]
"""send(status_details or None for "unchanged", step_timeout_minutes or None) -> keep going?"""


class ProgressReporter:
    def __init__(
        self,
        send: Send,
        *,
        interval: float,
        step_timeout_minutes: int | None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self._send = send
        self._interval = max(0.0, interval)
        self._step_timeout = step_timeout_minutes
        self._heartbeat_override = heartbeat_interval
        self._latest: dict[str, Any] = {}
        self._dirty = False
        self._force = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._last_sent = 0.0
        self._stopped = False
        self.updates_sent = 0
        self.progress_calls = 0

    @property
    def latest(self) -> dict[str, Any]:
        return dict(self._latest)

    @property
    def step_timeout_minutes(self) -> int | None:
        return self._step_timeout

    def _heartbeat_period(self) -> float | None:
        if self._step_timeout is None:
            return None
        if self._heartbeat_override is not None:
            return self._heartbeat_override
        # Renew well before half of the step timeout has passed (network and clock slack).
        return self._step_timeout * 60.0 * 0.4

    def update(
        self, percent: float | None, message: str | None, details: Mapping[str, Any]
    ) -> None:
        """Record the latest progress; never blocks, never raises for odd values."""
        self.progress_calls += 1
        if percent is not None:
            try:
                value = float(percent)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isnan(value):
                value = min(100.0, max(0.0, value))
                self._latest["percent"] = f"{value:g}"
        if message is not None:
            self._latest["message"] = str(message)
        for key, value in details.items():
            self._latest[str(key)] = value
        if not self._dirty:
            self._dirty = True
            self._schedule()

    def seed(self, progress: Mapping[str, Any]) -> None:
        """Start from progress reported before (a run that continues); nothing is sent."""
        self._latest.update(progress)

    def extend_step_timeout(self, minutes: int) -> None:
        problem = step_timeout_problem(int(minutes))
        if problem is not None:
            raise ValueError(f"a step timeout in minutes {problem}")
        self._step_timeout = int(minutes)
        self._force = True
        self._schedule()

    def start(self) -> None:
        """Send updates from now on, until stopped or until the sender says the execution is
        over; the step timer was just set (start-next or the IN_PROGRESS update)."""
        self._loop = loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._schedule()

    def stop(self) -> None:
        """Send nothing more (an update being sent goes on: `close` ends it)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def close(self) -> None:
        """Stop, and end an update being sent; raises what made a send fail."""
        self.stop()
        sending = self._sending
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        if self._failed is not None:
            raise self._failed

    async def run(self) -> None:
        """`start`, and wait until cancelled (then `close`): for a wait that keeps the reporter
        in a task (`deferral.Deferrals.wait`)."""
        self.start()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.close()

    def _due(self) -> float | None:
        """When the next update is due (None: nothing is), as the loop's time."""
        if self._force:
            return self._last_sent
        heartbeat = self._heartbeat_period()
        due = self._last_sent + self._interval if self._dirty else None
        if heartbeat is not None:
            beat = self._last_sent + heartbeat
            due = beat if due is None else min(due, beat)
        return due

    def _schedule(self) -> None:
        """Arm the timer for the next update due (none while one is being sent: its end looks
        again)."""
        loop = self._loop
        if loop is None or self._stopped or self._sending is not None:
            return
        due = self._due()
        timer = self._timer
        if timer is not None:
            if due is not None and timer.when() == due:
                return
            timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = loop.call_at(due, self._send_due)

    def _send_due(self) -> None:
        self._timer = None
        loop = self._loop
        if self._stopped or loop is None:
            return
        details = dict(self._latest) if self._dirty else None
        step_timeout = self._step_timeout
        self._dirty = False
        self._force = False
        self._last_sent = loop.time()
        self._sending = loop.create_task(self._send_one(details, step_timeout))

    async def _send_one(self, details: dict[str, Any] | None, step_timeout: int | None) -> None:
        try:
            keep_going = await self._send(details, step_timeout)
        except Exception as exc:  # `close` hands it on, as the reporter's task raised it
            self._failed = exc
            self._stopped = True
            return
        finally:
            self._sending = None
        self.updates_sent += 1
        if not keep_going:
            self._stopped = True
            return
        self._schedule()
