"""Parsing of command-line values: times, durations, volumes and prices."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Final

from ._cli_errors import CliError
from ._models_units import to_decimal

__all__ = ["parse_decimal", "parse_duration", "parse_time"]

_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"4h"``, ``"7d"`` or ``"2w"``.

    :raises CliError: for anything else.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise CliError(f"bad duration {text!r} (use e.g. 30m, 4h, 7d, 2w)")
    amount = float(match.group(1))
    return timedelta(**{_UNITS[match.group(2).lower()]: amount})


def parse_time(text: str, now: datetime) -> datetime:
    """Parse a point in time as an aware UTC datetime.

    Accepted: ``now``; a duration before now such as ``7d`` or ``-7d``; an ISO 8601 date or
    date-time (``2024-05-01``, ``2024-05-01T12:30``, with ``Z`` or an offset; without one it is
    UTC).

    :raises CliError: for anything else.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    if _DURATION.match(value.lstrip("-")):
        return now - parse_duration(value.lstrip("-"))
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(
            f"bad time {text!r} (use now, 7d, 2024-05-01 or 2024-05-01T12:30Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def parse_decimal(text: str, what: str) -> Decimal:
    """Parse a positive decimal number (a volume or a price).

    :raises CliError: if ``text`` is not a positive number.
    """
    try:
        value = to_decimal(text)
    except ValueError:
        raise CliError(f"{what} must be a number, not {text!r}") from None
    if value <= 0:
        raise CliError(f"{what} must be positive, not {text}")
    return value
