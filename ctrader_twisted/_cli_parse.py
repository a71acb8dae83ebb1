"""Parsing of command-line values: times, durations, volumes and prices."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Final

from ._cli_errors import CliError
from ._models_units import EPOCH, to_decimal

__all__ = ["MAX_PRICE", "MAX_UNITS", "parse_decimal", "parse_duration", "parse_time"]

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
    try:
        return timedelta(**{_UNITS[match.group(2).lower()]: amount})
    except OverflowError:
        raise CliError(f"duration {text!r} is too long") from None


def parse_time(text: str, now: datetime) -> datetime:
    """Parse a point in time as an aware UTC datetime.

    Accepted: ``now``; a duration before now such as ``7d`` or ``-7d``; an ISO 8601 date or
    date-time (``2024-05-01``, ``2024-05-01T12:30``, with ``Z`` or an offset; without one it is
    UTC).  The result must not be before the Unix epoch (1970-01-01), where the protocol's
    timestamps begin.

    :raises CliError: for anything else.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    if _DURATION.match(value.lstrip("-")):
        duration = parse_duration(value.lstrip("-"))
        if duration > now - EPOCH:
            raise CliError(f"time {text!r} is before 1970-01-01")
        return now - duration
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        moment = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise CliError(
            f"bad time {text!r} (use now, 7d, 2024-05-01 or 2024-05-01T12:30Z)"
        ) from None
    if moment < EPOCH:
        raise CliError(f"time {text!r} is before 1970-01-01")
    return moment


#: The largest amount of units a wire volume (``int64``, hundredths of a unit) can carry.
MAX_UNITS: Final = Decimal(2**63 - 1).scaleb(-2)
#: The largest price a wire price (``int64``, 1/100000 of a price unit) can carry.
MAX_PRICE: Final = Decimal(2**63 - 1).scaleb(-5)


def parse_decimal(text: str, what: str, maximum: Decimal | None = None) -> Decimal:
    """Parse a positive, finite decimal number (a volume or a price).

    :param maximum: the largest value accepted (what the protocol's fields can carry).
    :raises CliError: if ``text`` is not a positive number, or is above ``maximum``.
    """
    try:
        value = to_decimal(text)
    except ValueError:
        raise CliError(f"{what} must be a number, not {text!r}") from None
    if value <= 0:
        raise CliError(f"{what} must be positive, not {text}")
    if maximum is not None and value > maximum:
        raise CliError(f"{what} must be at most {maximum:f}, not {text}")
    return value
