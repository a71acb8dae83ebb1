"""Market data models: trendbars, ticks and spot quotes."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.models import (
    Bar,
    Period,
    QuoteSide,
    QuoteTracker,
    Tick,
    bar_from_trendbar,
    bars_from_spot,
    decode_ticks,
    encode_ticks,
    trendbar_from_bar,
)

UTC = timezone.utc


def trendbar(**fields: int) -> m.ProtoOATrendbar:
    base = {"volume": 42, "low": 110000, "utcTimestampInMinutes": 28_000_000}
    base.update(fields)
    return m.ProtoOATrendbar(**base)  # type: ignore[arg-type]


class BarTests(SynchronousTestCase):
    def test_decode(self) -> None:
        bar = bar_from_trendbar(trendbar(deltaOpen=10, deltaClose=20, deltaHigh=35, period=9))
        self.assertEqual(bar.time, datetime(2023, 3, 28, 10, 40, tzinfo=UTC))
        self.assertEqual(bar.time.tzinfo, UTC)
        self.assertEqual(
            (bar.open, bar.high, bar.low, bar.close),
            (Decimal("1.10010"), Decimal("1.10035"), Decimal("1.10000"), Decimal("1.10020")),
        )
        self.assertEqual(bar.volume, 42)
        self.assertIs(bar.period, Period.H1)
        self.assertEqual(bar.end, bar.time + timedelta(hours=1))
        self.assertEqual(bar.timestamp_ms, 28_000_000 * 60_000)

    def test_period_override_and_digits(self) -> None:
        bar = bar_from_trendbar(trendbar(deltaHigh=5), Period.D1, digits=4)
        self.assertIs(bar.period, Period.D1)
        self.assertEqual(str(bar.low), "1.1000")
        self.assertEqual(str(bar.high), "1.1001")

    def test_default_period_is_m1(self) -> None:
        self.assertIs(bar_from_trendbar(trendbar()).period, Period.M1)

    def test_zero_delta_high_server_bug_is_guarded(self) -> None:
        bar = bar_from_trendbar(trendbar(deltaOpen=30, deltaClose=0, deltaHigh=0))
        self.assertEqual(bar.high, bar.open)
        self.assertEqual(bar.high, Decimal("1.10030"))
        bar = bar_from_trendbar(trendbar(deltaOpen=0, deltaClose=25, deltaHigh=0))
        self.assertEqual(bar.high, Decimal("1.10025"))

    def test_flat_bar(self) -> None:
        bar = bar_from_trendbar(trendbar())
        self.assertEqual({bar.open, bar.high, bar.low, bar.close}, {Decimal("1.10000")})

    def test_frozen_and_slotted(self) -> None:
        bar = bar_from_trendbar(trendbar())
        with self.assertRaises(dataclasses.FrozenInstanceError):
            bar.volume = 1  # type: ignore[misc]
        self.assertFalse(hasattr(bar, "__dict__"))

    def test_encode_refuses_inconsistent_bar(self) -> None:
        bar = Bar(
            datetime(2024, 1, 1, tzinfo=UTC), Decimal(1), Decimal(2), Decimal(3), Decimal(2), 1
        )
        with self.assertRaises(ValueError):
            trendbar_from_bar(bar)

    def test_time_out_of_range(self) -> None:
        with self.assertRaises(ValueError):
            bar_from_trendbar(trendbar(utcTimestampInMinutes=2**32 - 1))

    def test_monthly_bar_has_no_end(self) -> None:
        self.assertIsNone(bar_from_trendbar(trendbar(period=14)).end)

    @given(
        st.integers(min_value=0, max_value=2**40),
        st.lists(st.integers(min_value=0, max_value=2**20), min_size=3, max_size=3),
        st.integers(min_value=0, max_value=2**31),
        st.integers(min_value=0, max_value=35_791_394),  # up to the protocol's 2038 limit
        st.sampled_from(list(Period)),
    )
    def test_round_trip(
        self, low: int, deltas: list[int], volume: int, minutes: int, period: Period
    ) -> None:
        d_open, d_close, extra = deltas
        d_high = max(d_open, d_close) + extra
        wire = m.ProtoOATrendbar(
            volume=volume,
            period=int(period),  # type: ignore[arg-type]
            low=low,
            deltaOpen=d_open,
            deltaClose=d_close,
            deltaHigh=d_high,
            utcTimestampInMinutes=minutes,
        )
        bar = bar_from_trendbar(wire)
        self.assertTrue(bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high)
        self.assertEqual(trendbar_from_bar(bar), wire)

    def test_live_bars_from_spot(self) -> None:
        event = m.ProtoOASpotEvent(
            ctidTraderAccountId=1, symbolId=1, trendbar=[trendbar(deltaHigh=3, period=5)]
        )
        (bar,) = bars_from_spot(event)
        self.assertIs(bar.period, Period.M5)
        self.assertEqual(bars_from_spot(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1)), [])


def wire_ticks(pairs: list[tuple[int, int]]) -> list[m.ProtoOATickData]:
    return [m.ProtoOATickData(timestamp=t, tick=p) for t, p in pairs]


class TickTests(SynchronousTestCase):
    def test_decode_newest_first_with_negative_deltas(self) -> None:
        data = wire_ticks([(1_700_000_003_000, 110020), (-1000, -15), (-2000, 5)])
        ticks = decode_ticks(data, QuoteSide.BID)
        self.assertEqual(
            [t.timestamp_ms for t in ticks],
            [1_700_000_000_000, 1_700_000_002_000, 1_700_000_003_000],
        )
        self.assertEqual(
            [t.price for t in ticks], [Decimal("1.10010"), Decimal("1.10005"), Decimal("1.10020")]
        )
        self.assertTrue(all(t.side is QuoteSide.BID for t in ticks))
        self.assertEqual(ticks[0].time.tzinfo, UTC)

    def test_empty_and_single(self) -> None:
        self.assertEqual(decode_ticks([], QuoteSide.ASK), [])
        (tick,) = decode_ticks(wire_ticks([(5, 100)]), 2, digits=3)
        self.assertEqual(
            tick,
            Tick(
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=5),
                Decimal("0.001"),
                QuoteSide.ASK,
            ),
        )

    def test_positive_deltas_are_accepted(self) -> None:
        ticks = decode_ticks(wire_ticks([(1000, 100), (5, 7)]), QuoteSide.BID)
        self.assertEqual([t.timestamp_ms for t in ticks], [1005, 1000])

    def test_encode(self) -> None:
        data = wire_ticks([(1_700_000_003_000, 110020), (-1000, -15), (-2000, 5)])
        self.assertEqual(encode_ticks(decode_ticks(data, QuoteSide.BID)), data)
        self.assertEqual(encode_ticks([]), [])

    @given(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=2147483646000),
                st.integers(min_value=1, max_value=10**10),
            ),
            max_size=50,
        )
    )
    def test_round_trip(self, raw: list[tuple[int, int]]) -> None:
        raw.sort()
        ticks = [
            Tick(
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t),
                Decimal(p).scaleb(-5),
                QuoteSide.ASK,
            )
            for t, p in raw
        ]
        self.assertEqual(decode_ticks(encode_ticks(ticks), QuoteSide.ASK), ticks)


def spot(**fields: int) -> m.ProtoOASpotEvent:
    return m.ProtoOASpotEvent(ctidTraderAccountId=7, symbolId=1, **fields)  # type: ignore[arg-type]


class QuoteTrackerTests(SynchronousTestCase):
    def test_keeps_last_known_side(self) -> None:
        tracker = QuoteTracker()
        first = tracker.update(spot(bid=110000, ask=110010))
        self.assertEqual(first.spread, Decimal("0.00010"))
        self.assertEqual(first.mid, Decimal("1.10005"))
        only_bid = tracker.update(spot(bid=110002))
        self.assertEqual((only_bid.bid, only_bid.ask), (Decimal("1.10002"), Decimal("1.10010")))
        only_ask = tracker.update(spot(ask=110020))
        self.assertEqual((only_ask.bid, only_ask.ask), (Decimal("1.10002"), Decimal("1.10020")))
        self.assertEqual(tracker.get(7, 1), only_ask)

    def test_missing_sides_before_any_price(self) -> None:
        tracker = QuoteTracker()
        quote = tracker.update(spot(ask=110020))
        self.assertIsNone(quote.bid)
        self.assertIsNone(quote.spread)
        self.assertIsNone(quote.mid)
        empty = tracker.update(spot())
        self.assertEqual(empty.ask, Decimal("1.10020"))
        self.assertIsNone(empty.bid)

    def test_timestamp_session_close_and_digits(self) -> None:
        tracker = QuoteTracker()
        quote = tracker.update(spot(bid=110000, sessionClose=109000, timestamp=1000), digits=4)
        self.assertEqual(str(quote.bid), "1.1000")
        self.assertEqual(quote.time, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
        later = tracker.update(spot(ask=110010))
        self.assertIsNone(later.time)
        self.assertEqual(later.session_close, Decimal("1.09000"))

    def test_separate_symbols_and_accounts(self) -> None:
        tracker = QuoteTracker()
        tracker.update(spot(bid=1))
        tracker.update(m.ProtoOASpotEvent(ctidTraderAccountId=7, symbolId=2, bid=2))
        tracker.update(m.ProtoOASpotEvent(ctidTraderAccountId=8, symbolId=1, bid=3))
        self.assertEqual(tracker.get(7, 1).bid, Decimal("0.00001"))  # type: ignore[union-attr]
        self.assertEqual(tracker.get(8, 1).bid, Decimal("0.00003"))  # type: ignore[union-attr]
        tracker.forget(7, 2)
        self.assertIsNone(tracker.get(7, 2))
        self.assertIsNotNone(tracker.get(7, 1))
        tracker.forget(7)
        self.assertIsNone(tracker.get(7, 1))
        self.assertIsNotNone(tracker.get(8, 1))
