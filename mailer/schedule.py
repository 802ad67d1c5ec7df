"""When a scheduled send goes: `--at` text and a timezone in, one UTC instant out.

Pure: the current time is passed in, the timezone database is the system's (zoneinfo). Never reads a clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.errors import UsageError

# "2026-12-05 09:00", "2026-12-05T09:00:30", with an optional offset or Z (ISO 8601 as Python reads it).
_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?")
_WITH_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:?\d{2})")
GRACE = timedelta(minutes=1)  # a time typed for "now-ish" that passed while the command started is not an error


def timezone(name: str) -> tzinfo:
    """An IANA zone (Asia/Shanghai), or UTC; a misspelt one is a usage error naming it."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"unknown timezone {name!r}: use an IANA name such as Asia/Shanghai or Europe/Berlin, or UTC"
        ) from None


def parse_send_at(text: str, zone: tzinfo, now: datetime) -> datetime:
    """The UTC instant of `--at TEXT`: ISO 8601 with an offset as written, a local time in `zone`, or `now`.

    A time in the past (beyond a minute's grace) is an error: a send meant for 09:00 typed at 10:00 must not go
    out at once by surprise; `--at now` says that on purpose."""
    value = " ".join(text.split())
    if value.lower() == "now":
        return now.astimezone(UTC)
    try:
        if offset := _WITH_OFFSET.fullmatch(value):
            _check_offset(offset.group(2), text)
            moment = _fromiso(value.replace("Z", "+00:00"), text)
        elif _LOCAL.fullmatch(value):
            moment = _in_zone(_fromiso(value, text), zone, text)
        else:
            raise UsageError(
                f"--at {text!r}: write a time as YYYY-MM-DD HH:MM (in --tz), ISO 8601 with an offset "
                "(2026-12-05T09:00+08:00), or now"
            )
        moment = moment.astimezone(UTC)
        moment.astimezone(zone)  # what describe() shows the editor must exist too
    except OverflowError:  # 9999-12-31 23:59 in New York is in the year 10000 in UTC
        raise UsageError(f"--at {text!r} is beyond the last date mailer can keep (9999-12-31 UTC)") from None
    if moment < now - GRACE:
        raise UsageError(
            f"--at {text!r} is in the past ({describe(moment, zone)}); give a later time, or --at now to send at once"
        )
    return moment


def _check_offset(offset: str, text: str) -> None:
    """Real offsets run from -12:00 to +14:00; Python takes anything under 24 hours, and says so in its own terms."""
    if offset == "Z":
        return
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours >= 24 or minutes >= 60:
        raise UsageError(
            f"--at {text!r}: {offset} is not a time zone offset (under 24 hours; real ones run from -12:00 to +14:00)"
        )


def _fromiso(value: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: {exc}") from None


def _in_zone(naive: datetime, zone: tzinfo, text: str) -> datetime:
    """A wall-clock time in `zone`; one the zone skips (a DST gap) or repeats (an overlap) is refused rather than
    guessed, because an hour's error in a newsletter's send time is the kind people notice."""
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        gap = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
        if gap:
            raise UsageError(f"--at {text!r} does not exist in {zone} (the clocks skip it); pick another time")
        raise UsageError(
            f"--at {text!r} happens twice in {zone} (the clocks go back); add the offset, e.g. "
            f"{naive.isoformat(sep=' ', timespec='minutes')}{_offset(first)}"
        )
    return first


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset() or timedelta()
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def describe(moment: datetime, zone: tzinfo) -> str:
    """`2026-12-05 09:00 Asia/Shanghai (01:00 UTC)`: what an editor reads back when scheduling."""
    local = moment.astimezone(zone)
    utc = moment.astimezone(UTC)
    if zone is UTC:
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    return f"{local:%Y-%m-%d %H:%M} {zone} ({utc:%Y-%m-%d %H:%M} UTC)"
