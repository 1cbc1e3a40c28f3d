"""Maintenance windows themselves: AWS's `MaintenanceWindow` (an AWS cron `startTime` and a
`durationInMinutes`) in the time zone its wall-clock times are read in, read from the
configuration and from job documents (the rules: `schedule.windows`).

Loaded with the first window, configured or in a job's document: an agent configured without
windows needs only their set (`windows.Windows`, always open when empty) before its first job
(issue 18).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from jobs_agent.datamodel import model
from jobs_agent.schedule.windows import CONFIG_KEYS, Intersection, Timeline, Windows
from jobs_agent.vocabulary import MAINTENANCE_WINDOW_MAX_MINUTES, MAINTENANCE_WINDOW_MIN_MINUTES

if TYPE_CHECKING:
    from jobs_agent.schedule.cron import CronSchedule

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


def _window(data: Any, keys: tuple[str, str, str], where: str) -> MaintenanceWindow:
    if not isinstance(data, (dict, Mapping)):  # dict first: the ABC's check is a Python call
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


def config_windows(data: Any, where: str) -> Windows:
    """The configuration's list of windows (`windows.windows_from_config`)."""
    if not isinstance(data, list):
        raise WindowError(f"{where}: expected a list of windows")
    return Windows([_window(item, CONFIG_KEYS, f"{where}[{i}]") for i, item in enumerate(data)])


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
            # Plain JSON's dict first: `isinstance` of the `Mapping` ABC is a Python call.
            action = step.get("action") if isinstance(step, (dict, Mapping)) else None
            if isinstance(action, (dict, Mapping)) and DOCUMENT_KEY in action:
                steps[index] = window_from_document(
                    action[DOCUMENT_KEY], f"steps[{index}].action.{DOCUMENT_KEY}"
                )
    return DocumentWindows(job, steps)
