"""Cron, interval and once arithmetic, in the schedule's zone, across daylight saving."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from tasks_app.timing import Cron, Interval, InvalidSchedule, Once, describe

UTC = dt.UTC


def fires(expression: str, zone: str, after: dt.datetime, count: int) -> list[str]:
    cron, out, current = Cron(expression, zone), [], after
    for _ in range(count):
        current = cron.next_after(current)
        out.append(current.astimezone(cron.tz).isoformat())
    return out


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_five_fields_fire_at_minute_precision() -> None:
    assert fires("*/15 9 * * 1-5", "UTC", utc(2026, 3, 6, 9, 20), 3) == [
        "2026-03-06T09:30:00+00:00",
        "2026-03-06T09:45:00+00:00",
        "2026-03-09T09:00:00+00:00",  # Friday, then Monday
    ]


def test_six_fields_lead_with_seconds() -> None:
    assert fires("*/20 * * * * *", "Asia/Shanghai", utc(2026, 3, 6, 9, 0, 5), 3) == [
        "2026-03-06T17:00:20+08:00",
        "2026-03-06T17:00:40+08:00",
        "2026-03-06T17:01:00+08:00",
    ]


@pytest.mark.parametrize(
    ("macro", "first"),
    [
        ("@hourly", "2026-03-06T10:00:00+00:00"),
        ("@daily", "2026-03-07T00:00:00+00:00"),
        ("@weekly", "2026-03-08T00:00:00+00:00"),
        ("@monthly", "2026-04-01T00:00:00+00:00"),
        ("@yearly", "2027-01-01T00:00:00+00:00"),
    ],
)
def test_macros(macro, first) -> None:
    assert fires(macro, "UTC", utc(2026, 3, 6, 9, 30), 1) == [first]


def test_shanghai_has_no_daylight_saving() -> None:
    # 02:00 local is 18:00 UTC the day before, every day of the year.
    assert fires("0 2 * * *", "Asia/Shanghai", utc(2026, 3, 27), 3) == [
        "2026-03-28T02:00:00+08:00",
        "2026-03-29T02:00:00+08:00",
        "2026-03-30T02:00:00+08:00",
    ]
    assert fires("0 2 * * *", "Asia/Shanghai", utc(2026, 10, 24), 2) == [
        "2026-10-25T02:00:00+08:00",
        "2026-10-26T02:00:00+08:00",
    ]


@pytest.mark.parametrize(
    ("zone", "after", "expected"),
    [
        # Spring forward: 02:30 does not exist that day -> once, when the clocks jump.
        (
            "Europe/Berlin",
            utc(2026, 3, 27, 12),
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        ("America/New_York", utc(2026, 3, 7, 12), ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
        # Fall back: 02:30 (Berlin) / 01:30 (New York) occurs twice -> once, the first time.
        ("Europe/Berlin", utc(2026, 10, 24, 12), ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ],
)  # fmt: skip
def test_daily_wall_time_across_daylight_saving_fires_once(zone, after, expected) -> None:
    assert fires("30 2 * * *", zone, after, len(expected)) == expected


def test_new_york_repeated_hour_fires_once() -> None:
    assert fires("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


@pytest.mark.parametrize(
    ("zone", "after", "expected_utc"),
    [
        (
            "Europe/Berlin",
            utc(2026, 3, 28, 23, 30),
            ["00:00", "01:00", "02:00"],
        ),  # 01:00 CET, 03:00 CEST, ...
        ("Europe/Berlin", utc(2026, 10, 24, 22, 30), ["23:00", "00:00", "01:00", "02:00"]),  # 02:00 twice
        ("America/New_York", utc(2026, 11, 1, 3, 30), ["04:00", "05:00", "06:00", "07:00"]),  # 01:00 twice
    ],
)
def test_hourly_keeps_its_spacing_in_real_time(zone, after, expected_utc) -> None:
    cron, current, got = Cron("0 * * * *", zone), after, []
    for _ in expected_utc:
        current = cron.next_after(current)
        got.append(current.strftime("%H:%M"))
    assert got == expected_utc


def test_interval_keeps_real_time_spacing_across_daylight_saving() -> None:
    interval = Interval(3600, utc(2026, 10, 24, 22, 0))
    fires_ = interval.between(utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 3, 30), 10)
    assert [f.strftime("%H:%M") for f in fires_] == ["00:00", "01:00", "02:00", "03:00"]
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(fires_))


def test_interval_before_its_anchor_fires_at_the_anchor() -> None:
    anchor = utc(2026, 1, 1, 12)
    assert Interval(60, anchor).next_after(utc(2026, 1, 1)) == anchor
    assert Interval(60, anchor).next_after(anchor) == anchor + dt.timedelta(minutes=1)


def test_once_fires_once() -> None:
    at = utc(2026, 5, 1, 8)
    assert Once(at).next_after(utc(2026, 1, 1)) == at
    assert Once(at).next_after(at) is None


@pytest.mark.parametrize(
    "expression",
    ["", "* * * *", "* * * * * * *", "61 * * * *", "* 25 * * *", "@fortnightly", "not a cron", "*/0 * * * *"],
)
def test_invalid_expressions_are_refused(expression) -> None:
    with pytest.raises(InvalidSchedule):
        Cron(expression)


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        Cron("* * * * *", "Mars/Olympus")


def test_description_in_words() -> None:
    assert describe("30 2 * * 1-5") == "At 02:30, Monday through Friday"
    assert describe("@hourly") == "Every hour"
    assert describe("*/20 * * * * *") == "Every 20 seconds"
