"""Durations and times as operators write them (30s, 15m, 6h, 7d, 2w, 1d12h; ISO 8601), and times as reports
show them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from statectl.errors import UsageError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str, what: str = "duration") -> timedelta:
    cleaned = text.strip().lower()
    parts = _PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(f"{what} {text!r} is not a duration like 30m, 6h, 7d or 1d12h")
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_UNITS[unit]: int(number)})
    if total <= timedelta(0):
        raise UsageError(f"{what} must be longer than zero")
    return total


def parse_timestamp(text: str, what: str = "--at") -> datetime:
    """An ISO 8601 time (2026-12-01T00:00:00Z, an offset like +02:00, or a date); without an offset, UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an ISO 8601 time like 2026-12-01T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """A timestamp as reports show it (ISO 8601), None as None."""
    return value.isoformat() if value else None
