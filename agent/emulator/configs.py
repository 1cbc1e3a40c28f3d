"""The job configurations of the control plane (CreateJob, UpdateJob, CreateJobTemplate), each
parsed and checked once where a request enters and serialised by the same class.

Shapes and limits are botocore's `iot` model (rest-json): `PresignedUrlConfig` (roleArn 20..2048
characters, expiresInSec 60..3600), `TimeoutConfig` (1..10080 minutes), `JobExecutionsRetryConfig`
(1..2 criteria, 0..10 retries), `JobExecutionsRolloutConfig`, `AbortConfig`, `SchedulingConfig`.
`from_json` raises `ControlError` (InvalidRequestException) naming the field; `to_json` gives
the wire form DescribeJob and DescribeJobTemplate echo (and the state store keeps).
Checks that depend on the clock (a startTime at least 30 minutes ahead) are the service's.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs_agent.emulator.errors import ControlError
from jobs_agent.emulator.model import RetryCriterion
from jobs_agent.schedule.cron import CronSchedule
from jobs_agent.vocabulary import (
    MAINTENANCE_WINDOW_MAX_MINUTES,
    MAINTENANCE_WINDOW_MIN_MINUTES,
    STEP_TIMEOUT_MAX,
)

MAX_TIMEOUT_MINUTES = STEP_TIMEOUT_MAX
DEFAULT_EXPIRES_IN_SEC = 3600


def invalid(message: str) -> ControlError:
    return ControlError("InvalidRequestException", message)


def _int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise invalid(f"{name} must be an integer")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise invalid(f"{name} must be in {bounds}, not {number}")
    return number


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise invalid(f"{name} must be a number")
    if not low <= float(value) <= high:
        raise invalid(f"{name} must be in {low:g}..{high:g}, not {value}")
    return float(value)


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(f"{name} must be an object")
    return value


def _list(value: Any, name: str, low: int, high: int | None = None) -> list[Any]:
    if not isinstance(value, list) or len(value) < low or (high is not None and len(value) > high):
        raise invalid(f"{name} must be a list of {low}..{high if high else 'n'} items")
    return value


@dataclass(frozen=True, slots=True)
class PresignedUrlConfig:
    role_arn: str | None = None
    expires_in_sec: int = DEFAULT_EXPIRES_IN_SEC

    @classmethod
    def from_json(cls, value: Any) -> PresignedUrlConfig:
        o = _object(value, "presignedUrlConfig")
        role = o.get("roleArn")
        if role is not None and (not isinstance(role, str) or not 20 <= len(role) <= 2048):
            raise invalid("presignedUrlConfig.roleArn must be an IAM role ARN (20..2048 chars)")
        expires = o.get("expiresInSec")
        return cls(
            role,
            DEFAULT_EXPIRES_IN_SEC
            if expires is None
            else _int(expires, "presignedUrlConfig.expiresInSec", 60, 3600),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expiresInSec": self.expires_in_sec}
        if self.role_arn is not None:
            out["roleArn"] = self.role_arn
        return out


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    in_progress_timeout_minutes: int | None = None

    @classmethod
    def from_json(cls, value: Any) -> TimeoutConfig:
        minutes = _object(value, "timeoutConfig").get("inProgressTimeoutInMinutes")
        if minutes is None:
            return cls()
        return cls(_int(minutes, "inProgressTimeoutInMinutes", 1, MAX_TIMEOUT_MINUTES))

    def to_json(self) -> dict[str, Any]:
        if self.in_progress_timeout_minutes is None:
            return {}
        return {"inProgressTimeoutInMinutes": self.in_progress_timeout_minutes}


def retry_criterion(value: Any) -> RetryCriterion:
    o = _object(value, "retry criterion")
    failure = o.get("failureType")
    if failure not in ("FAILED", "TIMED_OUT", "ALL"):
        raise invalid(f"invalid failureType {failure!r} (FAILED | TIMED_OUT | ALL)")
    return RetryCriterion(failure, _int(o.get("numberOfRetries"), "numberOfRetries", 0, 10))


def retry_criteria(value: Any) -> tuple[RetryCriterion, ...]:
    """`jobExecutionsRetryConfig` (or its bare `criteriaList`)."""
    items = value.get("criteriaList") if isinstance(value, Mapping) else value
    return tuple(retry_criterion(c) for c in _list(items, "retry criteriaList", 1, 2))


@dataclass(frozen=True, slots=True)
class ExponentialRate:
    base_rate_per_minute: int
    increment_factor: float
    notified_things: int | None
    succeeded_things: int | None

    @classmethod
    def from_json(cls, value: Any) -> ExponentialRate:
        o = _object(value, "exponentialRate")
        criteria = _object(o.get("rateIncreaseCriteria"), "rateIncreaseCriteria")
        notified, succeeded = (
            criteria.get("numberOfNotifiedThings"),
            criteria.get("numberOfSucceededThings"),
        )
        if (notified is None) == (succeeded is None):
            raise invalid(
                "rateIncreaseCriteria takes one of numberOfNotifiedThings and "
                "numberOfSucceededThings"
            )
        return cls(
            _int(o.get("baseRatePerMinute"), "baseRatePerMinute", 1, 1000),
            round(_number(o.get("incrementFactor"), "incrementFactor", 1.1, 5.0), 1),
            None if notified is None else _int(notified, "numberOfNotifiedThings", 1),
            None if succeeded is None else _int(succeeded, "numberOfSucceededThings", 1),
        )

    def to_json(self) -> dict[str, Any]:
        criteria = (
            {"numberOfNotifiedThings": self.notified_things}
            if self.notified_things is not None
            else {"numberOfSucceededThings": self.succeeded_things}
        )
        return {
            "baseRatePerMinute": self.base_rate_per_minute,
            "incrementFactor": self.increment_factor,
            "rateIncreaseCriteria": criteria,
        }


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    maximum_per_minute: int | None = None
    exponential: ExponentialRate | None = None

    @classmethod
    def from_json(cls, value: Any) -> RolloutConfig:
        o = _object(value, "jobExecutionsRolloutConfig")
        maximum = o.get("maximumPerMinute")
        exponential = o.get("exponentialRate")
        return cls(
            None if maximum is None else _int(maximum, "maximumPerMinute", 1),
            None if exponential is None else ExponentialRate.from_json(exponential),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.maximum_per_minute is not None:
            out["maximumPerMinute"] = self.maximum_per_minute
        if self.exponential is not None:
            out["exponentialRate"] = self.exponential.to_json()
        return out


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    failure_type: str
    action: str
    threshold_percentage: float
    min_executed_things: int

    def to_json(self) -> dict[str, Any]:
        return {
            "failureType": self.failure_type,
            "action": self.action,
            "thresholdPercentage": self.threshold_percentage,
            "minNumberOfExecutedThings": self.min_executed_things,
        }


@dataclass(frozen=True, slots=True)
class AbortConfig:
    criteria: tuple[AbortCriterion, ...]

    @classmethod
    def from_json(cls, value: Any) -> AbortConfig:
        items = _list(_object(value, "abortConfig").get("criteriaList"), "abortConfig", 1)
        criteria = []
        for item in items:
            o = _object(item, "abort criterion")
            failure = o.get("failureType")
            if failure not in ("FAILED", "REJECTED", "TIMED_OUT", "ALL"):
                raise invalid(f"invalid abort failureType {failure!r}")
            if o.get("action") != "CANCEL":
                raise invalid("abort action must be CANCEL")
            threshold = round(
                _number(o.get("thresholdPercentage"), "thresholdPercentage", 0, 100), 2
            )
            criteria.append(
                AbortCriterion(
                    failure,
                    "CANCEL",
                    threshold,
                    _int(o.get("minNumberOfExecutedThings"), "minNumberOfExecutedThings", 1),
                )
            )
        return cls(tuple(criteria))

    def to_json(self) -> dict[str, Any]:
        return {"criteriaList": [c.to_json() for c in self.criteria]}


_DATE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?Z?")


def parse_date_time(value: Any, name: str) -> float:
    """`YYYY-MM-DDTHH:MM` (UTC; seconds and a `Z` tolerated) -> epoch seconds."""
    match = _DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise invalid(f"{name} must be YYYY-MM-DDTHH:MM (UTC), not {value!r}")
    parts = [int(p) for p in match.groups(default="0")]
    try:
        return float(calendar.timegm((*parts, 0, 0, 0)))
    except (ValueError, OverflowError):
        raise invalid(f"{name} is not a valid date and time: {value!r}") from None


def format_date_time(value: float) -> str:
    """The form DescribeJob echoes; seconds only when there are any (the store round-trips)."""
    moment = time.gmtime(value)
    return time.strftime("%Y-%m-%dT%H:%M:%S" if moment.tm_sec else "%Y-%m-%dT%H:%M", moment)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    start_time: str
    """The cron expression as given (`cron(0 22 ? * SAT *)`)."""
    duration_minutes: int
    schedule: CronSchedule

    def to_json(self) -> dict[str, Any]:
        return {"startTime": self.start_time, "durationInMinutes": self.duration_minutes}


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    start_time: float | None = None
    end_time: float | None = None
    end_behavior: str | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> SchedulingConfig:
        o = _object(value, "schedulingConfig")
        start = o.get("startTime")
        end = o.get("endTime")
        behavior = o.get("endBehavior")
        if behavior is not None and behavior not in ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL"):
            raise invalid(f"invalid endBehavior {behavior!r}")
        windows = []
        for item in o.get("maintenanceWindows") or []:
            w = _object(item, "maintenanceWindow")
            expression = w.get("startTime")
            if not isinstance(expression, str) or not 1 <= len(expression) <= 256:
                raise invalid("maintenanceWindow.startTime must be a cron expression")
            try:
                schedule = CronSchedule.parse(expression)
            except ValueError as exc:
                raise invalid(f"maintenanceWindow.startTime: {exc}") from None
            duration = _int(
                w.get("durationInMinutes"),
                "durationInMinutes",
                MAINTENANCE_WINDOW_MIN_MINUTES,
                MAINTENANCE_WINDOW_MAX_MINUTES,
            )
            windows.append(MaintenanceWindow(expression, duration, schedule))
        return cls(
            None if start is None else parse_date_time(start, "schedulingConfig.startTime"),
            None if end is None else parse_date_time(end, "schedulingConfig.endTime"),
            behavior,
            tuple(windows),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.start_time is not None:
            out["startTime"] = format_date_time(self.start_time)
        if self.end_time is not None:
            out["endTime"] = format_date_time(self.end_time)
        if self.end_behavior is not None:
            out["endBehavior"] = self.end_behavior
        if self.maintenance_windows:
            out["maintenanceWindows"] = [w.to_json() for w in self.maintenance_windows]
        return out

    def check(self, now: float) -> None:
        """The SchedulingConfig page's bounds, against the service clock."""
        minute = 60.0
        # Times are given to the minute: a start in the minute 30 minutes from now is accepted.
        earliest = now + 29 * minute
        if self.start_time is not None and not (earliest <= self.start_time <= now + 366 * 86400):
            raise invalid("startTime must be 30 minutes to one year from now")
        if self.end_time is not None:
            begin = self.start_time if self.start_time is not None else now
            if not begin + 30 * minute <= self.end_time <= now + 2 * 366 * 86400:
                raise invalid(
                    "endTime must be at least 30 minutes after startTime (or now) and at most "
                    "two years from now"
                )

    def window_open(self, now: float) -> bool:
        """Inside one of the maintenance windows (always, when there are none)."""
        if not self.maintenance_windows:
            return True
        return any(
            w.schedule.last_at_or_before(now) is not None
            and now < (w.schedule.last_at_or_before(now) or 0.0) + w.duration_minutes * 60
            for w in self.maintenance_windows
        )

    def next_window_start(self, now: float) -> float | None:
        starts = [w.schedule.next_after(now) for w in self.maintenance_windows]
        found = [s for s in starts if s is not None]
        return min(found) if found else None

    def window_end(self, now: float) -> float | None:
        """When the window open at `now` closes (None when none is open)."""
        ends = []
        for w in self.maintenance_windows:
            start = w.schedule.last_at_or_before(now)
            if start is not None and now < start + w.duration_minutes * 60:
                ends.append(start + w.duration_minutes * 60)
        return max(ends) if ends else None
