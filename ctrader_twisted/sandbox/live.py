"""Live market data: spot, live-trendbar and depth subscriptions, driven by one timer.

The factory's :class:`MarketFeed` ticks every ``tick_interval`` seconds while any connection is
open.  Each tick it reads the walk's current quote for every *active* symbol (subscribed, or
watched by the order engine); only symbols whose quote changed cost more than a comparison.

Market data is never queued for a client that is not reading: while a session's transport is
paused, its spot and depth events are dropped and the subscription is marked *stale*; when the
transport resumes, :meth:`MarketFeed.resync` sends each stale subscription one spot event with
both sides (and the bars in progress) and a fresh depth book.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from twisted.internet.task import LoopingCall

from .. import messages as m
from .catalogue import SYMBOLS, SymbolSpec
from .history import PERIOD_MINUTES, Bar, aggregate, bar_start, merge, trendbar_message
from .market import PriceWalk, mix64

if TYPE_CHECKING:
    from .server import SandboxFactory
    from .session import Handler, Session

__all__ = ["HANDLERS", "MarketFeed"]

QuoteListener = Callable[[SymbolSpec, int, int], None]


@dataclass(slots=True)
class _Subscription:
    """One account's spot subscription to one symbol on one connection."""

    session: Session
    account_id: int
    spec: SymbolSpec
    timestamps: bool
    bid: int = 0
    ask: int = 0
    periods: set[int] = field(default_factory=set)
    depth: list[int] | None = None
    #: An event was dropped while the client was not reading: re-send in full.
    stale: bool = False
    depth_stale: bool = False


class _LiveBars:
    """Bars in progress, extended minute by minute instead of re-aggregated every tick."""

    def __init__(self, walk: PriceWalk) -> None:
        self._walk = walk
        #: (symbol, period) -> (bar start, first minute not yet aggregated, aggregate)
        self._done: dict[tuple[int, int], tuple[int, int, Bar | None]] = {}

    def current(self, spec: SymbolSpec, period: int, now_ms: int) -> Bar | None:
        walk = self._walk
        minute, slot = walk.slot_of(now_ms)
        start = bar_start(period, minute)
        key = (spec.symbol_id, period)
        cached_start, upto, done = self._done.get(key, (start, start, None))
        if cached_start != start:
            upto, done = start, None
        if upto < minute:
            done = merge_optional(done, aggregate(walk, spec, upto, minute))
            upto = minute
        self._done[key] = (start, upto, done)
        if not walk.is_open(spec, minute):
            return done
        return merge(done, walk.partial_bar(spec, minute, slot))


def merge_optional(bar: Bar | None, later: Bar | None) -> Bar | None:
    """Merge two optional bars in time order."""
    if later is None:
        return bar
    return merge(bar, later)


class MarketFeed:
    """Every live subscription of a sandbox, and the timer that feeds them."""

    def __init__(self, factory: SandboxFactory) -> None:
        self._factory = factory
        self._walk = factory.walk
        self._subs: dict[int, dict[tuple[Session, int], _Subscription]] = {}
        self._last: dict[int, tuple[int, int]] = {}
        self._bars = _LiveBars(factory.walk)
        self._depth_id = 0
        #: Symbols the order engine needs quotes for, and where it wants them.
        self.watched: set[int] = set()
        self.on_quote: QuoteListener | None = None
        self._loop = LoopingCall(self.tick)
        self._loop.clock = factory.clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._factory.config.tick_interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    # Subscriptions

    def find(self, session: Session, account_id: int, symbol_id: int) -> _Subscription | None:
        return self._subs.get(symbol_id, {}).get((session, account_id))

    def subscribe(self, session: Session, account_id: int, spec: SymbolSpec, stamps: bool) -> None:
        sub = _Subscription(session, account_id, spec, stamps)
        self._subs.setdefault(spec.symbol_id, {})[(session, account_id)] = sub
        self._send_spot(sub, *self._factory.broker.quote(spec), first=True)

    def unsubscribe(self, session: Session, account_id: int, symbol_id: int) -> None:
        subs = self._subs.get(symbol_id)
        if subs is not None:
            subs.pop((session, account_id), None)
            if not subs:
                del self._subs[symbol_id]

    def remove(self, session: Session, account_id: int | None = None) -> None:
        """Drop the subscriptions of one account (or all accounts) of ``session``."""
        for symbol_id in list(self._subs):
            for key in [k for k in self._subs[symbol_id] if k[0] is session]:
                if account_id is None or key[1] == account_id:
                    self.unsubscribe(session, key[1], symbol_id)

    def subscribe_depth(self, sub: _Subscription) -> None:
        sub.depth = []
        self._send_depth(sub, *self._factory.broker.quote(sub.spec))

    def resync(self, session: Session) -> None:
        """Catch up ``session`` after it resumed reading: for every subscription that lost an
        event, one spot event with both sides (and the bars in progress) and a new book."""
        now_ms = self._factory.now_ms()
        for subs in list(self._subs.values()):
            for (owner, _), sub in list(subs.items()):
                if owner is not session or not (sub.stale or sub.depth_stale):
                    continue
                bid, ask = self._walk.quote_at(sub.spec, now_ms)
                if sub.stale:
                    self._send_spot(sub, bid, ask, first=True, bars={}, now_ms=now_ms)
                if sub.depth_stale and sub.depth is not None:
                    self._send_depth(sub, bid, ask)

    # Ticking

    def tick(self) -> None:
        """Send what changed since the last tick."""
        now_ms = self._factory.now_ms()
        for symbol_id in self._subs.keys() | self.watched:
            spec = SYMBOLS[symbol_id]
            quote = self._walk.quote_at(spec, now_ms)
            if self._last.get(symbol_id) == quote:
                continue
            self._last[symbol_id] = quote
            bid, ask = quote
            subs = self._subs.get(symbol_id)
            if subs:
                bars: dict[int, m.ProtoOATrendbar] = {}
                for sub in list(subs.values()):
                    self._send_spot(sub, bid, ask, bars=bars, now_ms=now_ms)
                    if sub.depth is not None:
                        self._send_depth(sub, bid, ask)
            if self.on_quote is not None and symbol_id in self.watched:
                self.on_quote(spec, bid, ask)

    def _send_spot(
        self,
        sub: _Subscription,
        bid: int,
        ask: int,
        *,
        first: bool = False,
        bars: dict[int, m.ProtoOATrendbar] | None = None,
        now_ms: int = 0,
    ) -> None:
        if sub.session.flow.paused:
            sub.stale = True
            self._factory.stats.market_events_dropped += 1
            return
        first = first or sub.stale
        event = m.ProtoOASpotEvent(ctidTraderAccountId=sub.account_id, symbolId=sub.spec.symbol_id)
        if first or bid != sub.bid:
            event.bid = sub.bid = bid
        if first or ask != sub.ask:
            event.ask = sub.ask = ask
        if sub.timestamps:
            event.timestamp = now_ms or self._factory.now_ms()
        if sub.periods and bars is not None:
            for period in sorted(sub.periods):
                bar = bars.get(period)
                if bar is None:
                    current = self._bars.current(sub.spec, period, now_ms)
                    if current is None:
                        continue
                    bar = bars[period] = trendbar_message(period, current)
                event.trendbar.append(bar)
        if not (first or event.HasField("bid") or event.HasField("ask") or event.trendbar):
            return
        sub.session.push(event)  # not paused: checked above, and nothing was written since
        sub.stale = False
        self._factory.stats.spot_events_sent += 1

    def _send_depth(self, sub: _Subscription, bid: int, ask: int) -> None:
        if sub.session.flow.paused:
            sub.depth_stale = True
            self._factory.stats.market_events_dropped += 1
            return
        spec, levels = sub.spec, self._factory.config.depth_levels
        event = m.ProtoOADepthEvent(ctidTraderAccountId=sub.account_id, symbolId=spec.symbol_id)
        event.deletedQuotes.extend(sub.depth or ())
        ids: list[int] = []
        step = spec.point * max(1, spec.spread // 2)
        for level in range(levels):
            size = (1 + mix64(bid, ask, level, spec.symbol_id) % 20) * spec.min_volume * 10
            for side, price in (("bid", bid - level * step), ("ask", ask + level * step)):
                self._depth_id += 1
                ids.append(self._depth_id)
                quote = event.newQuotes.add(id=self._depth_id, size=size)
                setattr(quote, side, price)
        sub.session.push(event)  # not paused: checked above
        sub.depth, sub.depth_stale = ids, False


def _validate(session: Session, account_id: int, ids: list[int], cmid: str | None) -> bool:
    missing = [sid for sid in ids if sid not in SYMBOLS]
    if missing or not ids:
        text = f"Symbol not found: {missing[0] if missing else 'no symbolId given'}"
        session.error("SYMBOL_NOT_FOUND", text, cmid, account_id=account_id)
        return False
    return True


def _not_subscribed(session: Session, account_id: int, symbol_id: int, cmid: str | None) -> None:
    text = f"Not subscribed to spots of symbol {symbol_id}"
    session.error("NOT_SUBSCRIBED_TO_SPOTS", text, cmid, account_id=account_id)


def _subscribe_spots(session: Session, req: m.ProtoOASubscribeSpotsReq, cmid: str | None) -> None:
    account_id, ids, feed = req.ctidTraderAccountId, list(req.symbolId), session.factory.feed
    if not _validate(session, account_id, ids, cmid):
        return
    taken = [sid for sid in ids if feed.find(session, account_id, sid) is not None]
    if taken or len(set(ids)) != len(ids):
        text = f"Already subscribed to spots of symbol {taken[0] if taken else ids[0]}"
        session.error("ALREADY_SUBSCRIBED", text, cmid, account_id=account_id)
        return
    session.reply(m.ProtoOASubscribeSpotsRes(ctidTraderAccountId=account_id), cmid)
    for sid in ids:
        feed.subscribe(session, account_id, SYMBOLS[sid], req.subscribeToSpotTimestamp)


def _unsubscribe_spots(
    session: Session, req: m.ProtoOAUnsubscribeSpotsReq, cmid: str | None
) -> None:
    account_id, ids, feed = req.ctidTraderAccountId, list(req.symbolId), session.factory.feed
    if not _validate(session, account_id, ids, cmid):
        return
    for sid in ids:
        if feed.find(session, account_id, sid) is None:
            _not_subscribed(session, account_id, sid, cmid)
            return
    for sid in ids:
        feed.unsubscribe(session, account_id, sid)
    session.reply(m.ProtoOAUnsubscribeSpotsRes(ctidTraderAccountId=account_id), cmid)


def _live_trendbar(
    session: Session, req: m.ProtoOASubscribeLiveTrendbarReq, cmid: str | None
) -> None:
    account_id, sid = req.ctidTraderAccountId, req.symbolId
    if not _validate(session, account_id, [sid], cmid):
        return
    sub = session.factory.feed.find(session, account_id, sid)
    if sub is None:
        _not_subscribed(session, account_id, sid, cmid)
        return
    if req.period not in PERIOD_MINUTES and req.period != m.ProtoOATrendbarPeriod.MN1:
        session.error("INVALID_REQUEST", "Unknown trendbar period", cmid, account_id=account_id)
        return
    if req.period in sub.periods:
        text = f"Already subscribed to live trendbars of symbol {sid}"
        session.error("ALREADY_SUBSCRIBED", text, cmid, account_id=account_id)
        return
    sub.periods.add(req.period)
    session.reply(m.ProtoOASubscribeLiveTrendbarRes(ctidTraderAccountId=account_id), cmid)


def _unsub_trendbar(
    session: Session, req: m.ProtoOAUnsubscribeLiveTrendbarReq, cmid: str | None
) -> None:
    account_id, sid = req.ctidTraderAccountId, req.symbolId
    if not _validate(session, account_id, [sid], cmid):
        return
    sub = session.factory.feed.find(session, account_id, sid)
    if sub is None:
        _not_subscribed(session, account_id, sid, cmid)
        return
    sub.periods.discard(req.period)
    session.reply(m.ProtoOAUnsubscribeLiveTrendbarRes(ctidTraderAccountId=account_id), cmid)


def _depth(session: Session, req: m.ProtoOASubscribeDepthQuotesReq, cmid: str | None) -> None:
    account_id, ids, feed = req.ctidTraderAccountId, list(req.symbolId), session.factory.feed
    if not _validate(session, account_id, ids, cmid):
        return
    subs = [feed.find(session, account_id, sid) for sid in ids]
    for sid, sub in zip(ids, subs, strict=True):
        if sub is None:
            _not_subscribed(session, account_id, sid, cmid)
            return
        if sub.depth is not None:
            text = f"Already subscribed to depth quotes of symbol {sid}"
            session.error("ALREADY_SUBSCRIBED", text, cmid, account_id=account_id)
            return
    session.reply(m.ProtoOASubscribeDepthQuotesRes(ctidTraderAccountId=account_id), cmid)
    for sub in subs:
        if sub is not None:
            feed.subscribe_depth(sub)


def _unsub_depth(
    session: Session, req: m.ProtoOAUnsubscribeDepthQuotesReq, cmid: str | None
) -> None:
    account_id, ids, feed = req.ctidTraderAccountId, list(req.symbolId), session.factory.feed
    if not _validate(session, account_id, ids, cmid):
        return
    for sid in ids:
        sub = feed.find(session, account_id, sid)
        if sub is not None:
            sub.depth = None
    session.reply(m.ProtoOAUnsubscribeDepthQuotesRes(ctidTraderAccountId=account_id), cmid)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOASubscribeSpotsReq: _subscribe_spots,
    m.ProtoOAUnsubscribeSpotsReq: _unsubscribe_spots,
    m.ProtoOASubscribeLiveTrendbarReq: _live_trendbar,
    m.ProtoOAUnsubscribeLiveTrendbarReq: _unsub_trendbar,
    m.ProtoOASubscribeDepthQuotesReq: _depth,
    m.ProtoOAUnsubscribeDepthQuotesReq: _unsub_depth,
}
