"""History paging against a scripted in-memory server (no reactor, no sockets)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.errors import ProtocolError
from ctrader_twisted.history import (
    SEGMENT_BARS,
    HistoryProgress,
    fetch_ticks,
    fetch_trendbars,
    iter_trendbars,
    stream_ticks,
    stream_trendbars,
    trendbar_window,
)
from ctrader_twisted.models import Period, QuoteSide, Tick, encode_ticks

UTC = timezone.utc
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_MS = 1_704_067_200_000
MINUTE = 60_000


class FakeHistoryServer:
    """Serves the newest ``chunk`` items of a range with ``hasMore``, like the real server.

    ``ticks`` are ``(ms, price)`` pairs; bars are one per entry of ``bar_minutes``.
    ``empty_pages`` makes the first N answers empty while still saying ``hasMore``.
    """

    def __init__(
        self,
        *,
        ticks: list[tuple[int, int]] = (),  # type: ignore[assignment]
        bar_minutes: list[int] = (),  # type: ignore[assignment]
        chunk: int = 10,
        empty_pages: int = 0,
        always_more: bool = False,
    ) -> None:
        self.ticks = sorted(ticks)
        self.bar_minutes = sorted(bar_minutes)
        self.chunk = chunk
        self.empty_pages = empty_pages
        self.always_more = always_more
        self.requests: list[tuple[int, int]] = []

    def request(self, message: Message, *, timeout: float | None = None) -> Deferred[Message]:
        assert isinstance(message, (m.ProtoOAGetTrendbarsReq, m.ProtoOAGetTickDataReq))
        low, high = message.fromTimestamp, message.toTimestamp
        self.requests.append((low, high))
        if isinstance(message, m.ProtoOAGetTickDataReq):
            first = bisect_left(self.ticks, (low, -1))
            inside = self.ticks[first : bisect_left(self.ticks, (high + 1, -1))]
        else:
            lo_min, hi_min = -(-low // MINUTE), high // MINUTE  # minutes stamped in range
            first = bisect_left(self.bar_minutes, lo_min)
            chosen = self.bar_minutes[first : bisect_right(self.bar_minutes, hi_min)]
            inside = [(b * MINUTE, b) for b in chosen]
        page, more = inside[-self.chunk :], len(inside) > self.chunk
        if self.empty_pages or self.always_more:
            self.empty_pages = max(self.empty_pages - 1, 0)
            page, more = [], True
        if isinstance(message, m.ProtoOAGetTickDataReq):
            return succeed(self.tick_res(page, more))
        return succeed(self.bar_res(message.period, page, more))

    def tick_res(self, page: list[tuple[int, int]], more: bool) -> Message:
        ticks = [
            Tick(T0 + timedelta(milliseconds=ms - T0_MS), Decimal(p).scaleb(-5), QuoteSide.BID)
            for ms, p in page
        ]
        return m.ProtoOAGetTickDataRes(
            ctidTraderAccountId=1, tickData=encode_ticks(ticks), hasMore=more
        )

    def bar_res(self, period: int, page: list[tuple[int, int]], more: bool) -> Message:
        bars = [
            m.ProtoOATrendbar(volume=1, low=100000 + b % 7, deltaHigh=3, utcTimestampInMinutes=b)
            for _, b in page
        ]
        return m.ProtoOAGetTrendbarsRes(
            ctidTraderAccountId=1,
            period=period,
            trendbar=bars,
            hasMore=more,  # type: ignore[arg-type]
        )


def minute_of(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) // 60


class TrendbarPagingTests(SynchronousTestCase):
    def test_many_pages_exact_and_ordered(self) -> None:
        first = minute_of(T0)
        minutes = [first + i for i in range(0, 200) if i % 13 != 5]
        server = FakeHistoryServer(bar_minutes=minutes, chunk=17)
        bars = self.successResultOf(
            fetch_trendbars(server, 1, 1, Period.M1, T0, T0 + timedelta(minutes=200))
        )
        self.assertEqual([minute_of(b.time) for b in bars], minutes)
        self.assertGreater(len(server.requests), len(minutes) // 17)
        self.assertTrue(all(b.period is Period.M1 for b in bars))

    def test_range_is_half_open(self) -> None:
        first = minute_of(T0)
        server = FakeHistoryServer(bar_minutes=list(range(first - 5, first + 15)))
        bars = self.successResultOf(
            fetch_trendbars(server, 1, 1, 1, T0, T0 + timedelta(minutes=10))
        )
        self.assertEqual(len(bars), 10)
        self.assertEqual(bars[0].time, T0)
        self.assertEqual(bars[-1].time, T0 + timedelta(minutes=9))

    def test_windows_bound_every_request(self) -> None:
        first = minute_of(T0)
        minutes = list(range(first, first + 10 * 1440, 60))
        server = FakeHistoryServer(bar_minutes=minutes, chunk=1000)
        end = T0 + timedelta(days=10)
        bars = self.successResultOf(fetch_trendbars(server, 1, 1, Period.M1, T0, end))
        self.assertEqual(len(bars), len(minutes))
        limit = trendbar_window(Period.M1) // timedelta(milliseconds=1)
        self.assertTrue(all(hi - lo < limit for lo, hi in server.requests))
        self.assertEqual(len(server.requests), 3)  # 3.5 + 3.5 + 3 days

    def test_empty_range_sends_nothing(self) -> None:
        server = FakeHistoryServer()
        seen: list[HistoryProgress] = []
        result = fetch_trendbars(server, 1, 1, Period.H1, T0, T0, progress=seen.append)
        self.assertEqual(self.successResultOf(result), [])
        self.assertEqual(server.requests, [])
        self.assertEqual(seen, [HistoryProgress(1.0, 0, 0)])

    def test_range_without_data(self) -> None:
        server = FakeHistoryServer()
        bars = self.successResultOf(
            fetch_trendbars(server, 1, 1, Period.M5, T0, T0 + timedelta(days=1))
        )
        self.assertEqual(bars, [])
        self.assertEqual(len(server.requests), 1)

    def test_progress_is_monotonic_and_complete(self) -> None:
        first = minute_of(T0)
        server = FakeHistoryServer(bar_minutes=list(range(first, first + 9000)), chunk=500)
        seen: list[HistoryProgress] = []
        end = T0 + timedelta(minutes=9000)
        bars = self.successResultOf(
            fetch_trendbars(server, 1, 1, Period.M1, T0, end, progress=seen.append)
        )
        fractions = [p.fraction for p in seen]
        self.assertEqual(fractions, sorted(fractions))
        self.assertEqual(fractions[-1], 1.0)
        self.assertEqual(seen[-1].requests, len(server.requests))
        self.assertGreaterEqual(seen[-1].items, len(bars))

    def test_empty_pages_with_has_more_are_split(self) -> None:
        first = minute_of(T0)
        minutes = [first + 3, first + 700, first + 701]
        server = FakeHistoryServer(bar_minutes=minutes, empty_pages=3)
        bars = self.successResultOf(
            fetch_trendbars(server, 1, 1, Period.M1, T0, T0 + timedelta(days=1))
        )
        self.assertEqual([minute_of(b.time) for b in bars], minutes)

    def test_server_that_never_sends_fails(self) -> None:
        server = FakeHistoryServer(always_more=True)
        result = fetch_trendbars(server, 1, 1, Period.M1, T0, T0 + timedelta(days=1))
        self.failureResultOf(result, ProtocolError)
        self.assertLess(len(server.requests), 100)

    def test_naive_datetimes_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            fetch_trendbars(FakeHistoryServer(), 1, 1, 1, datetime(2024, 1, 1), T0)
        with self.assertRaises(ValueError):
            fetch_trendbars(FakeHistoryServer(), 1, 1, 1, T0, T0, window=timedelta(0))

    def test_streaming_delivers_batches_in_order(self) -> None:
        first = minute_of(T0)
        server = FakeHistoryServer(bar_minutes=list(range(first, first + 120_000)), chunk=1000)
        batches: list[int] = []
        times: list[datetime] = []
        requests_at_batch: list[int] = []

        def take(batch: list[object]) -> None:
            batches.append(len(batch))
            times.extend(b.time for b in batch)  # type: ignore[attr-defined]
            requests_at_batch.append(len(server.requests))

        end = T0 + timedelta(minutes=120_000)
        total = stream_trendbars(iter_trendbars(server, 1, 1, Period.M1, T0, end), take)
        self.assertEqual(self.successResultOf(total), 120_000)
        self.assertEqual(batches, [1000] * 120)  # one per page
        self.assertEqual(times, [T0 + timedelta(minutes=i) for i in range(120_000)])
        self.assertEqual(len(server.requests), 120)  # every answer a full page
        # Delivered segment by segment: never more than SEGMENT_BARS bars fetched and held.
        per_segment = SEGMENT_BARS // 1000
        self.assertEqual(requests_at_batch[0], per_segment)
        self.assertEqual(requests_at_batch[per_segment], 2 * per_segment)


class TickPagingTests(SynchronousTestCase):
    def test_same_millisecond_ticks_across_pages(self) -> None:
        ticks = [(T0_MS + i // 4 * 10, 110000 + i) for i in range(103)]
        server = FakeHistoryServer(ticks=ticks, chunk=7)
        result = self.successResultOf(
            fetch_ticks(server, 1, 1, QuoteSide.BID, T0, T0 + timedelta(seconds=1))
        )
        self.assertEqual([(t.timestamp_ms, int(t.price.scaleb(5))) for t in result], ticks)

    def test_more_same_millisecond_ticks_than_a_page(self) -> None:
        ticks = [(T0_MS + 5, 110000 + i) for i in range(10)] + [(T0_MS + 1, 1), (T0_MS + 9, 2)]
        server = FakeHistoryServer(ticks=ticks, chunk=4)
        result = self.successResultOf(
            fetch_ticks(server, 1, 1, QuoteSide.ASK, T0, T0 + timedelta(seconds=1))
        )
        stamps = [t.timestamp_ms - T0_MS for t in result]
        self.assertEqual(stamps[0], 1)
        self.assertEqual(stamps[-1], 9)
        self.assertEqual(stamps, sorted(stamps))
        self.assertTrue(all(t.side is QuoteSide.ASK for t in result))

    def test_tick_windows(self) -> None:
        ticks = [(T0_MS + day * 86_400_000, 1000 + day) for day in range(20)]
        server = FakeHistoryServer(ticks=ticks, chunk=100)
        seen: list[list[Tick]] = []
        from ctrader_twisted.history import iter_ticks

        stream = iter_ticks(server, 1, 1, 1, T0, T0 + timedelta(days=20))
        self.assertEqual(self.successResultOf(stream_ticks(stream, seen.append)), 20)
        self.assertEqual([len(batch) for batch in seen], [7, 7, 6])
        self.assertEqual(len(server.requests), 3)

    def test_digits(self) -> None:
        server = FakeHistoryServer(ticks=[(T0_MS, 110004)])
        (tick,) = self.successResultOf(
            fetch_ticks(server, 1, 1, 1, T0, T0 + timedelta(seconds=1), digits=4)
        )
        self.assertEqual(str(tick.price), "1.1000")
