"""Where the emulator gets the time from.

Every timer of the service (step timeouts, in-progress timeouts) is a deadline compared with
`Clock.now()` by `JobsService.tick()`, so a test swaps in a `ManualClock` and moves time forward
by ten minutes in a microsecond instead of waiting for it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (float)."""
        ...


class SystemClock:
    """The wall clock: what a running emulator uses. `now` is `time.time` itself: a method
    around it cost a Python call per reading, nine per job of a drain."""

    now = staticmethod(time.time)


class ManualClock:
    """A clock that only moves when told to; thread-safe because the HTTP API runs in threads."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now
