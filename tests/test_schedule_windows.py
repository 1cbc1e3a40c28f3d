"""Maintenance windows on the device (`jobs_agent.schedule`): AWS cron starts read in a time
zone, durations in elapsed time, the days of a daylight saving transition, the union of the
device's windows and the intersection with a job's own.

Pure functions of `now`: the instants are built with zoneinfo, so each expectation is stated
as the wall clock an operator would read."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs_agent.schedule import windows as windows_module
from jobs_agent.schedule.cron import CronSchedule
from jobs_agent.schedule.windows import (
    Intersection,
    MaintenanceWindow,
    WindowError,
    Windows,
    describe,
    document_windows,
    window_from_document,
    windows_from_config,
)
from tests.hypothesis_profiles import examples

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
MINUTE = 60.0
HOUR = 3600.0


def at(zone: dt.tzinfo, *fields: int, fold: int = 0) -> float:
    return dt.datetime(*fields, tzinfo=zone, fold=fold).timestamp()  # type: ignore[arg-type,misc]


def utc(*fields: int) -> float:
    return at(dt.UTC, *fields)


def window(start: str, minutes: int, zone: str = "UTC") -> Windows:
    return Windows([MaintenanceWindow.create(start, minutes, zone)])


# -- the expression and the spec ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (("0 2 * * 1", 60), "has the 5 fields of a crontab"),
        (("cron(0 2 * * 1 *)", 60), "exactly one of day-of-month and day-of-week must be ?"),
        (("cron(0 2 L * ? *)", 60), "L, W and # are not supported"),
        (("cron(0 25 ? * * *)", 60), "hours value '25' is out of 0-23"),
        (("cron(0 2 ? * * *)", 0), "durationInMinutes: expected an integer from 1 to 1430"),
        (("cron(0 2 ? * * *)", 1431), "durationInMinutes: expected an integer from 1 to 1430"),
        (("cron(0 2 ? * * *)", True), "durationInMinutes: expected an integer"),
        (("cron(0 2 ? * * *)", 60, "Mars/Olympus"), "timeZone: unknown time zone 'Mars/Olympus'"),
        ((42, 60), "startTime: expected an AWS cron expression"),
    ],
)
def test_a_bad_window_is_refused_naming_the_key(spec: tuple[Any, ...], message: str) -> None:
    with pytest.raises(WindowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MaintenanceWindow.create(*spec)


def test_crontab_form_is_refused_with_the_aws_form_and_the_day_of_week_trap() -> None:
    """A crontab's `1` is Monday, AWS's is Sunday: a five-field expression is not guessed at."""
    with pytest.raises(ValueError) as caught:
        CronSchedule.parse("30 2 * * 1")
    assert "cron(minutes hours day-of-month month day-of-week year)" in str(caught.value)
    assert "day-of-week 1 is Sunday" in str(caught.value)


def test_config_and_document_windows_name_their_own_keys() -> None:
    with pytest.raises(WindowError, match=r"jobs.maintenance_windows\[1\].duration_minutes"):
        windows_from_config(
            [
                {"start_time": "cron(0 2 ? * * *)", "duration_minutes": 60},
                {"start_time": "cron(0 3 ? * * *)", "duration_minutes": 0},
            ]
        )
    with pytest.raises(WindowError, match=r"jobs.maintenance_windows\[0\].start: unknown key"):
        windows_from_config([{"start": "cron(0 2 ? * * *)", "duration_minutes": 60}])
    with pytest.raises(WindowError, match=r"maintenanceWindow.durationInMinutes: required"):
        window_from_document({"startTime": "cron(0 2 ? * * *)"})
    document = {
        "version": "1.0",
        "steps": [
            {"action": {"name": "a", "type": "runCommand", "input": {"command": "true"}}},
            {
                "action": {
                    "name": "b",
                    "type": "runCommand",
                    "input": {"command": "true"},
                    "maintenanceWindow": {"startTime": "cron(0 2 ? * * *)", "timeZone": 5},
                }
            },
        ],
    }
    with pytest.raises(WindowError) as caught:
        document_windows(document)
    assert str(caught.value).startswith("steps[1].action.maintenanceWindow.durationInMinutes")


def test_document_windows_for_the_job_and_a_step() -> None:
    document = {
        "maintenanceWindow": {
            "startTime": "cron(0 1 ? * * *)",
            "durationInMinutes": 240,
            "timeZone": "Europe/Berlin",
        },
        "steps": [
            {"action": {"name": "a"}},
            {"action": {"name": "b", "maintenanceWindow": {
                "startTime": "cron(0 3 ? * * *)", "durationInMinutes": 30,
                "timeZone": "Europe/Berlin"}}},
        ],
    }  # fmt: skip
    found = document_windows(document)
    assert found.job is not None and found.job.to_json() == document["maintenanceWindow"]
    assert set(found.steps) == {1}
    device = Windows()
    night = at(BERLIN, 2025, 6, 2, 2, 0)
    assert found.for_step(device, 0).is_open(night)
    assert not found.for_step(device, 1).is_open(night)  # the step's own window is 03:00-03:30
    assert found.for_step(device, 1).opens_at(night) == at(BERLIN, 2025, 6, 2, 3, 0)
    assert document_windows({"operation": "x"}).for_step(device).is_open(night)


# -- plain days ----------------------------------------------------------------------------------
def test_inside_a_window_until_its_end_then_the_next_start() -> None:
    nightly = window("cron(0 2 ? * * *)", 60)
    assert not nightly.is_open(utc(2025, 6, 2, 1, 59))
    assert nightly.is_open(utc(2025, 6, 2, 2, 0))
    assert nightly.closes_at(utc(2025, 6, 2, 2, 30)) == utc(2025, 6, 2, 3, 0)
    assert not nightly.is_open(utc(2025, 6, 2, 3, 0))  # the end is outside
    assert nightly.closes_at(utc(2025, 6, 2, 3, 0)) is None
    assert nightly.opens_at(utc(2025, 6, 2, 3, 0)) == utc(2025, 6, 3, 2, 0)
    assert nightly.next_opening(utc(2025, 6, 2, 2, 30)) == utc(2025, 6, 3, 2, 0)
    assert nightly.next_opening(utc(2025, 6, 2, 1, 0)) == utc(2025, 6, 2, 2, 0)


def test_a_step_that_would_outlast_the_window() -> None:
    nightly = window("cron(0 2 ? * * *)", 60)
    half_past = utc(2025, 6, 2, 2, 30)
    assert not nightly.outlasts(half_past, 30 * MINUTE)  # ends exactly at the close: fits
    assert nightly.outlasts(half_past, 31 * MINUTE)
    assert nightly.outlasts(utc(2025, 6, 2, 4, 0), 1.0)  # closed now
    assert nightly.next_fit(half_past, 31 * MINUTE) == utc(2025, 6, 3, 2, 0)
    assert nightly.next_fit(half_past, 61 * MINUTE) is None  # no opening is that long


def test_day_of_week_is_aws_sunday_one_read_in_the_zone() -> None:
    """Saturday 22:00 in Berlin is Saturday 20:00 UTC in summer: the day is the zone's."""
    saturday = window("cron(0 22 ? * SAT *)", 120, "Europe/Berlin")
    friday_noon = at(BERLIN, 2025, 6, 6, 12, 0)
    assert saturday.opens_at(friday_noon) == at(BERLIN, 2025, 6, 7, 22, 0)
    assert saturday.is_open(at(BERLIN, 2025, 6, 7, 23, 59))
    assert saturday.closes_at(at(BERLIN, 2025, 6, 7, 23, 0)) == at(BERLIN, 2025, 6, 8, 0, 0)
    sunday = window("cron(0 22 ? * 1 *)", 60, "Europe/Berlin")
    assert sunday.opens_at(friday_noon) == at(BERLIN, 2025, 6, 8, 22, 0)


def test_a_window_across_midnight_is_open_after_midnight() -> None:
    late = window("cron(0 23 ? * * *)", 180, "America/New_York")
    assert late.is_open(at(NEW_YORK, 2025, 6, 3, 1, 30))
    assert late.closes_at(at(NEW_YORK, 2025, 6, 3, 1, 30)) == at(NEW_YORK, 2025, 6, 3, 2, 0)


# -- daylight saving time ------------------------------------------------------------------------
def test_spring_forward_a_skipped_start_opens_an_hour_later_for_its_whole_duration() -> None:
    """Europe/Berlin, 2025-03-30: the clock jumps from 02:00 to 03:00, so 02:30 never shows.
    The window opens at 03:30 CEST (where 02:30 would have been) and lasts its 60 minutes."""
    nightly = window("cron(30 2 ? * * *)", 60, "Europe/Berlin")
    assert nightly.opens_at(at(BERLIN, 2025, 3, 29, 12, 0)) == at(BERLIN, 2025, 3, 30, 3, 30)
    assert at(BERLIN, 2025, 3, 30, 3, 30) == utc(2025, 3, 30, 1, 30)
    assert not nightly.is_open(at(BERLIN, 2025, 3, 30, 3, 15))
    assert nightly.closes_at(at(BERLIN, 2025, 3, 30, 4, 0)) == at(BERLIN, 2025, 3, 30, 4, 30)
    # the days around it open at 02:30 on the wall clock
    assert nightly.opens_at(at(BERLIN, 2025, 3, 28, 12, 0)) == at(BERLIN, 2025, 3, 29, 2, 30)
    assert nightly.opens_at(at(BERLIN, 2025, 3, 30, 12, 0)) == at(BERLIN, 2025, 3, 31, 2, 30)


def test_spring_forward_a_window_spanning_the_jump_lasts_its_elapsed_duration() -> None:
    """01:00 for 180 minutes on the spring-forward day ends at 05:00 CEST: three real hours,
    not at 04:00 on the wall clock."""
    night = window("cron(0 1 ? * * *)", 180, "Europe/Berlin")
    inside = at(BERLIN, 2025, 3, 30, 1, 30)
    assert night.closes_at(inside) == at(BERLIN, 2025, 3, 30, 5, 0)
    assert night.closes_at(inside) - at(BERLIN, 2025, 3, 30, 1, 0) == 3 * HOUR  # type: ignore[operator]
    assert not night.outlasts(inside, 3 * HOUR - 30 * MINUTE)


def test_autumn_an_ambiguous_start_opens_once_at_its_first_occurrence() -> None:
    """Europe/Berlin, 2025-10-26: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice.
    The window opens at the first 02:30 (CEST, 00:30 UTC), closes after 60 real minutes (at the
    second 02:30), and does not open again at the second 02:30."""
    nightly = window("cron(30 2 ? * * *)", 60, "Europe/Berlin")
    first = at(BERLIN, 2025, 10, 26, 2, 30, fold=0)
    second = at(BERLIN, 2025, 10, 26, 2, 30, fold=1)
    assert (first, second) == (utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 1, 30))
    assert nightly.opens_at(at(BERLIN, 2025, 10, 25, 12, 0)) == first
    assert nightly.closes_at(first + MINUTE) == second
    assert not nightly.is_open(second + 15 * MINUTE)
    assert nightly.opens_at(second) == at(BERLIN, 2025, 10, 27, 2, 30)
    assert nightly.opens_at(second) == utc(2025, 10, 27, 1, 30)


def test_autumn_a_window_spanning_the_repeated_hour_lasts_its_elapsed_duration() -> None:
    night = window("cron(0 1 ? * * *)", 180, "Europe/Berlin")
    # 01:00 CEST + 3 h = 03:00 CET on the wall clock (the hour 02:00-03:00 came twice)
    assert night.closes_at(at(BERLIN, 2025, 10, 26, 1, 30)) == at(BERLIN, 2025, 10, 26, 3, 0)


# -- several windows -----------------------------------------------------------------------------
def test_touching_and_overlapping_openings_form_one_period() -> None:
    both = Windows(
        [
            MaintenanceWindow.create("cron(0 2 ? * * *)", 60, "UTC"),
            MaintenanceWindow.create("cron(0 3 ? * * *)", 90, "UTC"),
        ]
    )
    assert both.closes_at(utc(2025, 6, 2, 2, 30)) == utc(2025, 6, 2, 4, 30)
    assert not both.outlasts(utc(2025, 6, 2, 2, 0), 150 * MINUTE)
    hourly = window("cron(0 * ? * * *)", 90)  # always open: the period reaches the horizon
    end = hourly.closes_at(utc(2025, 6, 2, 2, 30))
    assert end is not None and end - utc(2025, 6, 2, 2, 30) > windows_module.CHAIN_HORIZON
    assert hourly.next_opening(utc(2025, 6, 2, 2, 30)) is not None


def test_no_window_is_always_open() -> None:
    always = Windows()
    now = utc(2025, 6, 2, 2, 30)
    assert always.is_open(now) and always.closes_at(now) == math.inf
    assert always.next_opening(now) is None
    assert not always.outlasts(now, 7 * 86400)
    assert describe(always, now, dt.UTC) == "open (no maintenance windows)"


def test_a_job_window_narrows_the_device_windows() -> None:
    """Device open 01:00-05:00, the job asks for 04:00-06:00 (Berlin): it may run 04:00-05:00."""
    device = window("cron(0 1 ? * * *)", 240, "Europe/Berlin")
    job = window("cron(0 4 ? * * *)", 120, "Europe/Berlin")
    both = Intersection([device, job])
    midnight = at(BERLIN, 2025, 6, 2, 0, 0)
    assert both.opens_at(midnight) == at(BERLIN, 2025, 6, 2, 4, 0)
    assert both.closes_at(at(BERLIN, 2025, 6, 2, 4, 30)) == at(BERLIN, 2025, 6, 2, 5, 0)
    assert not both.is_open(at(BERLIN, 2025, 6, 2, 5, 30))
    assert both.next_opening(at(BERLIN, 2025, 6, 2, 4, 30)) == at(BERLIN, 2025, 6, 3, 4, 0)
    assert both.next_fit(midnight, 30 * MINUTE) == at(BERLIN, 2025, 6, 2, 4, 0)
    # 90 minutes fit only once a year: on the spring-forward day the device's 240 elapsed
    # minutes from 01:00 CET end at 06:00 CEST, so the overlap is 04:00-06:00
    assert both.next_fit(midnight, 90 * MINUTE) == at(BERLIN, 2026, 3, 29, 4, 0)
    assert both.next_fit(midnight, 150 * MINUTE) is None
    assert describe(both, midnight, BERLIN) == "closed; next window opens 2025-06-02 04:00 CEST"
    assert (
        describe(both, at(BERLIN, 2025, 6, 2, 4, 10), BERLIN) == "open until 2025-06-02 05:00 CEST"
    )


def test_local_time_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    windows_module.local_zone.cache_clear()
    try:
        local = MaintenanceWindow.create("cron(0 2 ? * * *)", 60, "local")
        tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
        assert Windows([local]).opens_at(at(tokyo, 2025, 6, 2, 0, 0)) == at(tokyo, 2025, 6, 2, 2, 0)
    finally:
        windows_module.local_zone.cache_clear()


# -- properties ----------------------------------------------------------------------------------
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


@st.composite
def window_sets(draw: st.DrawFn) -> Windows:
    count = draw(st.integers(1, 3))
    found = []
    for _ in range(count):
        minute = draw(st.sampled_from(["0", "30", "*/20", "15,45"]))
        hour = draw(st.sampled_from(["1", "2", "3", "22", "*/6", "1-3"]))
        days = draw(st.sampled_from(["? * * *", "? * SUN *", "? * 2-6 *", "1,15 * ? *"]))
        duration = draw(st.integers(1, 1430))
        zone = draw(st.sampled_from(ZONES))
        found.append(MaintenanceWindow.create(f"cron({minute} {hour} {days})", duration, zone))
    return Windows(found)


@settings(max_examples=examples(0.2), derandomize=True)
@given(
    windows=window_sets(),
    now=st.integers(int(utc(2025, 1, 1, 0, 0)), int(utc(2026, 12, 31, 0, 0))).map(float),
)
def test_opening_and_closing_instants_are_exact(windows: Windows, now: float) -> None:
    """Whatever the windows and zones: `opens_at` is the first open instant (the second before
    it is closed), and `closes_at` the first closed one (the second before it is open)."""
    if windows.is_open(now):
        end = windows.closes_at(now)
        assert end is not None and end > now
        if end - now <= windows_module.CHAIN_HORIZON:
            assert not windows.is_open(end)
            assert windows.is_open(end - 1)
    else:
        assert windows.closes_at(now) is None
        start = windows.opens_at(now)
        assert start is not None and start > now
        assert windows.is_open(start)
        assert not windows.is_open(start - 1)
