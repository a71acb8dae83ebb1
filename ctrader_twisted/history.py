"""Historical trendbars and ticks for any time range, paged within the server's limits.

A range is cut into segments, fetched oldest first: one window for ticks, up to
:data:`SEGMENT_BARS` bar periods for trendbars (about 35 days of M1).  A segment is fetched
newest first, and no request spans more than one window, the longest range the server accepts in
one request (the limits the schema documented before ``hasMore`` existed: 3.5 days of M1-M5
bars, one week of ticks, ...).  The server answers with the newest chunk of the request's range
and ``hasMore``; the next request ends where the data already held begins and reaches back one
window (or to the segment's start), so every answer but a segment's oldest can be a full page.
For bars it ends just before the oldest bar held (one bar per timestamp); for ticks at the
oldest tick held, inclusive, and the ticks already held at that instant are dropped from the
answer, so several ticks in one millisecond are neither lost nor repeated.  An empty answer
that still says ``hasMore`` makes the pager split the rest of the range in two.

Requests are sent one at a time; the client's historical rate limiter (5 per second) paces them,
so this module never sleeps.  Results come oldest first, without duplicates or gaps.

Two forms for each kind of data:

* ``fetch_trendbars`` / ``fetch_ticks``: a Deferred firing with the whole list;
* ``iter_trendbars`` / ``iter_ticks``: async iterators of batches (one per page), for ranges
  too large to hold at once; ``stream_trendbars`` / ``stream_ticks`` call a function per batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Generic, TypeVar

from twisted.internet.defer import Deferred

from . import messages as m
from ._models_market import Bar, Tick, bar_from_trendbar, decode_ticks
from ._models_symbols import RequestClient
from ._models_units import Period, QuoteSide, ms_from_datetime
from .errors import ProtocolError

__all__ = [
    "MAX_TIMESTAMP",
    "SEGMENT_BARS",
    "TICK_WINDOW",
    "HistoryProgress",
    "ProgressCallback",
    "fetch_ticks",
    "fetch_trendbars",
    "iter_ticks",
    "iter_trendbars",
    "stream_ticks",
    "stream_trendbars",
    "trendbar_window",
]

#: Largest ``toTimestamp`` the protocol accepts (19 January 2038).
MAX_TIMESTAMP: Final = 2_147_483_646_000
#: Longest range of ticks asked for in one request.
TICK_WINDOW: Final = timedelta(weeks=1)
#: Length of a trendbar segment in bar periods: a range is fetched in segments of this length,
#: each newest first and held (as the compact protobuf messages) until complete, then delivered
#: oldest first, page by page.  About 35 days of M1; at most 50,000 bars held at once.
SEGMENT_BARS: Final = 50_000
#: Consecutive answers without new data (but with ``hasMore``) tolerated before giving up.
MAX_EMPTY_PAGES: Final = 64

_BAR_WINDOWS: Final = (
    (Period.M5, timedelta(milliseconds=302_400_000)),
    (Period.H1, timedelta(milliseconds=21_168_000_000)),
    (Period.D1, timedelta(milliseconds=31_622_400_000)),
    (Period.MN1, timedelta(milliseconds=158_112_000_000)),
)


def _bar_ms(period: Period) -> int:
    """Length of one bar in milliseconds (31 days for ``MN1``)."""
    duration = period.duration or timedelta(days=31)
    return duration // timedelta(milliseconds=1)


def trendbar_window(period: Period) -> timedelta:
    """Longest range of ``period`` bars asked for in one request.

    3.5 days up to M5, 245 days up to H1, 366 days up to D1, about 5 years for W1 and MN1.
    """
    for largest, window in _BAR_WINDOWS:
        if period <= largest:
            return window
    raise ValueError(f"unknown period {period!r}")  # pragma: no cover - every Period is listed


@dataclass(frozen=True, slots=True)
class HistoryProgress:
    """How far a download has got.

    :ivar fraction: share of the time range covered, from 0.0 to 1.0.
    :ivar items: bars or ticks received so far.
    :ivar requests: requests sent so far.
    """

    fraction: float
    items: int
    requests: int


#: Called after every page with the download's progress.
ProgressCallback = Callable[[HistoryProgress], None]

_T = TypeVar("_T", Bar, Tick)
#: What a segment holds while it is fetched: the decoded item, or for bars the compact
#: protobuf message, decoded into a :class:`Bar` only when its page is delivered.
_R = TypeVar("_R")
#: Fetch one page: (fromTimestamp, toTimestamp inclusive) -> (items oldest first, hasMore).
_PageFetcher = Callable[[int, int], Awaitable[tuple[list[_R], bool]]]


class _Pager(Generic[_R, _T]):
    """Walk a range segment by segment, and each segment newest first, page by page.

    :param stamp: an item's timestamp in milliseconds.
    :param deliver: turns one page of held items into the items delivered.
    """

    def __init__(
        self,
        fetch: _PageFetcher[_R],
        stamp: Callable[[_R], int],
        deliver: Callable[[list[_R]], list[_T]],
        start_ms: int,
        end_ms: int,
        window_ms: int,
        progress: ProgressCallback | None,
        *,
        segment_ms: int | None = None,
        unique_times: bool = False,
    ) -> None:
        self._fetch: _PageFetcher[_R] = fetch
        self._stamp = stamp
        self._deliver: Callable[[list[_R]], list[_T]] = deliver
        self._start = start_ms
        self._end = min(end_ms, MAX_TIMESTAMP + 1)
        self._window = window_ms
        self._segment = max(window_ms, segment_ms or window_ms)
        # Bars: one per timestamp, so the next page ends just before the oldest one held.
        # Ticks: several may share a millisecond, so it ends at it, inclusive (see below).
        self._unique_times = unique_times
        self._progress = progress
        self._requests = 0
        self._received = 0
        self._empty_streak = 0
        self._segment_lo = self._segment_hi = start_ms

    async def batches(self) -> AsyncIterator[list[_T]]:
        """One batch per page, oldest first; a segment's pages once it is complete."""
        lo = self._start
        while lo < self._end:
            hi = min(lo + self._segment, self._end) - 1
            self._segment_lo, self._segment_hi = lo, hi
            pages = await self._fetch_segment(lo, hi)  # newest first
            self._report(hi + 1)
            while pages:
                yield self._deliver(pages.pop())  # and no longer held
            lo = hi + 1
        if self._requests == 0:
            self._report(self._end)

    async def _fetch_segment(self, lo: int, hi: int) -> list[list[_R]]:
        """The non-empty pages of ``[lo, hi]``, newest first, each oldest first.

        Each request spans at most one window and ends where the data already held begins, so
        every answer but the segment's oldest can be a full page.
        """
        pages: list[list[_R]] = []  # newest first
        pending = [(lo, hi)]  # a stack: the newest range is on top
        while pending:
            low, to = pending.pop()
            held = 0  # items already held whose timestamp equals ``to``
            while to >= low:
                start = max(low, to - self._window + 1)
                raw, more = await self._page(start, to)
                fresh = self._drop_held(raw, to, held)
                self._received += len(fresh)
                self._report(self._segment_lo + (self._segment_hi - to))
                if fresh:
                    self._empty_streak = 0
                    pages.append(fresh)
                if not more:  # ``[start, to]`` is complete: on to the next older window
                    to, held = start - 1, 0
                    continue
                if fresh:
                    oldest = self._stamp(fresh[0])
                    if self._unique_times:
                        to = oldest - 1
                        continue
                    held = self._count_at(fresh, oldest) + (held if oldest == to else 0)
                    to = oldest
                    continue
                self._no_progress()
                if held:
                    to, held = to - 1, 0
                elif to > start:
                    middle = start + (to - start) // 2
                    pending += [(low, middle), (middle + 1, to)]
                    break
                else:
                    to, held = start - 1, 0
        return pages

    async def _page(self, low: int, to: int) -> tuple[list[_R], bool]:
        self._requests += 1
        items, more = await self._fetch(low, to)
        stamp = self._stamp
        return [i for i in items if low <= stamp(i) <= to], more

    def _no_progress(self) -> None:
        self._empty_streak += 1
        if self._empty_streak > MAX_EMPTY_PAGES:
            raise ProtocolError("the server keeps reporting more history but sends none")

    def _report(self, covered_until: int) -> None:
        """Tell the progress callback; ``covered_until`` is a point in the range."""
        if self._progress is None:
            return
        total = self._end - self._start
        fraction = 1.0 if total <= 0 else min(max((covered_until - self._start) / total, 0.0), 1.0)
        self._progress(HistoryProgress(fraction, self._received, self._requests))

    def _count_at(self, items: list[_R], timestamp: int) -> int:
        stamp = self._stamp
        return sum(1 for item in items if stamp(item) == timestamp)

    def _drop_held(self, items: list[_R], to: int, held: int) -> list[_R]:
        """Drop from an oldest-first page the ``held`` newest items stamped ``to`` (held)."""
        if not held:
            return items
        drop = min(held, self._count_at(items, to))
        return items[: len(items) - drop] if drop else items


def _trendbar_ms(trendbar: m.ProtoOATrendbar) -> int:
    return trendbar.utcTimestampInMinutes * 60_000


def _tick_ms(tick: Tick) -> int:
    return tick.timestamp_ms


def _same(ticks: list[Tick]) -> list[Tick]:
    return ticks


def _range_ms(start: datetime, end: datetime) -> tuple[int, int]:
    start_ms, end_ms = ms_from_datetime(start), ms_from_datetime(end)
    return max(start_ms, 0), end_ms


def _window_ms(window: timedelta) -> int:
    window_ms = window // timedelta(milliseconds=1)
    if window_ms <= 0:
        raise ValueError("window must be positive")
    return window_ms


def iter_trendbars(
    client: RequestClient,
    account_id: int,
    symbol_id: int,
    period: Period | int,
    start: datetime,
    end: datetime,
    *,
    progress: ProgressCallback | None = None,
    digits: int | None = None,
    window: timedelta | None = None,
    timeout: float | None = None,
) -> AsyncIterator[list[Bar]]:
    """Bars of ``period`` whose open time lies in ``[start, end)``, as batches, oldest first.

    Use it inside an ``async def`` run by ``Deferred.fromCoroutine``::

        async for batch in iter_trendbars(client, account, 1, Period.M1, start, end):
            store(batch)

    Each batch is one page of the server's answers: non-empty and later than the one before.
    At most one segment (:data:`SEGMENT_BARS` periods) is held at once, so a year of M1 bars
    never is.  Errors are raised from the iteration as described in :func:`fetch_trendbars`.
    """
    bar_period = Period(period)
    start_ms, end_ms = _range_ms(start, end)

    async def fetch(low: int, to: int) -> tuple[list[m.ProtoOATrendbar], bool]:
        request = m.ProtoOAGetTrendbarsReq(
            ctidTraderAccountId=account_id,
            symbolId=symbol_id,
            period=m.ProtoOATrendbarPeriod.ValueType(int(bar_period)),
            fromTimestamp=low,
            toTimestamp=to,
        )
        response = await client.request(request, timeout=timeout)
        return sorted(response.trendbar, key=_trendbar_ms), response.hasMore

    def deliver(page: list[m.ProtoOATrendbar]) -> list[Bar]:
        return [bar_from_trendbar(tb, bar_period, digits=digits) for tb in page]

    size = _window_ms(window if window is not None else trendbar_window(bar_period))
    segment = SEGMENT_BARS * _bar_ms(bar_period)
    pager = _Pager(
        fetch, _trendbar_ms, deliver, start_ms, end_ms, size, progress,
        segment_ms=segment, unique_times=True,
    )  # fmt: skip
    return pager.batches()


def iter_ticks(
    client: RequestClient,
    account_id: int,
    symbol_id: int,
    side: QuoteSide | int,
    start: datetime,
    end: datetime,
    *,
    progress: ProgressCallback | None = None,
    digits: int | None = None,
    window: timedelta | None = None,
    timeout: float | None = None,
) -> AsyncIterator[list[Tick]]:
    """Ticks of one side quoted in ``[start, end)``, as batches, oldest first.

    Like :func:`iter_trendbars`; errors are raised as described in :func:`fetch_ticks`.
    """
    quote_side = QuoteSide(side)
    start_ms, end_ms = _range_ms(start, end)

    async def fetch(low: int, to: int) -> tuple[list[Tick], bool]:
        request = m.ProtoOAGetTickDataReq(
            ctidTraderAccountId=account_id,
            symbolId=symbol_id,
            type=m.ProtoOAQuoteType.ValueType(int(quote_side)),
            fromTimestamp=low,
            toTimestamp=to,
        )
        response = await client.request(request, timeout=timeout)
        return decode_ticks(response.tickData, quote_side, digits=digits), response.hasMore

    size = _window_ms(window if window is not None else TICK_WINDOW)
    return _Pager(fetch, _tick_ms, _same, start_ms, end_ms, size, progress).batches()


async def _collect(batches: AsyncIterator[list[_T]]) -> list[_T]:
    result: list[_T] = []
    async for batch in batches:
        result.extend(batch)
    return result


async def _feed(batches: AsyncIterator[list[_T]], on_batch: Callable[[list[_T]], object]) -> int:
    count = 0
    async for batch in batches:
        on_batch(batch)
        count += len(batch)
    return count


def fetch_trendbars(
    client: RequestClient,
    account_id: int,
    symbol_id: int,
    period: Period | int,
    start: datetime,
    end: datetime,
    *,
    progress: ProgressCallback | None = None,
    digits: int | None = None,
    window: timedelta | None = None,
    timeout: float | None = None,
) -> Deferred[list[Bar]]:
    """Download every ``period`` bar whose open time lies in ``[start, end)``.

    :param client: a started :class:`~ctrader_twisted.Client` with ``account_id`` authorized.
    :param start: aware datetime, inclusive.
    :param end: aware datetime, exclusive (clipped to the protocol's 2038 limit).
    :param progress: called after every page with a :class:`HistoryProgress`.
    :param digits: the symbol's digits, to show prices with exactly that many places.
    :param window: longest range per request (default: :func:`trendbar_window`).
    :param timeout: per-request timeout (default: the client's).
    :returns: a Deferred firing with the bars, oldest first, without duplicates; an empty list
        for an empty range.  It fails with :class:`~ctrader_twisted.errors.OpenApiError` if the
        server refuses a request (e.g. ``INCORRECT_BOUNDARIES``, an unknown symbol, or
        :class:`~ctrader_twisted.errors.RateLimited`), with the client's ``RequestTimeout``,
        ``NotConnected`` or ``ConnectionLost``, with
        :class:`~ctrader_twisted.errors.ProtocolError` if the server keeps announcing data it
        never sends, and with whatever ``progress`` raises.
    :raises ValueError: at once, for naive datetimes or a non-positive ``window``.
    """
    batches = iter_trendbars(
        client,
        account_id,
        symbol_id,
        period,
        start,
        end,
        progress=progress,
        digits=digits,
        window=window,
        timeout=timeout,
    )
    return Deferred.fromCoroutine(_collect(batches))


def fetch_ticks(
    client: RequestClient,
    account_id: int,
    symbol_id: int,
    side: QuoteSide | int,
    start: datetime,
    end: datetime,
    *,
    progress: ProgressCallback | None = None,
    digits: int | None = None,
    window: timedelta | None = None,
    timeout: float | None = None,
) -> Deferred[list[Tick]]:
    """Download every tick of ``side`` (bid or ask) quoted in ``[start, end)``.

    Parameters as for :func:`fetch_trendbars` (``window`` defaults to :data:`TICK_WINDOW`).

    :returns: a Deferred firing with the ticks, oldest first; it fails as
        :func:`fetch_trendbars` does.
    :raises ValueError: at once, for naive datetimes or a non-positive ``window``.
    """
    batches = iter_ticks(
        client,
        account_id,
        symbol_id,
        side,
        start,
        end,
        progress=progress,
        digits=digits,
        window=window,
        timeout=timeout,
    )
    return Deferred.fromCoroutine(_collect(batches))


def stream_trendbars(
    batches: AsyncIterator[list[Bar]], on_batch: Callable[[list[Bar]], object]
) -> Deferred[int]:
    """Call ``on_batch`` with each batch of an :func:`iter_trendbars` iterator, in order.

    :returns: a Deferred firing with the number of bars delivered once the range is done; it
        fails as :func:`fetch_trendbars` does, or with what ``on_batch`` raises.
    """
    return Deferred.fromCoroutine(_feed(batches, on_batch))


def stream_ticks(
    batches: AsyncIterator[list[Tick]], on_batch: Callable[[list[Tick]], object]
) -> Deferred[int]:
    """Call ``on_batch`` with each batch of an :func:`iter_ticks` iterator, in order.

    :returns: a Deferred firing with the number of ticks delivered; it fails as
        :func:`fetch_ticks` does, or with what ``on_batch`` raises.
    """
    return Deferred.fromCoroutine(_feed(batches, on_batch))
