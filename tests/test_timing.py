"""Cron, interval and once arithmetic, in the schedule's zone, across daylight saving."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from tasks_app.timing import Cron, Interval, InvalidSchedule, Once, describe, validate_cron

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


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        # croniter reads a backwards range as a wrap-around (5-1: nearly every minute); cron refuses it.
        ("5-1 * * * *", "minute field: range 5-1 runs backwards (5 > 1); to wrap around, list two ranges"),
        ("0 22-2 * * *", "hour field: range 22-2 runs backwards (22 > 2); to wrap around, list two ranges"),
        ("0 0 20-10 * *", "day of month field: range 20-10 runs backwards (20 > 10)"),
        ("0 0 1 nov-feb *", "month field: range nov-feb runs backwards (11 > 2)"),
        ("0 0 * * 5-1", "day of week field: range 5-1 runs backwards (5 > 1)"),
        ("0 0 * * fri-mon", "day of week field: range fri-mon runs backwards (5 > 1)"),
        ("30-10 * * * * *", "seconds field: range 30-10 runs backwards (30 > 10)"),
        # ... and a range from a value to itself as every value.
        ("5-5 * * * *", "minute field: range 5-5 starts and ends at 5: write 5 alone"),
        ("0 0 * * sun-sun", "day of week field: range sun-sun starts and ends at 0: write sun alone"),
        ("61 * * * *", "minute field: 61 is out of range 0-59"),
        ("0 25 * * *", "hour field: 25 is out of range 0-23"),
        ("0 0 0 * *", "day of month field: 0 is out of range 1-31"),
        ("0 0 32 * *", "day of month field: 32 is out of range 1-31"),
        ("0 0 1 13 *", "month field: 13 is out of range 1-12 or jan-dec"),
        ("0 0 * * 8", "day of week field: 8 is out of range 0-7 or sun-sat"),
        ("60 * * * * *", "seconds field: 60 is out of range 0-59"),
        ("0 0-30/2,40-31 * * *", "hour field: 30 is out of range 0-23"),
        ("*/0 * * * *", "minute field: step 0 in '*/0' is out of range 1-59"),
        ("0-30/0 * * * * *", "seconds field: step 0 in '0-30/0' is out of range 1-59"),
        ("*/61 * * * *", "minute field: step 61 in '*/61' is out of range 1-59"),
        ("* * * * mon-sun/99999", "day of week field: step 99999 in 'mon-sun/99999' is out of range 1-6"),
        ("*/x * * * *", "minute field: step 'x' in '*/x' is not a number"),
        ("0 0 1 jab *", "month field: unknown name 'jab' (use 1-12 or jan-dec)"),
        ("0 0 * * monday", "day of week field: unknown name 'monday' (use 0-7 or sun-sat)"),
        ("0 0 * * 5#6", "day of week field: week 6 in '5#6' is out of range 1-5"),
        ("a * * * *", "minute field: 'a' is not a number (0-59)"),
        ("1,,2 * * * *", "minute field: empty item in the list '1,,2'"),
        ("1-2-3 * * * *", "minute field: '1-2-3' is not a value, a range (a-b), a step (*/n, a-b/n) or a"),
        ("? * * * *", "minute field: '?' is not a value"),
        ("*-5 * * * *", "minute field: '*-5': * stands for every value and cannot start a range"),
        ("0 0 1W,15 * *", "day of month field: '1W,15' cannot be read"),
        ("* * *", "a cron expression has 5 fields (minute hour day month weekday), 6 with a leading seconds"),
        ("* * * * * * *", "got 7 field(s)"),
        ("not a cron at all", "minute field: 'not' is not a number (0-59)"),
        ("@fortnightly", "or is one of @annually"),
    ],
)  # fmt: skip
def test_an_invalid_cron_is_refused_saying_which_field_and_why(expression, says) -> None:
    with pytest.raises(InvalidSchedule) as refused:
        validate_cron(expression)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("expression", "hint"),
    [
        ("5-1 * * * *", "5-59,0-1"),
        ("0 22-2 * * *", "22-23,0-2"),
        ("0 0 20-10 * *", "20-31,1-10"),
        ("0 0 1 nov-feb *", "11-12,1-2"),
        ("0 0 * * 5-1", "5-6,0-1"),  # 7 is Sunday again
        ("0 0 * * 7-1", ""),  # no hint from Sunday written as 7
        ("59-0 * * * * *", "59,0"),
    ],
)
def test_a_backwards_range_is_shown_how_to_wrap_around(expression, hint) -> None:
    with pytest.raises(InvalidSchedule) as refused:
        validate_cron(expression)
    message = str(refused.value)
    assert message.endswith(f"list two ranges: {hint}") if hint else "wrap" not in message


@pytest.mark.parametrize(
    "expression",
    ["0 9 * * 1-5", "0 9 * * mon-fri", "0 0 * * mon-sun", "0 0 * * sat-sun", "0 0 * * 5-7", "0 0 * * 0,7",
     "0 0 1 jan-mar *", "*/59 * * * *", "5/10 * * * *", "0 0 L * *", "0 0 15W * *", "0 0 * * mon#2",
     "0 0 * * L5", "0 0 ? * 1", "*/10 * * * * *", "@weekly"],
)  # fmt: skip
def test_the_cron_forms_users_write_are_accepted(expression) -> None:
    validate_cron(expression, now=utc(2026, 3, 2))  # no InvalidSchedule


def test_a_stored_backwards_range_keeps_firing_as_before_until_an_edit_mends_it() -> None:
    # The refusal is at input (validate_cron): beat does not stop a schedule stored earlier.
    assert fires("0 22-2 * * *", "UTC", utc(2026, 3, 2, 21), 3) == [
        "2026-03-02T22:00:00+00:00",
        "2026-03-02T23:00:00+00:00",
        "2026-03-03T00:00:00+00:00",
    ]


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        Cron("* * * * *", "Mars/Olympus")


def test_description_in_words() -> None:
    assert describe("30 2 * * 1-5") == "At 02:30, Monday through Friday"
    assert describe("@hourly") == "Every hour"
    assert describe("*/20 * * * * *") == "Every 20 seconds"
