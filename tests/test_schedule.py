"""--at and --tz: local times, offsets, now, the past, and the hours that DST skips or repeats."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailer.errors import UsageError
from mailer.schedule import describe, parse_send_at, timezone

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # 16:00 in Shanghai
SHANGHAI = timezone("Asia/Shanghai")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-05 09:00", datetime(2026, 12, 5, 1, 0, tzinfo=UTC)),  # Shanghai is UTC+8
        ("2026-12-05T09:00:30", datetime(2026, 12, 5, 1, 0, 30, tzinfo=UTC)),
        ("2026-12-05T09:00+01:00", datetime(2026, 12, 5, 8, 0, tzinfo=UTC)),  # an offset wins over --tz
        ("2026-12-05 09:00Z", datetime(2026, 12, 5, 9, 0, tzinfo=UTC)),
        ("  2026-12-05   09:00 ", datetime(2026, 12, 5, 1, 0, tzinfo=UTC)),
        ("now", NOW),
        ("NOW", NOW),
    ],
)
def test_times(text: str, expected: datetime) -> None:
    assert parse_send_at(text, SHANGHAI, NOW) == expected


def test_a_time_in_the_past_is_refused_unless_now() -> None:
    past = r"in the past \(2026-12-01 15:00 Asia/Shanghai \(2026-12-01 07:00 UTC\)\).*--at now"
    with pytest.raises(UsageError, match=past):
        parse_send_at("2026-12-01 15:00", SHANGHAI, NOW)
    assert parse_send_at("2026-12-01 15:59:30", SHANGHAI, NOW)  # within a minute: the command took a moment


@pytest.mark.parametrize(
    "text",
    [
        "tomorrow",
        "2026-12-05",
        "09:00",
        "2026-13-05 09:00",
        "2026-12-05 25:00",
        "2026-12-05T09:00+25:00",  # Python's own words named timedelta(hours=24)
        "2026-12-05T09:00-24:00",
        "2026-12-05T09:00+08:60",
        "9999-12-31T23:59-05:00",  # the year 10000 in UTC: OverflowError
    ],
)
def test_unreadable_times_are_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_send_at(text, SHANGHAI, NOW)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"--at {text!r}")
    assert "timedelta" not in str(caught.value)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Shanghai", "UTC"])
def test_the_last_days_the_calendar_holds_are_one_usage_error_where_they_overflow(zone: str) -> None:
    for text in ("9999-12-31 23:59", "9999-12-31T23:59-12:00"):
        try:
            moment = parse_send_at(text, timezone(zone), NOW)
        except UsageError as exc:
            assert "beyond the last date" in str(exc) and "\n" not in str(exc)
        else:
            assert describe(moment, timezone(zone))  # what it accepts it can also show


def test_daylight_saving_gaps_and_overlaps_are_refused() -> None:
    berlin = timezone("Europe/Berlin")
    spring = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="does not exist in Europe/Berlin"):
        parse_send_at("2026-03-29 02:30", berlin, spring)  # clocks go 02:00 -> 03:00
    with pytest.raises(UsageError, match=r"happens twice.*2026-10-25 02:30\+02:00"):
        parse_send_at("2026-10-25 02:30", berlin, spring)  # clocks go 03:00 -> 02:00
    assert parse_send_at("2026-10-25 02:30+01:00", berlin, spring) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_timezones() -> None:
    assert timezone("utc") is UTC
    with pytest.raises(UsageError, match="unknown timezone 'Asia/Shanghia'"):
        timezone("Asia/Shanghia")
    with pytest.raises(UsageError):
        timezone("../../etc/passwd")
    assert describe(datetime(2026, 12, 5, 1, tzinfo=UTC), UTC) == "2026-12-05 01:00 UTC"
