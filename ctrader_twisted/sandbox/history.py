"""Historical trendbars and ticks cut from the price walk, with ``hasMore`` paging.

Paging direction (documented sandbox behaviour, also what the real server is believed to do):
both trendbars and ticks are collected backwards from ``toTimestamp``.  When a response has
``hasMore``, the next request should keep ``fromTimestamp`` and move ``toTimestamp`` to just
before the oldest item received.  Trendbars are sent oldest first; ticks newest first, with the
first tick absolute and the rest as differences from the previous one.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final, NamedTuple

from .. import messages as m
from .catalogue import SYMBOLS, SymbolSpec
from .market import MinuteBar, PriceWalk
from .work import Work, drain

if TYPE_CHECKING:
    from .session import Handler, Session

__all__ = [
    "HANDLERS",
    "MAX_TIMESTAMP",
    "PERIOD_MINUTES",
    "Bar",
    "bar_start",
    "aggregate",
    "tick_page",
    "tick_work",
    "trendbar_message",
    "trendbar_page",
    "trendbar_work",
]

#: Largest ``toTimestamp`` the protocol allows (19 January 2038).
MAX_TIMESTAMP: Final = 2_147_483_646_000

_P = m.ProtoOATrendbarPeriod
#: Minutes per bar of each fixed-length period (MN1 follows the calendar).
PERIOD_MINUTES: Final[dict[int, int]] = {
    _P.M1: 1,
    _P.M2: 2,
    _P.M3: 3,
    _P.M4: 4,
    _P.M5: 5,
    _P.M10: 10,
    _P.M15: 15,
    _P.M30: 30,
    _P.H1: 60,
    _P.H4: 240,
    _P.H12: 720,
    _P.D1: 1440,
    _P.W1: 10080,
}
_WEEK_SHIFT: Final = 4 * 1440  # the epoch is a Thursday; weekly bars start on Sunday 00:00 UTC
#: Minutes aggregated between two yields of history work (a few milliseconds).
_STEP: Final = 100


class Bar(NamedTuple):
    """An aggregated bid bar: start minute, OHLC (1/100000 units) and tick count."""

    start: int
    open: int
    high: int
    low: int
    close: int
    volume: int


def _month_start(minute: int, months_back: int = 0) -> int:
    when = datetime.fromtimestamp(minute * 60, tz=timezone.utc)
    index = when.year * 12 + when.month - 1 - months_back
    first = datetime(index // 12, index % 12 + 1, 1, tzinfo=timezone.utc)
    return int(first.timestamp()) // 60


def bar_start(period: int, minute: int) -> int:
    """Start minute of the ``period`` bar containing ``minute``."""
    if period == _P.MN1:
        return _month_start(minute)
    length = PERIOD_MINUTES[period]
    if period == _P.W1:
        return minute - (minute + _WEEK_SHIFT) % length
    return minute - minute % length


def bar_end(period: int, start: int) -> int:
    """First minute after the ``period`` bar starting at ``start``."""
    if period == _P.MN1:
        when = datetime.fromtimestamp(start * 60, tz=timezone.utc)
        return start + monthrange(when.year, when.month)[1] * 1440
    return start + PERIOD_MINUTES[period]


def aggregate(walk: PriceWalk, spec: SymbolSpec, first: int, end: int) -> Bar | None:
    """Aggregate the complete open minutes in ``[first, end)``; ``None`` if none traded."""
    anchors = walk.anchors(spec, first, end - first + 1)
    bar: Bar | None = None
    for minute in range(first, end):
        if not walk.is_open(spec, minute):
            continue
        one = walk.bar_between(spec, minute, anchors[minute - first], anchors[minute - first + 1])
        bar = merge(bar, one)
    return bar


def merge(bar: Bar | None, one: MinuteBar | Bar) -> Bar:
    """Extend ``bar`` (or start one) with a later bar ``one``."""
    if bar is None:
        start = one.minute if isinstance(one, MinuteBar) else one.start
        return Bar(start, one.open, one.high, one.low, one.close, one.volume)
    return Bar(
        bar.start,
        bar.open,
        max(bar.high, one.high),
        min(bar.low, one.low),
        one.close,
        bar.volume + one.volume,
    )


def _aggregate_work(walk: PriceWalk, spec: SymbolSpec, first: int, end: int) -> Work[Bar | None]:
    """:func:`aggregate` in steps of :data:`_STEP` minutes, yielding each step's minutes."""
    bar: Bar | None = None
    for begin in range(first, end, _STEP):
        stop = min(begin + _STEP, end)
        part = aggregate(walk, spec, begin, stop)
        if part is not None:
            bar = merge(bar, part)
        yield stop - begin
    return bar


def _bar_until_work(
    walk: PriceWalk, spec: SymbolSpec, period: int, now_ms: int
) -> Work[Bar | None]:
    minute, slot = walk.slot_of(now_ms)
    start = bar_start(period, minute)
    bar = yield from _aggregate_work(walk, spec, start, minute)
    if walk.is_open(spec, minute):
        bar = merge(bar, walk.partial_bar(spec, minute, slot))
    return bar


def bar_until(walk: PriceWalk, spec: SymbolSpec, period: int, now_ms: int) -> Bar | None:
    """The ``period`` bar in progress at ``now_ms``, up to the tick in effect then."""
    return drain(_bar_until_work(walk, spec, period, now_ms))


def trendbar_message(period: int, bar: Bar) -> m.ProtoOATrendbar:
    """The wire form of ``bar``."""
    return m.ProtoOATrendbar(
        volume=bar.volume,
        period=period,  # type: ignore[arg-type]
        low=bar.low,
        deltaOpen=bar.open - bar.low,
        deltaClose=bar.close - bar.low,
        deltaHigh=bar.high - bar.low,
        utcTimestampInMinutes=bar.start,
    )


def trendbar_page(
    walk: PriceWalk,
    spec: SymbolSpec,
    period: int,
    from_ms: int,
    to_ms: int,
    now_ms: int,
    *,
    limit: int,
    minutes_budget: int,
) -> tuple[list[Bar], bool]:
    """Bars starting in ``[from_ms, to_ms]`` (and not after ``now_ms``), newest ``limit``
    of them, oldest first; and whether older bars remain in the range."""
    work = trendbar_work(
        walk, spec, period, from_ms, to_ms, now_ms, limit=limit, minutes_budget=minutes_budget
    )
    return drain(work)


def trendbar_work(
    walk: PriceWalk,
    spec: SymbolSpec,
    period: int,
    from_ms: int,
    to_ms: int,
    now_ms: int,
    *,
    limit: int,
    minutes_budget: int,
) -> Work[tuple[list[Bar], bool]]:
    """:func:`trendbar_page` as :data:`~ctrader_twisted.sandbox.work.Work`: yields the
    minutes of the walk generated at each step."""
    first_minute = -(-from_ms // 60_000)
    last_minute = min(to_ms, now_ms) // 60_000
    now_minute, _ = walk.slot_of(now_ms)
    bars: list[Bar] = []
    spent = 0
    start = bar_start(period, last_minute)
    while start >= first_minute and len(bars) < limit:
        if spent >= minutes_budget and bars:
            break
        end = bar_end(period, start)
        if end > now_minute:
            bar = yield from _bar_until_work(walk, spec, period, now_ms)
        else:
            bar = yield from _aggregate_work(walk, spec, start, end)
        spent += end - start
        if bar is not None:
            bars.append(bar._replace(start=start))
        start = bar_start(period, start - 1)
    bars.reverse()
    return bars, start >= first_minute


def tick_page(
    walk: PriceWalk,
    spec: SymbolSpec,
    ask: bool,
    from_ms: int,
    to_ms: int,
    now_ms: int,
    *,
    limit: int,
    minutes_budget: int,
) -> tuple[list[tuple[int, int]], bool]:
    """Ticks (timestamp ms, price) in ``[from_ms, to_ms]`` up to ``now_ms``, newest first,
    at most ``limit``; and whether older ticks remain in the range."""
    work = tick_work(
        walk, spec, ask, from_ms, to_ms, now_ms, limit=limit, minutes_budget=minutes_budget
    )
    return drain(work)


def tick_work(
    walk: PriceWalk,
    spec: SymbolSpec,
    ask: bool,
    from_ms: int,
    to_ms: int,
    now_ms: int,
    *,
    limit: int,
    minutes_budget: int,
) -> Work[tuple[list[tuple[int, int]], bool]]:
    """:func:`tick_page` as :data:`~ctrader_twisted.sandbox.work.Work`: yields one per
    minute scanned."""
    to_ms = min(to_ms, now_ms)
    minute = to_ms // 60_000
    first_minute = from_ms // 60_000
    ticks: list[tuple[int, int]] = []
    scanned = 0
    while minute >= first_minute and scanned < minutes_budget:
        scanned += 1
        if walk.is_open(spec, minute):
            spread = walk.spread(spec, minute) if ask else 0
            prices = walk.minute_ticks(spec, minute)
            for slot in range(len(prices) - 1, -1, -1):
                when = walk.slot_time(minute, slot)
                if when > to_ms or when < from_ms:
                    continue
                if len(ticks) == limit:
                    return ticks, True
                ticks.append((when, prices[slot] + spread))
        minute -= 1
        yield 1
    return ticks, minute >= first_minute


def tick_messages(ticks: list[tuple[int, int]]) -> list[m.ProtoOATickData]:
    """Encode newest-first ticks: the first absolute, the others as differences."""
    out: list[m.ProtoOATickData] = []
    prev_time = prev_price = 0
    for when, price in ticks:
        out.append(m.ProtoOATickData(timestamp=when - prev_time, tick=price - prev_price))
        prev_time, prev_price = when, price
    return out


def _bounds(
    session: Session, req: m.ProtoOAGetTrendbarsReq | m.ProtoOAGetTickDataReq, cmid: str | None
) -> tuple[SymbolSpec, int, int] | None:
    account_id = req.ctidTraderAccountId
    spec = SYMBOLS.get(req.symbolId)
    if spec is None:
        text = f"Symbol not found: {req.symbolId}"
        session.error("SYMBOL_NOT_FOUND", text, cmid, account_id=account_id)
        return None
    to_ms = req.toTimestamp if req.HasField("toTimestamp") else session.factory.now_ms()
    from_ms = req.fromTimestamp if req.HasField("fromTimestamp") else 0
    if from_ms < 0 or to_ms > MAX_TIMESTAMP or from_ms > to_ms:
        text = "fromTimestamp and toTimestamp must satisfy 0 <= from <= to <= 2147483646000"
        session.error("INCORRECT_BOUNDARIES", text, cmid, account_id=account_id)
        return None
    return spec, from_ms, to_ms


def _busy(session: Session, cmid: str | None) -> bool:
    """Refuse a history request while the connection has ``max_pending_work`` in progress."""
    if session.factory.work.pending(session) < session.config.max_pending_work:
        return False
    session.refuse_rate(cmid, work=True)
    return True


def _trendbars(session: Session, req: m.ProtoOAGetTrendbarsReq, cmid: str | None) -> None:
    bounds = _bounds(session, req, cmid)
    if bounds is None:
        return
    spec, from_ms, to_ms = bounds
    config, period = session.config, req.period
    if period not in PERIOD_MINUTES and period != _P.MN1:
        text = f"Unknown trendbar period {period}"
        session.error("INVALID_REQUEST", text, cmid, account_id=req.ctidTraderAccountId)
        return
    if _busy(session, cmid):
        return
    limit = config.trendbar_chunk
    if req.HasField("count") and req.count > 0:
        limit = min(limit, req.count)
    work = trendbar_work(
        session.factory.walk,
        spec,
        period,
        from_ms,
        to_ms,
        session.factory.now_ms(),
        limit=limit,
        minutes_budget=config.trendbar_minutes_budget,
    )

    def done(page: tuple[list[Bar], bool]) -> None:
        bars, has_more = page
        if req.HasField("count") and 0 < req.count <= len(bars):
            has_more = False  # the caller asked for exactly this many
        res = m.ProtoOAGetTrendbarsRes(
            ctidTraderAccountId=req.ctidTraderAccountId,
            period=period,
            timestamp=session.factory.now_ms(),
            symbolId=spec.symbol_id,
            hasMore=has_more,
        )
        res.trendbar.extend(trendbar_message(period, bar) for bar in bars)
        session.reply(res, cmid)

    session.factory.work.submit(session, work, done)


def _ticks(session: Session, req: m.ProtoOAGetTickDataReq, cmid: str | None) -> None:
    bounds = _bounds(session, req, cmid)
    if bounds is None:
        return
    spec, from_ms, to_ms = bounds
    if not req.HasField("fromTimestamp"):
        from_ms = max(0, to_ms - 7 * 86_400_000)
    if _busy(session, cmid):
        return
    work = tick_work(
        session.factory.walk,
        spec,
        req.type == m.ProtoOAQuoteType.ASK,
        from_ms,
        to_ms,
        session.factory.now_ms(),
        limit=session.config.tick_chunk,
        minutes_budget=20_160,
    )

    def done(page: tuple[list[tuple[int, int]], bool]) -> None:
        ticks, has_more = page
        res = m.ProtoOAGetTickDataRes(ctidTraderAccountId=req.ctidTraderAccountId, hasMore=has_more)
        res.tickData.extend(tick_messages(ticks))
        session.reply(res, cmid)

    session.factory.work.submit(session, work, done)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOAGetTrendbarsReq: _trendbars,
    m.ProtoOAGetTickDataReq: _ticks,
}
