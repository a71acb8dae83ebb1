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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from twisted.internet.interfaces import IDelayedCall

from .. import messages as m
from .catalogue import SYMBOLS, SymbolSpec
from .history import PERIOD_MINUTES, Bar, aggregate, bar_start, merge, trendbar_message
from .market import PriceWalk, mix64

if TYPE_CHECKING:
    from .server import SandboxFactory
    from .session import Handler, Session

__all__ = ["HANDLERS", "MarketFeed"]

QuoteListener = Callable[[SymbolSpec, int, int], None]
#: How far behind (seconds) the feed still sends the ticks it missed, one after the other.
_CATCH_UP: Final = 0.005


@dataclass(slots=True, eq=False)
class _Subscription:
    """One account's spot subscription to one symbol on one connection."""

    session: Session
    account_id: int
    spec: SymbolSpec
    timestamps: bool
    bid: int = 0
    ask: int = 0
    periods: set[int] = field(default_factory=set)
    #: Ids of the depth quotes last sent (``None``: no depth subscription).
    depth: tuple[int, ...] | None = None
    #: An event was dropped while the client was not reading: re-send in full.
    stale: bool = False
    depth_stale: bool = False


#: What makes two subscribers' spot events identical: account, bid sent, ask sent,
#: timestamp sent, live-trendbar periods.
_SpotKey = tuple[int, bool, bool, bool, tuple[int, ...]]
#: A depth book: the new quotes' ids and the quotes.
_Book = tuple[tuple[int, ...], list[m.ProtoOADepthQuote]]
#: Frames waiting to be written at the end of a tick, per connection.
_Batch = dict["Session", list[bytes]]


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
    """Every live subscription of a sandbox, and the timer that feeds them.

    A tick costs one quote per active symbol, and for each symbol whose quote changed, one
    encoding of its spot event (and depth event) per distinct kind of subscriber (account,
    timestamps, trendbar periods, sides changed) plus one write per subscribed connection:
    every subscriber of a symbol gets the same bytes, and a connection gets all of a tick's
    frames in one write.
    """

    def __init__(self, factory: SandboxFactory) -> None:
        self._factory = factory
        self._walk = factory.walk
        #: symbol id -> (session, account id) -> subscription
        self._subs: dict[int, dict[tuple[Session, int], _Subscription]] = {}
        #: session -> (symbol id, account id) -> subscription (the same objects)
        self._by_session: dict[Session, dict[tuple[int, int], _Subscription]] = {}
        self._last: dict[int, tuple[int, int]] = {}
        self._bars = _LiveBars(factory.walk)
        self._depth_id = 0
        #: Symbols the order engine needs quotes for, and where it wants them.
        self.watched: set[int] = set()
        self.on_quote: QuoteListener | None = None
        self._interval = factory.config.tick_interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        """Whether the feed is ticking."""
        return self._call is not None

    def start(self) -> None:
        """Tick every ``tick_interval`` from now on (the first tick one interval from now)."""
        if self._call is None:
            clock = self._factory.clock
            self._due = clock.seconds() + self._interval
            self._call = clock.callLater(self._interval, self._run)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _run(self) -> None:
        call, due = self._call, self._due
        self.tick(self._slot_start(due))
        if self._call is call:  # (not stopped, or stopped and started again, meanwhile)
            self._call = self._next(due)

    def _next(self, due: float) -> IDelayedCall:
        """Schedule the tick after the one due at ``due``.

        Unlike a ``LoopingCall``, a tick that ran late does not make the next one skip its
        turn: the next is due one interval after the late one was due (at once if that has
        passed), unless that is more than 5 ms ago: then it skips to its next turn after now,
        as a ``LoopingCall`` does, so an overloaded feed sheds ticks instead of falling
        further behind.  When the interval is the walk's tick spacing, ticks are kept on the
        walk's slot boundaries (the feed may have started anywhere within a slot, and sums of
        floats drift) and each tick sends the price of its own slot, so that every price
        reaches the subscribers even when the reactor wakes up a few milliseconds late
        (``epoll`` waits in whole milliseconds, and a busy machine schedules the process late).
        """
        clock = self._factory.clock
        now = clock.seconds()
        interval = self._interval
        due += interval
        if due < now - _CATCH_UP:  # too far behind: skip to the next turn after now
            due += (math.floor((now - due) / interval) + 1) * interval
        if self._aligned and self._slot_start(due) is None:
            due = self._nearest_boundary(due)
        self._due = due
        return clock.callLater(max(0.0, due - now), self._run)

    @property
    def _aligned(self) -> bool:
        return abs(self._interval * 1000 - self._walk.tick_ms) < 1e-9

    def _slot_start(self, due: float) -> int | None:
        """The slot boundary of the walk (ms) within a small tolerance of ``due`` (a
        twentieth of the interval, at most 50 µs); ``None`` if there is none or ticks are
        not on the walk's slots."""
        if not self._aligned:
            return None
        boundary = self._nearest_boundary(due)
        tolerance = min(self._interval / 20, 5e-5)
        return round(boundary * 1000) if abs(boundary - due) <= tolerance else None

    def _nearest_boundary(self, due: float) -> float:
        """The slot boundary of the walk nearest to ``due`` (seconds)."""
        walk = self._walk
        minute, slot = walk.slot_of(int(due * 1000))
        start = walk.slot_time(minute, slot) / 1000
        end = (
            walk.slot_time(minute, slot + 1) / 1000 if slot + 1 < walk.slots else minute * 60.0 + 60
        )
        return start if due - start <= end - due else end

    # Subscriptions

    def find(self, session: Session, account_id: int, symbol_id: int) -> _Subscription | None:
        return self._subs.get(symbol_id, {}).get((session, account_id))

    def subscribe(self, session: Session, account_id: int, spec: SymbolSpec, stamps: bool) -> None:
        sub = _Subscription(session, account_id, spec, stamps)
        self._subs.setdefault(spec.symbol_id, {})[(session, account_id)] = sub
        self._by_session.setdefault(session, {})[(spec.symbol_id, account_id)] = sub
        bid, ask = self._factory.broker.quote(spec)
        self._send(sub, self._spot(sub, bid, ask, self._factory.now_ms(), first=True))

    def unsubscribe(self, session: Session, account_id: int, symbol_id: int) -> None:
        subs = self._subs.get(symbol_id)
        if subs is not None:
            subs.pop((session, account_id), None)
            if not subs:
                del self._subs[symbol_id]
        own = self._by_session.get(session)
        if own is not None:
            own.pop((symbol_id, account_id), None)
            if not own:
                del self._by_session[session]

    def remove(self, session: Session, account_id: int | None = None) -> None:
        """Drop the subscriptions of one account (or all accounts) of ``session``."""
        for symbol_id, owner in list(self._by_session.get(session, ())):
            if account_id is None or owner == account_id:
                self.unsubscribe(session, owner, symbol_id)

    def subscribe_depth(self, sub: _Subscription) -> None:
        sub.depth = ()
        bid, ask = self._factory.broker.quote(sub.spec)
        self._send(sub, self._depth(sub, self._new_book(sub.spec, bid, ask)))

    def resync(self, session: Session) -> None:
        """Catch up ``session`` after it resumed reading: for every subscription that lost an
        event, one spot event with both sides (and the bars in progress) and a new book."""
        now_ms = self._factory.now_ms()
        for sub in list(self._by_session.get(session, {}).values()):
            if not (sub.stale or sub.depth_stale):
                continue
            bid, ask = self._walk.quote_at(sub.spec, now_ms)
            if sub.stale:
                self._send(sub, self._spot(sub, bid, ask, now_ms, first=True, bars={}))
            if sub.depth_stale and sub.depth is not None:
                self._send(sub, self._depth(sub, self._new_book(sub.spec, bid, ask)))

    # Ticking

    def tick(self, slot_ms: int | None = None) -> None:
        """Send what changed since the last tick: the prices at ``slot_ms`` (the start of the
        walk's slot this tick is for; the time the spot events carry), or now."""
        now_ms = self._factory.now_ms() if slot_ms is None else slot_ms
        batch: _Batch = {}
        for symbol_id in self._subs.keys() | self.watched:
            spec = SYMBOLS[symbol_id]
            quote = self._walk.quote_at(spec, now_ms)
            if self._last.get(symbol_id) == quote:
                continue
            self._last[symbol_id] = quote
            bid, ask = quote
            subs = self._subs.get(symbol_id)
            if subs:
                self._fan_out(spec, list(subs.values()), bid, ask, now_ms, batch)
            if self.on_quote is not None and symbol_id in self.watched:
                self._write(batch)  # execution events follow the prices that caused them
                self.on_quote(spec, bid, ask)
        self._write(batch)

    def _fan_out(
        self,
        spec: SymbolSpec,
        subs: list[_Subscription],
        bid: int,
        ask: int,
        now_ms: int,
        batch: _Batch,
    ) -> None:
        """Queue one symbol's new quote for its subscribers: frames shared between the
        subscribers that get identical events, encoded once."""
        stats = self._factory.stats
        spots: dict[_SpotKey, bytes] = {}
        depths: dict[tuple[int, tuple[int, ...]], bytes] = {}
        bars: dict[int, m.ProtoOATrendbar | None] = {}
        book: _Book | None = None
        for sub in subs:
            session = sub.session
            if session.flow.paused:
                sub.stale = True
                stats.market_events_dropped += 1
                if sub.depth is not None:
                    sub.depth_stale = True
                    stats.market_events_dropped += 1
                continue
            spot = self._spot(sub, bid, ask, now_ms, bars=bars, frames=spots)
            frames = batch.get(session)
            if frames is None:
                frames = batch[session] = []
            if spot:
                frames.append(spot)
            if sub.depth is not None:
                if book is None:
                    book = self._new_book(spec, bid, ask)
                depth = self._depth(sub, book, depths)
                if depth:
                    frames.append(depth)

    def _write(self, batch: _Batch) -> None:
        """Write the frames queued in ``batch``, one write per connection, and empty it."""
        for session, frames in batch.items():
            if frames:
                session.push_frames(frames)
        batch.clear()

    def _send(self, sub: _Subscription, frame: bytes | None) -> None:
        if frame:
            sub.session.push_frames([frame])

    def _spot(
        self,
        sub: _Subscription,
        bid: int,
        ask: int,
        now_ms: int,
        *,
        first: bool = False,
        bars: dict[int, m.ProtoOATrendbar | None] | None = None,
        frames: dict[_SpotKey, bytes] | None = None,
    ) -> bytes | None:
        """The spot frame ``sub`` gets for ``(bid, ask)``, noted as sent to it; ``None`` when
        the client is not reading (dropped: ``sub`` becomes stale) or nothing changed for it.

        ``bars`` caches the trendbars of this quote (``None``: no trendbars, as in the first
        event of a subscription); ``frames`` caches the frames already encoded for it.
        """
        if sub.session.flow.paused:
            sub.stale = True
            self._factory.stats.market_events_dropped += 1
            return None
        first = first or sub.stale
        send_bid = first or bid != sub.bid
        send_ask = first or ask != sub.ask
        periods = tuple(sorted(sub.periods)) if sub.periods and bars is not None else ()
        key = (sub.account_id, send_bid, send_ask, sub.timestamps, periods)
        frame = frames.get(key) if frames is not None else None
        if frame is None:
            frame = self._encode_spot(sub, key, bid, ask, now_ms, bars)
            if frames is not None:
                frames[key] = frame
        if not frame:
            return None
        if send_bid:
            sub.bid = bid
        if send_ask:
            sub.ask = ask
        sub.stale = False
        self._factory.stats.spot_events_sent += 1
        return frame

    def _encode_spot(
        self,
        sub: _Subscription,
        key: _SpotKey,
        bid: int,
        ask: int,
        now_ms: int,
        bars: dict[int, m.ProtoOATrendbar | None] | None,
    ) -> bytes:
        """The frame of the spot event ``key`` describes (empty if it would say nothing)."""
        account_id, send_bid, send_ask, stamps, periods = key
        event = m.ProtoOASpotEvent(ctidTraderAccountId=account_id, symbolId=sub.spec.symbol_id)
        if send_bid:
            event.bid = bid
        if send_ask:
            event.ask = ask
        if stamps:
            event.timestamp = now_ms
        for period in periods:
            assert bars is not None  # (no periods in the key without it)
            if period not in bars:
                current = self._bars.current(sub.spec, period, now_ms)
                bars[period] = None if current is None else trendbar_message(period, current)
            bar = bars[period]
            if bar is not None:
                event.trendbar.append(bar)
        if not (send_bid or send_ask or event.trendbar):
            return b""
        return m.encode_frame(event)

    def _new_book(self, spec: SymbolSpec, bid: int, ask: int) -> _Book:
        """A depth book around ``(bid, ask)`` with fresh quote ids."""
        levels = self._factory.config.depth_levels
        step = spec.point * max(1, spec.spread // 2)
        ids: list[int] = []
        quotes: list[m.ProtoOADepthQuote] = []
        for level in range(levels):
            size = (1 + mix64(bid, ask, level, spec.symbol_id) % 20) * spec.min_volume * 10
            for side, price in (("bid", bid - level * step), ("ask", ask + level * step)):
                self._depth_id += 1
                ids.append(self._depth_id)
                quote = m.ProtoOADepthQuote(id=self._depth_id, size=size)
                setattr(quote, side, price)
                quotes.append(quote)
        return tuple(ids), quotes

    def _depth(
        self,
        sub: _Subscription,
        book: _Book,
        frames: dict[tuple[int, tuple[int, ...]], bytes] | None = None,
    ) -> bytes | None:
        """The depth frame replacing what ``sub`` last got with ``book``, noted as sent to it;
        ``None`` when the client is not reading (dropped: ``sub`` becomes depth-stale)."""
        if sub.session.flow.paused:
            sub.depth_stale = True
            self._factory.stats.market_events_dropped += 1
            return None
        key = (sub.account_id, sub.depth or ())
        frame = frames.get(key) if frames is not None else None
        if frame is None:
            event = m.ProtoOADepthEvent(
                ctidTraderAccountId=sub.account_id,
                symbolId=sub.spec.symbol_id,
                deletedQuotes=key[1],
                newQuotes=book[1],
            )
            frame = m.encode_frame(event)
            if frames is not None:
                frames[key] = frame
        sub.depth, sub.depth_stale = book[0], False
        return frame


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
