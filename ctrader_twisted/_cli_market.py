"""Market-data commands: ``symbols``, ``quotes``, ``bars`` and ``ticks``."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from . import messages as m
from ._cli_errors import CliError, ExitCode
from ._cli_output import Column, Row, StdoutClosed, json_value
from ._cli_session import Context
from ._failure import failure_of
from ._models_market import Bar, Quote, QuoteTracker, Tick
from ._models_symbols import SymbolDetails, normalize_symbol_name
from ._models_units import Period, QuoteSide
from .history import HistoryProgress, iter_ticks, iter_trendbars

__all__ = ["download_bars", "download_ticks", "run_quotes", "run_symbols"]

SYMBOL_COLUMNS = (
    Column("symbol_id", "Id", numeric=True),
    Column("name", "Symbol"),
    Column("description", "Description"),
    Column("enabled", "Enabled"),
)
BAR_COLUMNS = (
    Column("time", "Open time (UTC)"),
    Column("open", "Open", numeric=True),
    Column("high", "High", numeric=True),
    Column("low", "Low", numeric=True),
    Column("close", "Close", numeric=True),
    Column("volume", "Ticks", numeric=True),
)
TICK_COLUMNS = (
    Column("time", "Time (UTC)"),
    Column("side", "Side"),
    Column("price", "Price", numeric=True),
)


async def run_symbols(ctx: Context, pattern: str | None) -> int:
    """List the account's symbols, optionally only names containing ``pattern``."""
    account = await ctx.account()
    symbols = await ctx.catalog.symbols(account)
    wanted = normalize_symbol_name(pattern) if pattern else ""
    rows: list[Row] = [
        {
            "symbol_id": s.symbol_id,
            "name": s.name,
            "description": s.description,
            "enabled": s.enabled,
        }
        for s in symbols
        if wanted in normalize_symbol_name(s.name)
    ]
    if pattern and not rows:
        raise CliError(f"no symbol matches {pattern!r}", ExitCode.NOT_FOUND)
    ctx.out.table(f"Symbols of account {account}", SYMBOL_COLUMNS, rows, kind="symbol")
    return 0


def quote_row(details: SymbolDetails, quote: Quote) -> Row:
    """One quote as output data."""
    spread = quote.spread
    pips = None if spread is None else (spread / details.pip_size).quantize(Decimal("0.1"))
    return {
        "type": "quote",
        "symbol": details.name,
        "symbol_id": details.symbol_id,
        "time": quote.time,
        "bid": quote.bid,
        "ask": quote.ask,
        "spread_pips": pips,
    }


def quote_text(row: Row) -> str:
    """One quote as a line for people."""
    time = row["time"]
    stamp = time.strftime("%H:%M:%S.%f")[:-3] if isinstance(time, datetime) else "--:--:--"
    bid, ask, pips = (
        str(row[k]) if row[k] is not None else "-" for k in ("bid", "ask", "spread_pips")
    )
    return f"{stamp}  {row['symbol']:<8} bid {bid:>10}  ask {ask:>10}  spread {pips} pips"


async def run_quotes(
    ctx: Context, names: Sequence[str], count: int | None, duration: float | None
) -> int:
    """Print live quotes until ``count`` quotes, ``duration`` seconds, or an interrupt."""
    account = await ctx.account()
    details = [await ctx.catalog.resolve(account, name) for name in names]
    by_id = {d.symbol_id: d for d in details}
    tracker = QuoteTracker()
    done: Deferred[None] = Deferred()
    seen = 0

    def on_spot(event: m.ProtoOASpotEvent) -> None:
        nonlocal seen
        symbol = by_id.get(int(event.symbolId))
        if symbol is None or event.ctidTraderAccountId != account or done.called:
            return
        if not (event.HasField("bid") or event.HasField("ask")):
            return
        row = quote_row(symbol, tracker.update(event, digits=symbol.digits))
        try:
            ctx.out.line(quote_text(row), row)
        except StdoutClosed as closed:  # ``quotes ... | head -3``: stop, quietly
            done.errback(failure_of(closed))
            return
        seen += 1
        if count is not None and seen >= count:
            done.callback(None)

    remove = ctx.client.on(m.ProtoOASpotEvent, on_spot)
    stopping: list[bool] = []

    def on_shutdown() -> None:  # Ctrl-C: stop quietly, the connection goes down with us
        stopping.append(True)
        _finish(done)

    trigger = ctx.reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    timer = None if duration is None else ctx.reactor.callLater(duration, _finish, done)
    try:
        await ctx.client.subscribe_spots(account, list(by_id), timestamps=True)
        await done
        if not stopping:
            await ctx.client.unsubscribe_spots(account, list(by_id))
    finally:
        remove()
        if timer is not None and timer.active():
            timer.cancel()
        if not stopping:
            ctx.reactor.removeSystemEventTrigger(trigger)
    return 0


def _finish(done: Deferred[None]) -> None:
    if not done.called:
        done.callback(None)


def bar_row(symbol: str, bar: Bar) -> Row:
    """One bar as output data."""
    return {
        "type": "bar",
        "symbol": symbol,
        "period": bar.period.name,
        "time": bar.time,
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume,
    }


def tick_row(symbol: str, tick: Tick) -> Row:
    """One tick as output data."""
    return {
        "type": "tick",
        "symbol": symbol,
        "time": tick.time,
        "side": tick.side,
        "price": tick.price,
    }


class _CsvFile:
    """Rows appended to a CSV file from the reactor's thread pool."""

    def __init__(self, path: Path, columns: Sequence[Column]) -> None:
        self._path = path
        self._keys = [c.key for c in columns]
        self._handle: TextIO | None = None

    def write(self, rows: Sequence[Row]) -> None:
        if self._handle is None:
            self._handle = self._path.open("w", newline="", encoding="utf-8")
            csv.writer(self._handle).writerow(self._keys)
        writer = csv.writer(self._handle)
        writer.writerows([json_value(row[k]) for k in self._keys] for row in rows)

    def close(self) -> None:
        if self._handle is None:
            self.write([])
        assert self._handle is not None
        self._handle.close()


@dataclass(slots=True)
class _Downloaded:
    """What a download produced: the row count and the rows kept for the table."""

    total: int = 0
    shown: list[Row] = field(default_factory=list)


async def _download(
    ctx: Context,
    batches: AsyncIterator[Sequence[Row]],
    columns: Sequence[Column],
    out_file: str | None,
    limit: int,
) -> _Downloaded:
    """Consume batches of rows: into a CSV file, as JSON lines, or kept for a table (the last
    ``limit`` rows); the table is printed by :func:`_report`, after the progress bar."""
    csv_file = _CsvFile(Path(out_file), columns) if out_file else None
    pool = ctx.reactor.getThreadPool()
    result = _Downloaded()
    try:
        async for rows in batches:
            result.total += len(rows)
            if csv_file is not None:
                await deferToThreadPool(ctx.reactor, pool, csv_file.write, rows)
            elif ctx.out.json_mode:
                for row in rows:
                    ctx.out.emit(row)
            else:
                result.shown = (result.shown + list(rows))[-limit:] if limit else []
    finally:
        if csv_file is not None:
            await deferToThreadPool(ctx.reactor, pool, csv_file.close)
    return result


def _report(
    ctx: Context, what: str, done: _Downloaded, columns: Sequence[Column], out_file: str | None
) -> int:
    """Print the outcome of a download once its progress bar is finished.

    :returns: the number of rows.
    """
    if out_file:
        ctx.out.note(f"{done.total} {what} written to {out_file}")
    elif not ctx.out.json_mode:
        shown = done.shown
        hidden = f" (showing the last {len(shown)}; use --out or --json for all)"
        title = f"{done.total} {what}" + (hidden if len(shown) < done.total else "")
        ctx.out.table(title, columns, shown)
    return done.total


async def _rows(
    batches: AsyncIterator[list[Bar]] | AsyncIterator[list[Tick]], symbol: str
) -> AsyncIterator[Sequence[Row]]:
    async for batch in batches:
        yield [bar_row(symbol, i) if isinstance(i, Bar) else tick_row(symbol, i) for i in batch]


async def download_bars(
    ctx: Context,
    name: str,
    period: Period,
    start: datetime,
    end: datetime,
    out_file: str | None,
    limit: int,
) -> int:
    """Download bars of ``name`` in ``[start, end)``, with a progress bar.

    :returns: the number of bars.
    """
    if end <= start:
        raise CliError("--from must be before --to")
    account = await ctx.account()
    symbol = await ctx.catalog.resolve(account, name)
    with ctx.out.progress(f"{symbol.name} {period.name} bars") as update:

        def progress(state: HistoryProgress) -> None:
            update(state.fraction, state.items)

        batches = iter_trendbars(
            ctx.client, account, symbol.symbol_id, period, start, end,
            progress=progress, digits=symbol.digits, timeout=ctx.timeout,
        )  # fmt: skip
        done = await _download(ctx, _rows(batches, symbol.name), BAR_COLUMNS, out_file, limit)
    return _report(ctx, "bars", done, BAR_COLUMNS, out_file)


async def download_ticks(
    ctx: Context,
    name: str,
    side: QuoteSide,
    start: datetime,
    end: datetime,
    out_file: str | None,
    limit: int,
) -> int:
    """Download ticks of one side of ``name`` in ``[start, end)``, with a progress bar.

    :returns: the number of ticks.
    """
    if end <= start:
        raise CliError("--from must be before --to")
    account = await ctx.account()
    symbol = await ctx.catalog.resolve(account, name)
    with ctx.out.progress(f"{symbol.name} {side.name.lower()} ticks") as update:

        def progress(state: HistoryProgress) -> None:
            update(state.fraction, state.items)

        batches = iter_ticks(
            ctx.client, account, symbol.symbol_id, side, start, end,
            progress=progress, digits=symbol.digits, timeout=ctx.timeout,
        )  # fmt: skip
        done = await _download(ctx, _rows(batches, symbol.name), TICK_COLUMNS, out_file, limit)
    return _report(ctx, "ticks", done, TICK_COLUMNS, out_file)
