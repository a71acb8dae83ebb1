"""Scalar conversions: prices, volumes, money, times and relative SL/TP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.models import (
    EPOCH,
    Period,
    QuoteSide,
    RelativeProtection,
    TradeSide,
    absolute_protection,
    datetime_from_minutes,
    datetime_from_ms,
    lots_to_volume,
    minutes_from_datetime,
    money_from_int,
    money_to_int,
    ms_from_datetime,
    plain,
    price_from_float,
    price_from_int,
    price_to_int,
    relative_protection,
    round_price,
    to_decimal,
    units_to_volume,
    volume_to_lots,
    volume_to_units,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
UINT_PRICE = st.integers(min_value=0, max_value=2**53)


class PriceTests(SynchronousTestCase):
    def test_examples_from_the_spec(self) -> None:
        self.assertEqual(price_from_int(123000), Decimal("1.23"))
        self.assertEqual(price_from_int(53423782), Decimal("534.23782"))
        self.assertEqual(str(price_from_int(123000)), "1.23000")

    def test_digits_formats_and_rounds(self) -> None:
        self.assertEqual(str(price_from_int(123000, 2)), "1.23")
        self.assertEqual(str(price_from_int(112345, 3)), "1.123")
        self.assertEqual(str(price_from_int(112355, 4)), "1.1236")
        self.assertEqual(str(price_from_int(110000, 5)), "1.10000")

    def test_price_to_int_rounds_to_symbol_digits(self) -> None:
        self.assertEqual(price_to_int("1.123456"), 112346)
        self.assertEqual(price_to_int("1.12345", 4), 112350)
        self.assertEqual(price_to_int(Decimal("1.1"), 5), 110000)
        self.assertEqual(price_to_int(1.1), 110000)
        self.assertEqual(price_to_int(2), 200000)
        self.assertEqual(price_to_int("-0.000015"), -2)

    def test_floats_are_read_by_their_repr(self) -> None:
        self.assertEqual(to_decimal(0.1 + 0.2), Decimal("0.30000000000000004"))
        self.assertEqual(price_from_float(1.10001), Decimal("1.10001"))
        self.assertEqual(price_from_float(1.1000049, 5), Decimal("1.10000"))

    def test_rejects_non_numbers(self) -> None:
        for bad in ("abc", "nan", "inf", float("nan"), True):
            with self.assertRaises(ValueError):
                to_decimal(bad)

    def test_round_price_half_up(self) -> None:
        self.assertEqual(round_price("1.000005", 5), Decimal("1.00001"))
        self.assertEqual(round_price("-1.000005", 5), Decimal("-1.00001"))

    @given(INT64)
    def test_int_round_trip(self, value: int) -> None:
        self.assertEqual(price_to_int(price_from_int(value)), value)

    @given(UINT_PRICE, st.integers(min_value=0, max_value=5))
    def test_digits_round_trip_is_stable(self, value: int, digits: int) -> None:
        rounded = price_to_int(price_from_int(value), digits)
        self.assertEqual(rounded % 10 ** (5 - digits), 0)
        self.assertLessEqual(abs(rounded - value), 10 ** (5 - digits) // 2)
        self.assertEqual(price_to_int(price_from_int(rounded, digits), digits), rounded)


class VolumeTests(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(volume_to_units(1000), Decimal("10.00"))
        self.assertEqual(units_to_volume(10), 1000)
        self.assertEqual(units_to_volume("0.01"), 1)
        self.assertEqual(units_to_volume(100000), 10_000_000)

    def test_lots(self) -> None:
        lot = 10_000_000
        self.assertEqual(lots_to_volume("0.01", lot), 100_000)
        self.assertEqual(lots_to_volume(1, lot), lot)
        self.assertEqual(volume_to_lots(100_000, lot), Decimal("0.01"))
        self.assertEqual(volume_to_lots(25_000_000, lot), Decimal("2.5"))

    def test_inexact_volumes_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            units_to_volume("0.001")
        with self.assertRaises(ValueError):
            lots_to_volume("0.0000001", 100)
        with self.assertRaises(ValueError):
            lots_to_volume(1, 0)
        with self.assertRaises(ValueError):
            volume_to_lots(1, -5)

    def test_large_volumes(self) -> None:
        big = 2**62
        self.assertEqual(units_to_volume(volume_to_units(big)), big)
        self.assertEqual(volume_to_lots(big, 10_000_000), Decimal(big) / 10_000_000)
        self.assertEqual(lots_to_volume(volume_to_lots(big, 100), 100), big)

    @given(st.integers(min_value=0, max_value=2**63 - 1), st.sampled_from([100, 10_000_000, 1]))
    def test_round_trips(self, volume: int, lot_size: int) -> None:
        self.assertEqual(units_to_volume(volume_to_units(volume)), volume)
        self.assertEqual(lots_to_volume(volume_to_lots(volume, lot_size), lot_size), volume)


class MoneyTests(SynchronousTestCase):
    def test_money_digits(self) -> None:
        self.assertEqual(money_from_int(10053099944, 8), Decimal("100.53099944"))
        self.assertEqual(money_from_int(12345), Decimal("123.45"))
        self.assertEqual(money_from_int(-5, 0), Decimal(-5))
        self.assertEqual(money_to_int("100.53099944", 8), 10053099944)
        self.assertEqual(money_to_int("1.5"), 150)

    def test_too_many_decimals(self) -> None:
        with self.assertRaises(ValueError):
            money_to_int("0.001", 2)

    @given(INT64, st.integers(min_value=0, max_value=12))
    def test_round_trip(self, value: int, digits: int) -> None:
        self.assertEqual(money_to_int(money_from_int(value, digits), digits), value)


class TimeTests(SynchronousTestCase):
    def test_ms(self) -> None:
        moment = datetime_from_ms(1_700_000_000_123)
        self.assertEqual(moment.tzinfo, timezone.utc)
        self.assertEqual(moment, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc))
        self.assertEqual(ms_from_datetime(moment), 1_700_000_000_123)
        self.assertEqual(datetime_from_ms(-1), EPOCH - timedelta(milliseconds=1))

    def test_other_time_zones_and_naive(self) -> None:
        plus_two = timezone(timedelta(hours=2))
        self.assertEqual(ms_from_datetime(datetime(1970, 1, 1, 2, tzinfo=plus_two)), 0)
        with self.assertRaises(ValueError):
            ms_from_datetime(datetime(2024, 1, 1))
        with self.assertRaises(ValueError):
            minutes_from_datetime(datetime(2024, 1, 1))

    def test_minutes(self) -> None:
        self.assertEqual(datetime_from_minutes(60), datetime(1970, 1, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(
            minutes_from_datetime(datetime(1970, 1, 1, 1, 0, 59, tzinfo=timezone.utc)), 60
        )

    @given(st.integers(min_value=-(10**13), max_value=2147483646000))
    def test_ms_round_trip(self, value: int) -> None:
        self.assertEqual(ms_from_datetime(datetime_from_ms(value)), value)


class EnumTests(SynchronousTestCase):
    def test_period(self) -> None:
        self.assertIs(Period.parse("m1"), Period.M1)
        self.assertEqual(int(Period.M10), 6)
        self.assertEqual(int(Period.MN1), 14)
        self.assertEqual(Period.H4.duration, timedelta(hours=4))
        self.assertEqual(Period.W1.duration, timedelta(days=7))
        self.assertIsNone(Period.MN1.duration)
        with self.assertRaises(ValueError):
            Period.parse("M7")

    def test_sides(self) -> None:
        self.assertIs(TradeSide.parse("Buy"), TradeSide.BUY)
        self.assertEqual(int(TradeSide.SELL), 2)
        self.assertIs(QuoteSide.parse("ASK"), QuoteSide.ASK)
        with self.assertRaises(ValueError):
            TradeSide.parse("hold")
        with self.assertRaises(ValueError):
            QuoteSide.parse("mid")


class ProtectionTests(SynchronousTestCase):
    def test_buy(self) -> None:
        result = relative_protection(TradeSide.BUY, "1.10000", "1.09500", "1.11000")
        self.assertEqual(result, RelativeProtection(stop_loss=500, take_profit=1000))

    def test_sell(self) -> None:
        result = relative_protection(TradeSide.SELL, "1.10000", "1.10500", "1.09000")
        self.assertEqual(result, RelativeProtection(stop_loss=500, take_profit=1000))

    def test_only_one_level(self) -> None:
        self.assertEqual(
            relative_protection(TradeSide.BUY, 100, take_profit=101),
            RelativeProtection(None, 100000),
        )
        self.assertEqual(relative_protection(TradeSide.SELL, 1), RelativeProtection())

    def test_wrong_side_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, "stop loss must be below"):
            relative_protection(TradeSide.BUY, "1.1", stop_loss="1.2")
        with self.assertRaisesRegex(ValueError, "take profit must be above"):
            relative_protection(TradeSide.BUY, "1.1", take_profit="1.0")
        with self.assertRaisesRegex(ValueError, "stop loss must be above"):
            relative_protection(TradeSide.SELL, "1.1", stop_loss="1.1")
        with self.assertRaisesRegex(ValueError, "take profit must be below"):
            relative_protection(TradeSide.SELL, "1.1", take_profit="1.2")

    def test_digits_rounding(self) -> None:
        result = relative_protection(TradeSide.BUY, "1.123456", "1.120004", digits=3)
        self.assertEqual(result.stop_loss, 300)

    @given(
        st.sampled_from(list(TradeSide)),
        st.integers(min_value=1000, max_value=10**9),
        st.integers(min_value=1, max_value=999),
        st.integers(min_value=1, max_value=10**6),
    )
    def test_round_trip(self, side: TradeSide, entry: int, sl: int, tp: int) -> None:
        relative = RelativeProtection(sl, tp)
        entry_price = price_from_int(entry)
        stop, take = absolute_protection(side, entry_price, relative)
        assert stop is not None
        assert take is not None
        if side is TradeSide.BUY:
            self.assertLess(stop, entry_price)
            self.assertGreater(take, entry_price)
        else:
            self.assertGreater(stop, entry_price)
            self.assertLess(take, entry_price)
        self.assertEqual(relative_protection(side, entry_price, stop, take), relative)


class HugeValueTests(SynchronousTestCase):
    """Values beyond the decimal context's 28 digits: exact, or a ValueError, never
    ``decimal.InvalidOperation``."""

    def test_plain_is_exact_at_any_size(self) -> None:
        self.assertEqual(str(plain(Decimal("1E+30"))), "1" + "0" * 30)
        self.assertEqual(str(plain(Decimal("-2.50"))), "-2.5")

    def test_rounding_a_huge_price_is_a_value_error(self) -> None:
        for call in (
            lambda: round_price("1e300", 5),
            lambda: price_to_int("1e300", 5),
            lambda: relative_protection(TradeSide.BUY, "1.1", stop_loss="1e300"),
        ):
            with self.assertRaises(ValueError):
                call()
