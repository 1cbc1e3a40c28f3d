"""Maintenance windows on the device: when a job may start, and whether a step still fits.

A window is AWS's `MaintenanceWindow` (`startTime`, an AWS cron expression, and
`durationInMinutes`, 1 to 1430) plus the time zone its wall-clock times are read in, because a
fleet's "02:00" means each device's night, not UTC's. Windows come from two places:

* the agent's configuration (`jobs.maintenance_windows`, a list: the device is open when any of
  them is), and
* the job document (`"maintenanceWindow"` at the top level, or in a Device Client step's
  `action`): the job (or the step) may run only inside it.

Both together: a job runs only where the device's windows and its own overlap (`Intersection`):
the device's owner sets the outer limits, a job can only narrow them.

Rules, chosen because they are what an operator expects of "every night at 02:30 for an hour":

* Durations are elapsed time: an hour is 3600 s even across a daylight saving transition.
* A start time skipped by a spring-forward transition opens at the instant the clock would have
  shown it without the jump (02:30 becomes 03:30 that day); the window is not lost for the day.
* A start time that occurs twice (autumn) opens once, at its first occurrence.
* Openings that overlap or touch form one period: "when does it close" is the end of the whole
  period (looked for up to `CHAIN_HORIZON` ahead: a set open for longer reports that bound).
* No window configured means always open.

Everything here is a pure function of `now` (epoch seconds): the engine owns the clock.

The windows themselves (`MaintenanceWindow`, read from the configuration and from job documents,
in their time zones, with their cron schedules) are in `schedule.maintenance`, loaded with the
first window: an agent configured without windows needs only their set (`Windows`, always open
when empty) before its first job (issue 18). Every name of it is given here too (PEP 562).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jobs_agent.vocabulary import STEP_TIMEOUT_MAX

if TYPE_CHECKING:
    from jobs_agent.schedule.maintenance import DOCUMENT_KEY as DOCUMENT_KEY
    from jobs_agent.schedule.maintenance import LOCAL as LOCAL
    from jobs_agent.schedule.maintenance import DocumentWindows as DocumentWindows
    from jobs_agent.schedule.maintenance import MaintenanceWindow as MaintenanceWindow
    from jobs_agent.schedule.maintenance import Opening as Opening
    from jobs_agent.schedule.maintenance import WindowError as WindowError
    from jobs_agent.schedule.maintenance import describe as describe
    from jobs_agent.schedule.maintenance import document_windows as document_windows
    from jobs_agent.schedule.maintenance import local_zone as local_zone
    from jobs_agent.schedule.maintenance import window_from_document as window_from_document
    from jobs_agent.schedule.maintenance import zone_named as zone_named

CHAIN_HORIZON = (STEP_TIMEOUT_MAX + 1440) * 60.0
"""How far `closes_at` follows touching openings: beyond the 7 days a job execution can be in
progress (`inProgressTimeoutInMinutes` is at most `STEP_TIMEOUT_MAX`), and a day."""
SEARCH_PERIODS = 5000
"""How many closed/open periods `next_fit` and `Intersection.opens_at` look through."""
SEARCH_HORIZON = 366 * 86400.0
"""How far ahead `next_fit` looks for a period long enough."""
CONFIG_KEYS = ("start_time", "duration_minutes", "time_zone")
"""A configured window's keys (`jobs.maintenance_windows`), in the order of AWS's own."""


class Timeline(abc.ABC):
    """When something is open. `closes_at` is the end of the whole open period containing `t`
    (None when closed, `math.inf` when it never closes); `opens_at` is the first instant at or
    after `t` that is open (None: never again within the search)."""

    @abc.abstractmethod
    def is_open(self, now: float) -> bool: ...

    @abc.abstractmethod
    def closes_at(self, now: float) -> float | None: ...

    @abc.abstractmethod
    def opens_at(self, now: float) -> float | None: ...

    def next_opening(self, now: float) -> float | None:
        """When the next period begins: after the current one when open now. None when it
        never closes, or never opens again."""
        if not self.is_open(now):
            return self.opens_at(now)
        end = self.closes_at(now)
        return None if end is None or math.isinf(end) else self.opens_at(end)

    def outlasts(self, now: float, seconds: float) -> bool:
        """Whether a step expected to take `seconds`, started at `now`, would still run when
        the window closes (or the window is closed now). Ending exactly at the close fits."""
        end = self.closes_at(now)
        return end is None or now + seconds > end

    def next_fit(self, now: float, seconds: float) -> float | None:
        """The earliest instant at or after `now` when a step of `seconds` fits in one open
        period; None when no period within the search is long enough."""
        at = self.opens_at(now)
        for _ in range(SEARCH_PERIODS):
            if at is None or at - now > SEARCH_HORIZON:
                return None
            end = self.closes_at(at)
            if end is None:  # cannot happen for a consistent timeline; never loop on it
                return None
            if end - at >= seconds:
                return at
            at = self.opens_at(end)
        return None


class Windows(Timeline):
    """A set of maintenance windows: open when any of them is; always open when empty."""

    def __init__(self, windows: Sequence[MaintenanceWindow] = ()) -> None:
        self.windows = tuple(windows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Windows) and self.windows == other.windows

    def __hash__(self) -> int:
        return hash(self.windows)

    def to_config(self) -> list[dict[str, Any]]:
        """As `jobs.maintenance_windows` spells them (`jobs-agent config check` shows it)."""
        return [dict(zip(CONFIG_KEYS, w.to_json().values(), strict=True)) for w in self.windows]

    @property
    def always_open(self) -> bool:
        return not self.windows

    def _ends_at(self, instant: float) -> list[float]:
        return [o.end for w in self.windows if (o := w.opening_at(instant)) is not None]

    def is_open(self, now: float) -> bool:
        return self.always_open or bool(self._ends_at(now))

    def closes_at(self, now: float) -> float | None:
        if self.always_open:
            return math.inf
        ends = self._ends_at(now)
        if not ends:
            return None
        end = max(ends)
        while end - now <= CHAIN_HORIZON:
            following = self._ends_at(end)  # an opening that starts by `end` continues it
            if not following:
                break
            end = max(end, *following)
            if end <= now:  # cannot happen: openings end after they start
                break
        return end

    def opens_at(self, now: float) -> float | None:
        if self.is_open(now):
            return now
        starts = [s for w in self.windows if (s := w.next_start_after(now)) is not None]
        return min(starts) if starts else None


class Intersection(Timeline):
    """Open where every part is: the device's windows and a job's (or a step's) own."""

    def __init__(self, parts: Sequence[Timeline]) -> None:
        self.parts = tuple(parts)

    def is_open(self, now: float) -> bool:
        return all(p.is_open(now) for p in self.parts)

    def closes_at(self, now: float) -> float | None:
        ends = [p.closes_at(now) for p in self.parts]
        if any(e is None for e in ends):
            return None
        return min((e for e in ends if e is not None), default=math.inf)

    def opens_at(self, now: float) -> float | None:
        at = now
        for _ in range(SEARCH_PERIODS):
            moved = False
            for part in self.parts:
                following = part.opens_at(at)
                if following is None:
                    return None
                if following > at:
                    at, moved = following, True
            if not moved:
                return at
        return None


def windows_from_config(data: Any, where: str = "jobs.maintenance_windows") -> Windows:
    """The configuration's list of `{start_time, duration_minutes, time_zone}` (none: always
    open); `WindowError` naming the key of a bad one."""
    if data is None:
        return Windows()
    from jobs_agent.schedule.maintenance import config_windows

    return config_windows(data, where)


_MAINTENANCE = frozenset(
    {
        "DOCUMENT_KEY",
        "LOCAL",
        "DocumentWindows",
        "MaintenanceWindow",
        "Opening",
        "WindowError",
        "describe",
        "document_windows",
        "local_zone",
        "window_from_document",
        "zone_named",
    }
)


def __getattr__(name: str) -> Any:
    """The names of `schedule.maintenance`, loaded at the first one asked for."""
    if name not in _MAINTENANCE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from jobs_agent.schedule import maintenance

    value = getattr(maintenance, name)
    globals()[name] = value
    return value
