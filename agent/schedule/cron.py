"""AWS cron expressions: the start times of maintenance windows, on the service and the device.

The format is EventBridge's, the one AWS IoT Jobs' `schedulingConfig.maintenanceWindows` takes:
`cron(minutes hours day-of-month month day-of-week year)`, day-of-week 1-7 = SUN-SAT, months
and days also by name, and one of the two day fields must be `?`. Supported: numbers, names,
`*`, `?`, `a-b`, `a,b`, `x/step`. Refused with a clear error: `L`, `W` and `#`. The emulator
(service side, always UTC) and the agent's local windows (`jobs_agent.schedule.windows`, in a
time zone) share this one parser, so an expression means the same on both sides.

A crontab's five fields are refused rather than guessed at: its day-of-week 1 is Monday where
AWS's is Sunday, and a window silently one day off is worse than an error.

Time zones: the starts of a day are wall-clock times in `zone`. A time that does not exist on
that day (skipped by a spring-forward transition) starts at the instant the clock would have
shown it without the jump (02:30 on a day that jumps from 02:00 to 03:00 starts at 03:30); a
time that occurs twice (autumn) starts once, at its first occurrence. Both follow PEP 495's
`fold=0`. Small enough to keep here rather than add a dependency to every gateway.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
from dataclasses import field

from jobs_agent.datamodel import model

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 1, 7, _DAYS),
    ("year", 1970, 2199, {}),
)
SEARCH_DAYS = 5 * 366
"""How far `next_after` looks ahead (a window that never opens again within it is `None`)."""
_CACHED_DAYS = 64
FORM = "cron(minutes hours day-of-month month day-of-week year)"


def _value(text: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    value = names.get(text.upper()) if not text.isdigit() else int(text)
    if value is None or not low <= value <= high:
        raise ValueError(f"{field} value {text!r} is out of {low}-{high}")
    return value


def _field(text: str, index: int) -> frozenset[int] | None:
    """The set of allowed values; None for `?`."""
    name, low, high, names = _FIELDS[index]
    if text == "?":
        if name not in ("day-of-month", "day-of-week"):
            raise ValueError(f"? is only allowed in the day fields, not in {name}")
        return None
    if any(c in text.upper() for c in "LW#") and text.upper() not in names:
        raise ValueError(f"{name} {text!r}: L, W and # are not supported")
    allowed: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"{name} step {step_text!r} is not a positive number")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = _value(a, low, high, names, name), _value(b, low, high, names, name)
        else:
            first = _value(base, low, high, names, name)
            last = high if step else first
        if first > last:
            raise ValueError(f"{name} range {base!r} is empty")
        allowed.update(range(first, last + 1, step or 1))
    return frozenset(allowed)


@model(slots=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int]
    days_of_week: frozenset[int] | None
    years: frozenset[int]
    _starts: dict[tuple[dt.date, dt.tzinfo], list[float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        text = expression.strip()
        if text.startswith("cron(") and text.endswith(")"):
            text = text[5:-1]
        parts = text.split()
        if len(parts) == 5:
            raise ValueError(
                f"{expression!r} has the 5 fields of a crontab; AWS cron has 6, {FORM}, and its"
                " day-of-week 1 is Sunday (crontab's is Monday): e.g. cron(0 2 ? * SUN *)"
            )
        if len(parts) != 6:
            raise ValueError(f"{expression!r} is not {FORM}")
        fields = [_field(part, i) for i, part in enumerate(parts)]
        if (fields[2] is None) == (fields[4] is None):
            raise ValueError("exactly one of day-of-month and day-of-week must be ?")
        minutes, hours, dom, months, dow, years = fields
        assert minutes is not None and hours is not None
        assert months is not None and years is not None
        return cls(minutes, hours, dom, months, dow, years)

    def matches_day(self, day: dt.date) -> bool:
        if day.year not in self.years or day.month not in self.months:
            return False
        if self.days_of_month is not None:
            return day.day in self.days_of_month
        assert self.days_of_week is not None
        return (day.isoweekday() % 7) + 1 in self.days_of_week  # SUN=1 .. SAT=7

    def starts_on(self, day: dt.date, zone: dt.tzinfo = dt.UTC) -> list[float]:
        """The start instants of the local date `day` in `zone`, ascending (see the module
        docstring for the days of a daylight saving time transition)."""
        key = (day, zone)
        cached = self._starts.get(key)
        if cached is not None:
            return cached
        if not self.matches_day(day):
            starts: list[float] = []
        elif zone is dt.UTC:
            midnight = calendar.timegm((day.year, day.month, day.day, 0, 0, 0, 0, 0, 0))
            starts = sorted(
                float(midnight + h * 3600 + m * 60) for h in self.hours for m in self.minutes
            )
        else:
            starts = sorted(
                {
                    dt.datetime(day.year, day.month, day.day, h, m, tzinfo=zone).timestamp()
                    for h in self.hours
                    for m in self.minutes
                }
            )
        if len(self._starts) >= _CACHED_DAYS:
            self._starts.clear()
        self._starts[key] = starts
        return starts

    def next_after(self, now: float, zone: dt.tzinfo = dt.UTC) -> float | None:
        """The first start strictly after `now` (None if none within `SEARCH_DAYS`)."""
        # A shifted start (spring forward) can fall on the next UTC day; begin a day early.
        day = dt.datetime.fromtimestamp(now, zone).date() - dt.timedelta(days=1)
        for offset in range(SEARCH_DAYS + 1):
            starts = self.starts_on(day + dt.timedelta(days=offset), zone)
            index = bisect.bisect_right(starts, now)
            if index < len(starts):
                return starts[index]
        return None

    def last_at_or_before(
        self, now: float, days: int = 2, zone: dt.tzinfo = dt.UTC
    ) -> float | None:
        """The latest start at or before `now` within `days` (windows last under a day)."""
        day = dt.datetime.fromtimestamp(now, zone).date() + dt.timedelta(days=1)
        for offset in range(days + 2):
            starts = self.starts_on(day - dt.timedelta(days=offset), zone)
            index = bisect.bisect_right(starts, now)
            if index:
                return starts[index - 1]
        return None

    def upcoming(self, now: float, count: int, zone: dt.tzinfo = dt.UTC) -> list[float]:
        """The next `count` starts (DescribeJob's `scheduledJobRollouts` shows seven)."""
        found: list[float] = []
        at = now
        while len(found) < count:
            following = self.next_after(at, zone)
            if following is None:
                break
            found.append(following)
            at = following
        return found
