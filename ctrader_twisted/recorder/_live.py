"""Turning the live stream into rows: spots, depth, and bars that are known to be closed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ctrader_twisted import messages as m
from ctrader_twisted._models_market import Bar, bar_from_trendbar
from ctrader_twisted.recorder._rows import BarRow, DepthChange, DepthRow, SpotRow

__all__ = ["LiveBars", "bar_row", "depth_change", "depth_rows", "spot_row"]


def bar_row(symbol_id: int, bar: Bar, source: Literal["live", "history"]) -> BarRow:
    """Convert a models :class:`~ctrader_twisted.models.Bar` to a stored row (integer prices)."""
    return BarRow(
        symbol_id=symbol_id,
        period=int(bar.period),
        time_minutes=bar.timestamp_ms // 60_000,
        open=int(bar.open.scaleb(5)),
        high=int(bar.high.scaleb(5)),
        low=int(bar.low.scaleb(5)),
        close=int(bar.close.scaleb(5)),
        volume=bar.volume,
        source=source,
    )


def spot_row(event: m.ProtoOASpotEvent, received_ms: int) -> SpotRow:
    """The spot part of a spot event; a side the event did not carry is ``None``."""
    return SpotRow(
        symbol_id=event.symbolId,
        received_ms=received_ms,
        bid=event.bid if event.HasField("bid") else None,
        ask=event.ask if event.HasField("ask") else None,
        server_ms=event.timestamp if event.HasField("timestamp") else None,
    )


def depth_rows(event: m.ProtoOADepthEvent, received_ms: int) -> list[DepthRow]:
    """One row per new/changed quote and per deleted quote id."""
    rows = []
    for quote in event.newQuotes:
        side: Literal["bid", "ask"] = "bid" if quote.HasField("bid") else "ask"
        price = quote.bid if side == "bid" else quote.ask
        rows.append(DepthRow(event.symbolId, received_ms, quote.id, side, price, quote.size))
    for quote_id in event.deletedQuotes:
        rows.append(DepthRow(event.symbolId, received_ms, quote_id, "delete", None, None))
    return rows


def depth_change(event: m.ProtoOADepthEvent, received_ms: int) -> DepthChange:
    """What one depth event changed: its new or changed quotes and its deleted quote ids."""
    added: list[tuple[int, Literal["bid", "ask"], int, int]] = []
    for quote in event.newQuotes:
        if quote.HasField("bid"):
            added.append((quote.id, "bid", quote.bid, quote.size))
        else:
            added.append((quote.id, "ask", quote.ask, quote.size))
    return DepthChange(event.symbolId, received_ms, tuple(added), tuple(event.deletedQuotes))


class LiveBars:
    """Track the bar in progress per (symbol, period); report each bar once it is closed.

    The trendbar inside a spot event is the server's aggregate of the bar so far.  When a bar
    with a later open time arrives, the previous one is final and goes to ``closed``.  After a
    reconnect call :meth:`reset`: the bar held from before may have missed updates, so it is
    dropped (the backfill supplies it), and the first bar seen per series afterwards is reported
    to ``first_after_reset`` so the caller can backfill up to it.

    :param closed: receives each closed bar.
    :param first_after_reset: receives (symbol, period) on the first live bar after a reset.
    """

    def __init__(
        self,
        closed: Callable[[BarRow], object],
        first_after_reset: Callable[[int, int], object],
    ) -> None:
        self._closed = closed
        self._first = first_after_reset
        self._forming: dict[tuple[int, int], BarRow] = {}
        self._seen_since_reset: set[tuple[int, int]] = set()

    def reset(self) -> None:
        """Forget bars in progress (after a reconnect)."""
        self._forming.clear()
        self._seen_since_reset.clear()

    def forming(self) -> list[BarRow]:
        """The bars in progress (not stored: they are not final)."""
        return list(self._forming.values())

    def feed(self, symbol_id: int, trendbar: m.ProtoOATrendbar) -> None:
        """Take one live trendbar from a spot event."""
        row = bar_row(symbol_id, bar_from_trendbar(trendbar), "live")
        key = (symbol_id, row.period)
        previous = self._forming.get(key)
        if previous is not None and row.time_minutes < previous.time_minutes:
            return  # a late update of a bar already closed
        self._forming[key] = row
        if key not in self._seen_since_reset:
            self._seen_since_reset.add(key)
            self._first(symbol_id, row.period)
        if previous is not None and row.time_minutes > previous.time_minutes:
            self._closed(previous)
