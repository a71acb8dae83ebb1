"""Sandbox history: deterministic trendbars and ticks for any range, paging and boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import SANDBOX_SYMBOLS, SandboxConfig
from ctrader_twisted.sandbox.history import aggregate, bar_start
from ctrader_twisted.sandbox.market import PriceWalk
from tests.test_sandbox_support import START, USD_ACCOUNT, Wire, make_factory

A = USD_ACCOUNT
P = m.ProtoOATrendbarPeriod
NOW_MS = int(START * 1000)
HOUR = 3_600_000


def bars_req(period: int, from_ms: int, to_ms: int, **extra: int) -> m.ProtoOAGetTrendbarsReq:
    return m.ProtoOAGetTrendbarsReq(
        ctidTraderAccountId=A, symbolId=1, period=period,  # type: ignore[arg-type]
        fromTimestamp=from_ms, toTimestamp=to_ms, **extra,
    )  # fmt: skip


def ticks_req(from_ms: int, to_ms: int, side: int = 1) -> m.ProtoOAGetTickDataReq:
    return m.ProtoOAGetTickDataReq(
        ctidTraderAccountId=A, symbolId=1, type=side,  # type: ignore[arg-type]
        fromTimestamp=from_ms, toTimestamp=to_ms,
    )  # fmt: skip


def decode_ticks(res: m.ProtoOAGetTickDataRes) -> list[tuple[int, int]]:
    out, when, price = [], 0, 0
    for tick in res.tickData:
        when, price = when + tick.timestamp, price + tick.tick
        out.append((when, price))
    return out


class DeterminismTests(SynchronousTestCase):
    def test_same_seed_same_bars_in_any_session(self) -> None:
        one = Wire(make_factory(SandboxConfig(seed=5))).ready(A)
        two = Wire(make_factory(SandboxConfig(seed=5), start=START + 86400 * 30)).ready(A)
        other = Wire(make_factory(SandboxConfig(seed=6))).ready(A)
        req = bars_req(P.M5, NOW_MS - 4 * HOUR, NOW_MS - HOUR)
        first = one.one(req, m.ProtoOAGetTrendbarsRes).trendbar
        self.assertEqual(len(first), 36)
        self.assertEqual(list(first), list(two.one(req, m.ProtoOAGetTrendbarsRes).trendbar))
        self.assertNotEqual(list(first), list(other.one(req, m.ProtoOAGetTrendbarsRes).trendbar))

    def test_far_past_history_exists(self) -> None:
        wire = Wire().ready(A)
        year_2015 = 1_420_200_000_000  # Friday 2015-01-02 12:00 UTC
        res = wire.one(bars_req(P.H1, year_2015 - 6 * HOUR, year_2015), m.ProtoOAGetTrendbarsRes)
        self.assertEqual(len(res.trendbar), 7)
        self.assertEqual(res.trendbar[-1].utcTimestampInMinutes, year_2015 // 60_000)

    def test_bars_agree_with_ticks(self) -> None:
        wire = Wire().ready(A)
        start = NOW_MS - 2 * HOUR - (NOW_MS % 60_000)
        (bar,) = wire.one(bars_req(P.M1, start, start), m.ProtoOAGetTrendbarsRes).trendbar
        ticks = decode_ticks(wire.one(ticks_req(start, start + 59_999), m.ProtoOAGetTickDataRes))
        prices = [p for _, p in reversed(ticks)]
        self.assertEqual(len(prices), bar.volume)
        self.assertEqual(prices[0], bar.low + bar.deltaOpen)
        self.assertEqual(prices[-1], bar.low + bar.deltaClose)
        self.assertEqual((min(prices), max(prices)), (bar.low, bar.low + bar.deltaHigh))

    @settings(max_examples=15, deadline=None)
    @given(st.integers(0, 2**31), st.integers(28_000_000, 29_000_000), st.sampled_from([2, 5, 9]))
    def test_higher_periods_aggregate_minute_bars(
        self, seed: int, minute: int, period: int
    ) -> None:
        walk = PriceWalk(seed, 1000)
        spec = SANDBOX_SYMBOLS[13]
        start = bar_start(period, minute)
        length = {2: 2, 5: 5, 9: 60}[period]
        whole = aggregate(walk, spec, start, start + length)
        parts = [aggregate(walk, spec, m_, m_ + 1) for m_ in range(start, start + length)]
        opened = [p for p in parts if p is not None]
        if whole is None:
            self.assertEqual(opened, [])
            return
        self.assertEqual(whole.high, max(p.high for p in opened))
        self.assertEqual(whole.low, min(p.low for p in opened))
        self.assertEqual((whole.open, whole.close), (opened[0].open, opened[-1].close))


class PagingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire(trendbar_chunk=50, tick_chunk=100, historical_rate_limit=0).ready(A)

    def test_trendbars_page_backwards_without_gaps(self) -> None:
        from_ms, to_ms = NOW_MS - 6 * HOUR, NOW_MS - HOUR
        seen: list[int] = []
        for _ in range(20):
            res = self.wire.one(bars_req(P.M1, from_ms, to_ms), m.ProtoOAGetTrendbarsRes)
            stamps = [b.utcTimestampInMinutes for b in res.trendbar]
            self.assertEqual(stamps, sorted(stamps))
            seen = stamps + seen
            if not res.hasMore:
                break
            to_ms = stamps[0] * 60_000 - 1
        self.assertEqual(len(seen), 300)
        self.assertEqual(seen, list(range(seen[0], seen[0] + 300)))

    def test_count_limits_bars_back_from_to(self) -> None:
        res = self.wire.one(bars_req(P.M5, 0, NOW_MS, count=10), m.ProtoOAGetTrendbarsRes)
        self.assertEqual(len(res.trendbar), 10)
        self.assertFalse(res.hasMore)
        self.assertEqual(res.trendbar[-1].utcTimestampInMinutes, bar_start(P.M5, NOW_MS // 60_000))

    def test_ticks_newest_first_and_page(self) -> None:
        from_ms, to_ms = NOW_MS - 300_000, NOW_MS - 1
        collected: list[tuple[int, int]] = []
        for _ in range(10):
            res = self.wire.one(ticks_req(from_ms, to_ms), m.ProtoOAGetTickDataRes)
            ticks = decode_ticks(res)
            self.assertEqual(ticks, sorted(ticks, reverse=True))
            collected += ticks
            if not res.hasMore:
                break
            to_ms = ticks[-1][0] - 1
        self.assertEqual(len(collected), 300)
        self.assertEqual(len({t for t, _ in collected}), 300)

    def test_ask_ticks_are_above_bid_ticks(self) -> None:
        bids = decode_ticks(
            self.wire.one(ticks_req(NOW_MS - 10_000, NOW_MS), m.ProtoOAGetTickDataRes)
        )
        asks = decode_ticks(
            self.wire.one(ticks_req(NOW_MS - 10_000, NOW_MS, 2), m.ProtoOAGetTickDataRes)
        )
        for (t1, bid), (t2, ask) in zip(bids, asks, strict=True):
            self.assertEqual(t1, t2)
            self.assertGreater(ask, bid)

    def test_weekly_and_monthly_bars(self) -> None:
        res = self.wire.one(
            bars_req(P.W1, NOW_MS - 21 * 86_400_000, NOW_MS), m.ProtoOAGetTrendbarsRes
        )
        self.assertGreaterEqual(len(res.trendbar), 3)
        res = self.wire.one(
            bars_req(P.MN1, NOW_MS - 40 * 86_400_000, NOW_MS), m.ProtoOAGetTrendbarsRes
        )
        self.assertTrue(res.trendbar)

    def test_errors(self) -> None:
        self.assertEqual(
            self.wire.error(bars_req(P.H1, NOW_MS, NOW_MS - 1)), "INCORRECT_BOUNDARIES"
        )
        self.assertEqual(
            self.wire.error(bars_req(P.H1, 0, 2_147_483_647_000)), "INCORRECT_BOUNDARIES"
        )
        self.assertEqual(self.wire.error(ticks_req(NOW_MS, NOW_MS - 1)), "INCORRECT_BOUNDARIES")
        missing = ticks_req(0, NOW_MS)
        missing.symbolId = 4242
        self.assertEqual(self.wire.error(missing), "SYMBOL_NOT_FOUND")

    def test_no_bars_at_weekends(self) -> None:
        saturday = NOW_MS + 4 * 86_400_000
        res = self.wire.one(bars_req(P.H1, saturday - 6 * HOUR, saturday), m.ProtoOAGetTrendbarsRes)
        self.assertEqual(list(res.trendbar), [])
