"""Durations as operators write them (30s, 15m, 6h, 7d, 2w, 1d12h), and times as reports show them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

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


def iso(value: datetime | None) -> str | None:
    """A timestamp as reports show it (ISO 8601), None as None."""
    return value.isoformat() if value else None
