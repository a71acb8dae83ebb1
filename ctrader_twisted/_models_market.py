"""Market data models: OHLCV bars, ticks and live quotes, decoded from their wire forms.

Owns the trendbar decoding (low plus unsigned deltas, bar open time in minutes), the tick-data
decoding (first value absolute, then differences, newest first), and the spot-quote tracking that
keeps the last known side when a spot event carries only the side that changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from . import messages as m
from ._models_units import (
    Period,
    QuoteSide,
    datetime_from_minutes,
    datetime_from_ms,
    minutes_from_datetime,
    ms_from_datetime,
    price_from_int,
    price_to_int,
)

__all__ = [
    "Bar",
    "Quote",
    "QuoteTracker",
    "Tick",
    "bar_from_trendbar",
    "bars_from_spot",
    "decode_ticks",
    "encode_ticks",
    "trendbar_from_bar",
]


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar.

    :ivar time: open time of the bar, an aware UTC datetime.
    :ivar open: opening price (exact).
    :ivar high: highest price; never below ``open`` or ``close`` (see :func:`bar_from_trendbar`).
    :ivar low: lowest price.
    :ivar close: closing (or, for the live bar, latest) price.
    :ivar volume: number of ticks in the bar (the server's trendbar ``volume``).
    :ivar period: the bar's period.
    """

    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    period: Period = Period.M1

    @property
    def timestamp_ms(self) -> int:
        """Open time in Unix milliseconds."""
        return ms_from_datetime(self.time)

    @property
    def end(self) -> datetime | None:
        """Open time of the next bar, or ``None`` for monthly bars."""
        duration = self.period.duration
        return None if duration is None else self.time + duration


def bar_from_trendbar(
    trendbar: m.ProtoOATrendbar, period: Period | int | None = None, *, digits: int | None = None
) -> Bar:
    """Decode a ``ProtoOATrendbar`` into a :class:`Bar`.

    ``open``, ``high`` and ``close`` are ``low`` plus their deltas.  The server is known to send
    ``deltaHigh = 0`` on some bars whose close equals the low, which would put the high below the
    open; the high is therefore clamped to at least ``max(open, close)``.

    :param period: the period to record; defaults to the trendbar's own ``period`` field (the
        response-level period is more reliable, so history passes it here).
    :param digits: if given, prices are shown with exactly this many decimal places.
    """
    low = int(trendbar.low)
    open_ = low + int(trendbar.deltaOpen)
    close = low + int(trendbar.deltaClose)
    high = max(low + int(trendbar.deltaHigh), open_, close)
    return Bar(
        time=datetime_from_minutes(trendbar.utcTimestampInMinutes),
        open=price_from_int(open_, digits),
        high=price_from_int(high, digits),
        low=price_from_int(low, digits),
        close=price_from_int(close, digits),
        volume=int(trendbar.volume),
        period=Period(period if period is not None else trendbar.period),
    )


def trendbar_from_bar(bar: Bar) -> m.ProtoOATrendbar:
    """Encode a :class:`Bar` as a ``ProtoOATrendbar`` (the inverse of :func:`bar_from_trendbar`).

    :raises ValueError: if ``low`` is above another price (a delta would be negative).
    """
    low = price_to_int(bar.low)
    deltas = [price_to_int(price) - low for price in (bar.open, bar.close, bar.high)]
    if min(deltas) < 0:
        raise ValueError("bar low is above its open, close or high")
    return m.ProtoOATrendbar(
        volume=bar.volume,
        period=m.ProtoOATrendbarPeriod.ValueType(int(bar.period)),
        low=low,
        deltaOpen=deltas[0],
        deltaClose=deltas[1],
        deltaHigh=deltas[2],
        utcTimestampInMinutes=minutes_from_datetime(bar.time),
    )


def bars_from_spot(event: m.ProtoOASpotEvent, *, digits: int | None = None) -> list[Bar]:
    """Live trendbars carried by a spot event (empty unless live trendbars are subscribed)."""
    return [bar_from_trendbar(tb, digits=digits) for tb in event.trendbar]


@dataclass(frozen=True, slots=True)
class Tick:
    """One historical tick of one side.

    :ivar time: when the price was quoted, an aware UTC datetime (millisecond precision).
    :ivar price: the quoted price (exact).
    :ivar side: bid or ask.
    """

    time: datetime
    price: Decimal
    side: QuoteSide

    @property
    def timestamp_ms(self) -> int:
        """Quote time in Unix milliseconds."""
        return ms_from_datetime(self.time)


def decode_ticks(
    tick_data: Iterable[m.ProtoOATickData], side: QuoteSide | int, *, digits: int | None = None
) -> list[Tick]:
    """Decode the ``tickData`` of a ``ProtoOAGetTickDataRes`` into ticks, **oldest first**.

    On the wire the ticks come newest first; the first carries an absolute timestamp (ms) and
    price (1/100000 units) and every later one the difference from the one before it, so the
    differences are usually negative.  The running sums are taken in wire order and the result is
    then reversed into chronological order.
    """
    quote_side = QuoteSide(side)
    timestamp = price = 0
    decoded: list[Tick] = []
    for index, item in enumerate(tick_data):
        if index == 0:
            timestamp, price = int(item.timestamp), int(item.tick)
        else:
            timestamp += int(item.timestamp)
            price += int(item.tick)
        decoded.append(Tick(datetime_from_ms(timestamp), price_from_int(price, digits), quote_side))
    decoded.reverse()
    return decoded


def encode_ticks(ticks: Sequence[Tick]) -> list[m.ProtoOATickData]:
    """Encode ticks (given oldest first) in the wire form: newest first, then differences.

    The inverse of :func:`decode_ticks`.
    """
    encoded: list[m.ProtoOATickData] = []
    previous: tuple[int, int] | None = None
    for tick in reversed(ticks):
        current = (tick.timestamp_ms, price_to_int(tick.price))
        if previous is None:
            encoded.append(m.ProtoOATickData(timestamp=current[0], tick=current[1]))
        else:
            encoded.append(
                m.ProtoOATickData(timestamp=current[0] - previous[0], tick=current[1] - previous[1])
            )
        previous = current
    return encoded


@dataclass(frozen=True, slots=True)
class Quote:
    """The latest known prices of a symbol.

    :ivar account_id: the account whose subscription delivered the quote.
    :ivar symbol_id: the symbol.
    :ivar bid: latest bid, or ``None`` if no bid was seen yet.
    :ivar ask: latest ask, or ``None`` if no ask was seen yet.
    :ivar time: server time of the latest update, if the subscription asked for timestamps.
    :ivar session_close: the last session's close, if the server sent it.
    """

    account_id: int
    symbol_id: int
    bid: Decimal | None
    ask: Decimal | None
    time: datetime | None = None
    session_close: Decimal | None = None

    @property
    def spread(self) -> Decimal | None:
        """``ask - bid``, or ``None`` while a side is unknown."""
        if self.bid is None or self.ask is None:
            return None
        return self.ask - self.bid

    @property
    def mid(self) -> Decimal | None:
        """``(bid + ask) / 2``, or ``None`` while a side is unknown."""
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2


class QuoteTracker:
    """Merge spot events into complete quotes.

    The server sends only the side(s) that changed, so a spot event may lack ``bid`` or ``ask``;
    the tracker keeps the last known value of each side per ``(account, symbol)``::

        tracker = QuoteTracker()
        client.on(m.ProtoOASpotEvent, lambda event: show(tracker.update(event)))
    """

    def __init__(self) -> None:
        self._quotes: dict[tuple[int, int], Quote] = {}

    def update(self, event: m.ProtoOASpotEvent, *, digits: int | None = None) -> Quote:
        """Apply a spot event and return the merged quote for its symbol."""
        key = (int(event.ctidTraderAccountId), int(event.symbolId))
        last = self._quotes.get(key)
        bid = price_from_int(event.bid, digits) if event.HasField("bid") else None
        ask = price_from_int(event.ask, digits) if event.HasField("ask") else None
        close = None
        if event.HasField("sessionClose"):
            close = price_from_int(event.sessionClose, digits)
        quote = Quote(
            account_id=key[0],
            symbol_id=key[1],
            bid=bid if bid is not None or last is None else last.bid,
            ask=ask if ask is not None or last is None else last.ask,
            time=datetime_from_ms(event.timestamp) if event.HasField("timestamp") else None,
            session_close=close if close is not None or last is None else last.session_close,
        )
        self._quotes[key] = quote
        return quote

    def get(self, account_id: int, symbol_id: int) -> Quote | None:
        """The latest merged quote of a symbol, or ``None`` if none arrived yet."""
        return self._quotes.get((account_id, symbol_id))

    def forget(self, account_id: int, symbol_id: int | None = None) -> None:
        """Drop what is known for one symbol, or for every symbol of an account."""
        for key in list(self._quotes):
            if key[0] == account_id and symbol_id in (None, key[1]):
                del self._quotes[key]
