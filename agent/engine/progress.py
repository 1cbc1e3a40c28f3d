"""Coalesce a handler's progress and the step-timeout heartbeat into few IN_PROGRESS updates.

A handler may call `progress()` a hundred thousand times in a tight loop; the service must see at
most one update per `interval` carrying the latest state. Independently, the step timer set with
`stepTimeoutInMinutes` must be renewed before half of it has passed. Both needs are served by
one sender so that a progress update also counts as the heartbeat and no message is sent that
is not needed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from jobs_agent.aio import wait_event
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
        self._wake = asyncio.Event()
        self._last_sent: float | None = None
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
            self._wake.set()

    def seed(self, progress: Mapping[str, Any]) -> None:
        """Start from progress reported before (a run that continues); nothing is sent."""
        self._latest.update(progress)

    def extend_step_timeout(self, minutes: int) -> None:
        problem = step_timeout_problem(int(minutes))
        if problem is not None:
            raise ValueError(f"a step timeout in minutes {problem}")
        self._step_timeout = int(minutes)
        self._force = True
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        """Send updates until stopped or until the sender says the execution is over."""
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()  # start-next / the IN_PROGRESS update just set the timer
        while not self._stopped:
            now = loop.time()
            heartbeat = self._heartbeat_period()
            due_times: list[float] = []
            if self._dirty:
                due_times.append(self._last_sent + self._interval)
            if heartbeat is not None:
                due_times.append(self._last_sent + heartbeat)
            if self._force or (due_times and now >= min(due_times)):
                details = dict(self._latest) if self._dirty else None
                step_timeout = self._step_timeout
                self._dirty = False
                self._force = False
                self._last_sent = now
                keep_going = await self._send(details, step_timeout)
                self.updates_sent += 1
                if not keep_going:
                    return
                continue
            self._wake.clear()
            timeout = None if not due_times else max(0.0, min(due_times) - now)
            await wait_event(self._wake, timeout)
