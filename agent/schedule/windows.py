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
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from jobs_agent.datamodel import model
from jobs_agent.vocabulary import (
    MAINTENANCE_WINDOW_MAX_MINUTES,
    MAINTENANCE_WINDOW_MIN_MINUTES,
    STEP_TIMEOUT_MAX,
)

if TYPE_CHECKING:
    from jobs_agent.schedule.cron import CronSchedule

CHAIN_HORIZON = (STEP_TIMEOUT_MAX + 1440) * 60.0
"""How far `closes_at` follows touching openings: beyond the 7 days a job execution can be in
progress (`inProgressTimeoutInMinutes` is at most `STEP_TIMEOUT_MAX`), and a day."""
SEARCH_PERIODS = 5000
"""How many closed/open periods `next_fit` and `Intersection.opens_at` look through."""
SEARCH_HORIZON = 366 * 86400.0
"""How far ahead `next_fit` looks for a period long enough."""
LOCAL = "local"
"""The time zone name that means: the device's own (`TZ`, else `/etc/localtime`)."""
DOCUMENT_KEY = "maintenanceWindow"


class WindowError(ValueError):
    """A window that cannot be used; the message names the key and what was expected."""


@functools.cache
def local_zone() -> dt.tzinfo:
    """The device's time zone with its daylight saving rules: `TZ` when it names a zone, else
    `/etc/localtime`, else UTC. Read once per process, as libc does."""
    import zoneinfo  # zoneinfo and the cron parser load with the first window (issue 18)

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return zoneinfo.ZoneInfo.from_file(file, key=LOCAL)
    except (OSError, ValueError):
        return dt.UTC


def zone_named(name: str) -> dt.tzinfo:
    """The tzinfo for an IANA name, `UTC` or `local`; `WindowError` for anything else."""
    if name == "UTC":
        return dt.UTC
    if name == LOCAL:
        return local_zone()
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise WindowError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Berlin, UTC or local)"
        ) from None


@model(slots=True)
class Opening:
    """One opening of one window: `start <= t < end`."""

    start: float
    end: float


@model(slots=True)
class MaintenanceWindow:
    """One recurring window in which a job may start, as AWS IoT Jobs declares one."""

    start_time: str
    """The AWS cron expression as given (`cron(30 2 ? * * *)`)."""
    duration_minutes: int
    time_zone: str
    schedule: CronSchedule = field(compare=False, repr=False)
    zone: dt.tzinfo = field(compare=False, repr=False)

    @classmethod
    def create(
        cls,
        start_time: Any,
        duration_minutes: Any,
        time_zone: Any = "UTC",
        *,
        names: tuple[str, str, str] = ("startTime", "durationInMinutes", "timeZone"),
    ) -> MaintenanceWindow:
        """Checked: raises `WindowError` naming the key (as `names` spell them) that is wrong."""
        start_key, duration_key, zone_key = names
        if not isinstance(start_time, str) or not 1 <= len(start_time) <= 256:
            raise WindowError(f"{start_key}: expected an AWS cron expression, cron(...)")
        from jobs_agent.schedule.cron import CronSchedule

        try:
            schedule = CronSchedule.parse(start_time)
        except ValueError as exc:
            raise WindowError(f"{start_key}: {exc}") from None
        low, high = MAINTENANCE_WINDOW_MIN_MINUTES, MAINTENANCE_WINDOW_MAX_MINUTES
        if (
            isinstance(duration_minutes, bool)
            or not isinstance(duration_minutes, int)
            or not low <= duration_minutes <= high
        ):
            raise WindowError(
                f"{duration_key}: expected an integer from {low} to {high},"
                f" got {duration_minutes!r}"
            )
        if not isinstance(time_zone, str):
            raise WindowError(f"{zone_key}: expected a time zone name, got {time_zone!r}")
        try:
            zone = zone_named(time_zone)
        except WindowError as exc:
            raise WindowError(f"{zone_key}: {exc}") from None
        return cls(start_time, duration_minutes, time_zone, schedule, zone)

    @property
    def duration(self) -> float:
        return self.duration_minutes * 60.0

    def opening_at(self, now: float) -> Opening | None:
        """The opening that contains `now` (the latest one, should two overlap)."""
        start = self.schedule.last_at_or_before(now, days=2, zone=self.zone)
        if start is not None and now < start + self.duration:
            return Opening(start, start + self.duration)
        return None

    def next_start_after(self, now: float) -> float | None:
        return self.schedule.next_after(now, zone=self.zone)

    def describe(self) -> str:
        return f"{self.start_time} for {self.duration_minutes} min ({self.time_zone})"

    def to_json(self) -> dict[str, Any]:
        return {
            "startTime": self.start_time,
            "durationInMinutes": self.duration_minutes,
            "timeZone": self.time_zone,
        }


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
        return [dict(zip(_CONFIG_KEYS, w.to_json().values(), strict=True)) for w in self.windows]

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


def describe(timeline: Timeline, now: float, zone: dt.tzinfo | None = None) -> str:
    """One line for `jobs-agent status`: open until when, or when the next window opens."""
    shown = zone or local_zone()
    if not timeline.is_open(now):
        start = timeline.opens_at(now)
        if start is None:
            return "closed; no window opens within the search"
        return f"closed; next window opens {_local(start, shown)}"
    end = timeline.closes_at(now)
    if end is None or math.isinf(end):
        return "open (no maintenance windows)"
    return f"open until {_local(end, shown)}"


def _local(instant: float, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(instant, zone).strftime("%Y-%m-%d %H:%M %Z")


# -- parsing at the edges ----------------------------------------------------------------------
_DOCUMENT_KEYS = ("startTime", "durationInMinutes", "timeZone")
_CONFIG_KEYS = ("start_time", "duration_minutes", "time_zone")


def _window(data: Any, keys: tuple[str, str, str], where: str) -> MaintenanceWindow:
    if not isinstance(data, Mapping):
        raise WindowError(f"{where}: expected an object with {', '.join(keys)}")
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise WindowError(f"{where}.{unknown[0]}: unknown key (expected {', '.join(keys)})")
    for key in keys[:2]:
        if key not in data:
            raise WindowError(f"{where}.{key}: required")
    try:
        return MaintenanceWindow.create(
            data[keys[0]], data[keys[1]], data.get(keys[2], "UTC"), names=keys
        )
    except WindowError as exc:
        raise WindowError(f"{where}.{exc}") from None


def window_from_document(data: Any, where: str = DOCUMENT_KEY) -> MaintenanceWindow:
    """A job document's `maintenanceWindow` object: `startTime`, `durationInMinutes`,
    `timeZone` (default UTC, as AWS's own windows)."""
    return _window(data, _DOCUMENT_KEYS, where)


def windows_from_config(data: Any, where: str = "jobs.maintenance_windows") -> Windows:
    """The configuration's list of `{start_time, duration_minutes, time_zone}`."""
    if data is None:
        return Windows()
    if not isinstance(data, list):
        raise WindowError(f"{where}: expected a list of windows")
    return Windows([_window(item, _CONFIG_KEYS, f"{where}[{i}]") for i, item in enumerate(data)])


@model(slots=True)
class DocumentWindows:
    """What a job document asks for: a window for the whole job and per Device Client step."""

    job: MaintenanceWindow | None = None
    steps: Mapping[int, MaintenanceWindow] = field(default_factory=dict)

    def for_step(self, device: Timeline, index: int | None = None) -> Timeline:
        """Where the job (its step `index`) may run on a device whose own windows are
        `device`."""
        parts: list[Timeline] = [device]
        if self.job is not None:
            parts.append(Windows([self.job]))
        step = None if index is None else self.steps.get(index)
        if step is not None:
            parts.append(Windows([step]))
        return parts[0] if len(parts) == 1 else Intersection(parts)


def document_windows(document: Mapping[str, Any]) -> DocumentWindows:
    """Read the windows of a job document; `WindowError` names the path of a bad one (the
    engine reports it as REJECTED, like any malformed document)."""
    job = None
    if DOCUMENT_KEY in document:
        job = window_from_document(document[DOCUMENT_KEY])
    steps: dict[int, MaintenanceWindow] = {}
    raw_steps = document.get("steps")
    if isinstance(raw_steps, list):
        for index, step in enumerate(raw_steps):
            action = step.get("action") if isinstance(step, Mapping) else None
            if isinstance(action, Mapping) and DOCUMENT_KEY in action:
                steps[index] = window_from_document(
                    action[DOCUMENT_KEY], f"steps[{index}].action.{DOCUMENT_KEY}"
                )
    return DocumentWindows(job, steps)
