"""Rows the recorder stores, and how trendbar periods map to time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final, Literal

from ctrader_twisted import messages as m

__all__ = [
    "PERIOD_MINUTES",
    "PERIOD_NAMES",
    "BarRow",
    "DepthChange",
    "DepthRow",
    "SpotRow",
    "bar_close_minute",
    "bar_from_trendbar",
    "period_from_name",
]

#: Fixed-length periods (``ProtoOATrendbarPeriod`` value -> minutes).  MN1 (14) is calendar-based.
PERIOD_MINUTES: Final[dict[int, int]] = {
    1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 10, 7: 15, 8: 30, 9: 60, 10: 240, 11: 720, 12: 1440,
    13: 10080,
}  # fmt: skip
PERIOD_NAMES: Final[dict[str, int]] = {
    "M1": 1, "M2": 2, "M3": 3, "M4": 4, "M5": 5, "M10": 6, "M15": 7, "M30": 8, "H1": 9,
    "H4": 10, "H12": 11, "D1": 12, "W1": 13, "MN1": 14,
}  # fmt: skip


def period_from_name(name: str) -> int:
    """``"M1"`` -> 1, ..., ``"MN1"`` -> 14 (case-insensitive).

    :raises ValueError: unknown name.
    """
    try:
        return PERIOD_NAMES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown trendbar period {name!r}") from None


def bar_close_minute(period: int, open_minute: int) -> int:
    """The minute (since epoch) at which a bar opened at ``open_minute`` closes."""
    if period in PERIOD_MINUTES:
        return open_minute + PERIOD_MINUTES[period]
    opened = datetime.fromtimestamp(open_minute * 60, tz=timezone.utc)
    year, month = (opened.year + 1, 1) if opened.month == 12 else (opened.year, opened.month + 1)
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) // 60


@dataclass(frozen=True, slots=True)
class SpotRow:
    """One spot event.  Prices are integers in 1/100000; a side the event lacked is ``None``."""

    symbol_id: int
    received_ms: int
    bid: int | None
    ask: int | None
    server_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BarRow:
    """One closed trendbar; prices are integers in 1/100000, ``volume`` is the tick count.

    :ivar source: ``"live"`` (closed from the live stream) or ``"history"`` (backfill).
    """

    symbol_id: int
    period: int
    time_minutes: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    source: Literal["live", "history"] = "live"

    @property
    def key(self) -> tuple[int, int, int]:
        """The unique key (symbol, period, open time)."""
        return (self.symbol_id, self.period, self.time_minutes)


@dataclass(frozen=True, slots=True)
class DepthRow:
    """One depth change: a new or changed quote, or (``side="delete"``) a removed one."""

    symbol_id: int
    received_ms: int
    quote_id: int
    side: Literal["bid", "ask", "delete"]
    price: int | None
    size: int | None


@dataclass(frozen=True, slots=True)
class DepthChange:
    """What one depth event changed, stored as one row.

    :ivar added: the new or changed quotes, as ``(quote_id, side, price, size)``.
    :ivar deleted: the ids of the removed quotes.  Within one event the removals apply first,
        then the new quotes.
    """

    symbol_id: int
    received_ms: int
    added: tuple[tuple[int, Literal["bid", "ask"], int, int], ...]
    deleted: tuple[int, ...]


def bar_from_trendbar(
    symbol_id: int, period: int, bar: m.ProtoOATrendbar, source: Literal["live", "history"]
) -> BarRow:
    """Decode a ``ProtoOATrendbar`` (low plus deltas) into a :class:`BarRow`.

    ``period`` is given explicitly: history responses name it once, not per bar.
    """
    low = bar.low
    return BarRow(
        symbol_id=symbol_id,
        period=period,
        time_minutes=bar.utcTimestampInMinutes,
        open=low + bar.deltaOpen,
        high=low + bar.deltaHigh,
        low=low,
        close=low + bar.deltaClose,
        volume=bar.volume,
        source=source,
    )
