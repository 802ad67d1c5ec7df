"""Wall-clock time as mailer records it: aware UTC datetimes, and the ISO 8601 text (milliseconds, `Z`) they are
stored and compared as. Owns no clock of its own to share: callers pass `utcnow` (or a fake) where time matters.

Pure helpers; no I/O beyond reading the system clock in `utcnow`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime | None = None) -> str:
    """The stored form of a time: `2026-12-01T17:22:37.123Z`; sorts as the times do."""
    return (moment or utcnow()).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
