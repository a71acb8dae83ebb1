"""Scalar conversions between the wire encoding and exact Python values.

Owns: prices (integers in 1/100000 of a price unit, and the doubles used by order and position
fields), volumes (integers in 1/100 of a unit), money (integers scaled by ``10**moneyDigits``),
timestamps (Unix milliseconds and minutes), relative stop loss / take profit, and the small
enumerations (trade side, quote side, trendbar period) that the models layer uses.

Every function here is pure and exact: results are :class:`~decimal.Decimal` values built from
integers, never from binary floating point arithmetic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final, TypeAlias

__all__ = [
    "DEFAULT_MONEY_DIGITS",
    "EPOCH",
    "PRICE_DIGITS",
    "PRICE_SCALE",
    "VOLUME_SCALE",
    "Period",
    "PriceLike",
    "QuoteSide",
    "RelativeProtection",
    "TradeSide",
    "absolute_protection",
    "datetime_from_minutes",
    "datetime_from_ms",
    "lots_to_volume",
    "minutes_from_datetime",
    "money_from_int",
    "money_to_int",
    "ms_from_datetime",
    "plain",
    "price_from_float",
    "price_from_int",
    "price_to_int",
    "relative_protection",
    "round_price",
    "to_decimal",
    "units_to_volume",
    "volume_to_lots",
    "volume_to_units",
]

#: Wire prices are integers in 1/100000 of a price unit.
PRICE_SCALE: Final = 100_000
#: Number of decimal places a wire price can carry.
PRICE_DIGITS: Final = 5
#: Wire volumes are integers in 1/100 of a unit.
VOLUME_SCALE: Final = 100
#: Money digits assumed when a message carries no ``moneyDigits`` (the old two-decimal convention).
DEFAULT_MONEY_DIGITS: Final = 2
#: The Unix epoch as an aware UTC datetime.
EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)

_MS: Final = timedelta(milliseconds=1)
_MINUTE: Final = timedelta(minutes=1)

#: Anything a price or amount may be given as.  Floats are read through their shortest ``repr``,
#: so ``1.1`` means ``Decimal("1.1")``, not the binary approximation.
PriceLike: TypeAlias = Decimal | int | str | float


class TradeSide(enum.IntEnum):
    """Order side; the values equal ``ProtoOATradeSide``."""

    BUY = 1
    SELL = 2

    @classmethod
    def parse(cls, text: str) -> TradeSide:
        """Parse ``"buy"`` / ``"sell"`` (any case).

        :raises ValueError: for anything else.
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"side must be buy or sell, not {text!r}") from None


class QuoteSide(enum.IntEnum):
    """Side of a quote or of historical tick data; the values equal ``ProtoOAQuoteType``."""

    BID = 1
    ASK = 2

    @classmethod
    def parse(cls, text: str) -> QuoteSide:
        """Parse ``"bid"`` / ``"ask"`` (any case).

        :raises ValueError: for anything else.
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"quote side must be bid or ask, not {text!r}") from None


_PERIOD_MINUTES: Final[dict[str, int]] = {
    "M1": 1,
    "M2": 2,
    "M3": 3,
    "M4": 4,
    "M5": 5,
    "M10": 10,
    "M15": 15,
    "M30": 30,
    "H1": 60,
    "H4": 240,
    "H12": 720,
    "D1": 1440,
    "W1": 10080,
}


class Period(enum.IntEnum):
    """Trendbar period; the values equal ``ProtoOATrendbarPeriod``."""

    M1 = 1
    M2 = 2
    M3 = 3
    M4 = 4
    M5 = 5
    M10 = 6
    M15 = 7
    M30 = 8
    H1 = 9
    H4 = 10
    H12 = 11
    D1 = 12
    W1 = 13
    MN1 = 14

    @property
    def duration(self) -> timedelta | None:
        """Length of one bar, or ``None`` for ``MN1`` (months differ in length)."""
        minutes = _PERIOD_MINUTES.get(self.name)
        return None if minutes is None else timedelta(minutes=minutes)

    @classmethod
    def parse(cls, text: str) -> Period:
        """Parse a period name such as ``"M1"``, ``"h4"`` or ``"D1"``.

        :raises ValueError: for an unknown name.
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(p.name for p in cls)
            raise ValueError(f"unknown period {text!r} (one of {names})") from None


def to_decimal(value: PriceLike) -> Decimal:
    """Turn a price or amount into a :class:`~decimal.Decimal` without float noise.

    :raises ValueError: if ``value`` is not a finite number.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def _quantum(digits: int) -> Decimal:
    return Decimal(1).scaleb(-digits)


def round_price(price: PriceLike, digits: int) -> Decimal:
    """Round ``price`` to ``digits`` decimal places, halves away from zero.

    :raises ValueError: if ``price`` is not a finite number, or has too many digits before the
        point to be rounded exactly (the decimal context's precision, 28 digits).
    """
    value = to_decimal(price)
    try:
        return value.quantize(_quantum(digits), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"{value} is too large to round to {digits} decimal places") from None


def price_from_int(value: int, digits: int | None = None) -> Decimal:
    """Exact price of a wire integer in 1/100000 units (``123000`` -> ``Decimal("1.23000")``).

    :param digits: if given, the result is shown with exactly this many decimal places (the
        symbol's ``digits``), rounded half away from zero when ``digits`` is below 5.
    """
    price = Decimal(int(value)).scaleb(-PRICE_DIGITS)
    return price if digits is None else round_price(price, digits)


def price_to_int(price: PriceLike, digits: int | None = None) -> int:
    """Wire integer (1/100000 units) for ``price``; the inverse of :func:`price_from_int`.

    The price is first rounded to ``digits`` places when given (the symbol's precision), then to
    the five places the wire can carry, halves away from zero.

    :raises ValueError: if ``price`` is not a finite number.
    """
    value = to_decimal(price)
    if digits is not None:
        value = round_price(value, digits)
    return int(round_price(value, PRICE_DIGITS).scaleb(PRICE_DIGITS))


def price_from_float(value: float, digits: int | None = None) -> Decimal:
    """Exact price of an order, position or deal price field (a double in real units).

    The double is read through its shortest ``repr`` and rounded to ``digits`` when given.
    """
    price = to_decimal(value)
    return price if digits is None else round_price(price, digits)


def _exact_int(value: Decimal, what: str) -> int:
    if value != value.to_integral_value():
        raise ValueError(f"{what} is not representable exactly")
    return int(value)


def plain(value: Decimal) -> Decimal:
    """``value`` without trailing fractional zeros and never in exponent form
    (``Decimal("2.50")`` -> ``2.5``, ``Decimal("1E+1")`` -> ``10``)."""
    if value == value.to_integral_value():
        return Decimal(int(value))  # exact at any size (quantize is bound to 28 digits)
    return value.normalize()


def volume_to_units(volume: int) -> Decimal:
    """Units of a wire volume (``1000`` -> ``Decimal("10.00")`` units)."""
    return Decimal(int(volume)).scaleb(-2)


def units_to_volume(units: PriceLike) -> int:
    """Wire volume (1/100 units) for an amount of units (``10`` -> ``1000``).

    :raises ValueError: if ``units`` is not a multiple of 0.01 or not a number.
    """
    amount = to_decimal(units)
    return _exact_int(amount * VOLUME_SCALE, f"volume of {amount} units")


def volume_to_lots(volume: int, lot_size: int) -> Decimal:
    """Lots of a wire volume, given the symbol's ``lotSize`` (also a wire volume).

    :raises ValueError: if ``lot_size`` is not positive.
    """
    if lot_size <= 0:
        raise ValueError(f"lot size must be positive, not {lot_size}")
    return plain(Decimal(int(volume)) / Decimal(int(lot_size)))


def lots_to_volume(lots: PriceLike, lot_size: int) -> int:
    """Wire volume of ``lots`` lots, given the symbol's ``lotSize`` (``0.01`` x ``10000000`` ->
    ``100000``).

    :raises ValueError: if the result is not a whole wire volume or ``lot_size`` is not positive.
    """
    if lot_size <= 0:
        raise ValueError(f"lot size must be positive, not {lot_size}")
    amount = to_decimal(lots)
    return _exact_int(amount * int(lot_size), f"volume of {amount} lots")


def money_from_int(value: int, money_digits: int | None = None) -> Decimal:
    """Exact amount of a monetary wire integer scaled by ``10**moneyDigits``.

    :param money_digits: the message's ``moneyDigits``; :data:`DEFAULT_MONEY_DIGITS` when absent.
    """
    digits = DEFAULT_MONEY_DIGITS if money_digits is None else int(money_digits)
    return Decimal(int(value)).scaleb(-digits)


def money_to_int(amount: PriceLike, money_digits: int | None = None) -> int:
    """Monetary wire integer for ``amount``; the inverse of :func:`money_from_int`.

    :raises ValueError: if ``amount`` has more decimal places than ``money_digits`` allows.
    """
    digits = DEFAULT_MONEY_DIGITS if money_digits is None else int(money_digits)
    value = to_decimal(amount)
    return _exact_int(value.scaleb(digits), f"amount {value} with {digits} money digits")


def datetime_from_ms(ms: int) -> datetime:
    """Aware UTC datetime of a Unix timestamp in milliseconds (exact, no float).

    :raises ValueError: if the time is beyond what ``datetime`` holds (after the year 9999).
    """
    try:
        return EPOCH + timedelta(milliseconds=int(ms))
    except OverflowError:
        raise ValueError(f"{ms} ms since the epoch is out of range") from None


def ms_from_datetime(moment: datetime) -> int:
    """Unix milliseconds of an aware datetime (sub-millisecond parts are dropped, toward the past).

    :raises ValueError: if ``moment`` is naive (has no time zone).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: give a time zone (e.g. tzinfo=timezone.utc)")
    return (moment - EPOCH) // _MS


def datetime_from_minutes(minutes: int) -> datetime:
    """Aware UTC datetime of a trendbar's ``utcTimestampInMinutes``.

    :raises ValueError: if the time is beyond what ``datetime`` holds (after the year 9999).
    """
    try:
        return EPOCH + timedelta(minutes=int(minutes))
    except OverflowError:
        raise ValueError(f"{minutes} minutes since the epoch is out of range") from None


def minutes_from_datetime(moment: datetime) -> int:
    """Minutes since the Unix epoch of an aware datetime (rounded toward the past).

    :raises ValueError: if ``moment`` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: give a time zone (e.g. tzinfo=timezone.utc)")
    return (moment - EPOCH) // _MINUTE


@dataclass(frozen=True, slots=True)
class RelativeProtection:
    """Stop loss and take profit as distances from the entry, in 1/100000 price units.

    These are the values for ``ProtoOANewOrderReq.relativeStopLoss`` / ``relativeTakeProfit``
    (market orders accept only this form).  ``None`` means "not set".
    """

    stop_loss: int | None = None
    take_profit: int | None = None


def _distance(entry: int, level: int, above: bool, what: str) -> int:
    distance = level - entry if above else entry - level
    if distance <= 0:
        where = "above" if above else "below"
        raise ValueError(f"{what} must be {where} the entry price")
    return distance


def relative_protection(
    side: TradeSide,
    entry: PriceLike,
    stop_loss: PriceLike | None = None,
    take_profit: PriceLike | None = None,
    *,
    digits: int | None = None,
) -> RelativeProtection:
    """Distances of absolute stop-loss / take-profit prices from an entry price.

    For a BUY the stop loss must lie below the entry and the take profit above; for a SELL the
    other way round.  Prices are rounded to ``digits`` (the symbol's precision) when given.

    :raises ValueError: if a level is on the wrong side of (or equal to) the entry.
    """
    entry_int = price_to_int(entry, digits)
    buy = TradeSide(side) is TradeSide.BUY
    sl = tp = None
    if stop_loss is not None:
        sl = _distance(entry_int, price_to_int(stop_loss, digits), not buy, "stop loss")
    if take_profit is not None:
        tp = _distance(entry_int, price_to_int(take_profit, digits), buy, "take profit")
    return RelativeProtection(stop_loss=sl, take_profit=tp)


def absolute_protection(
    side: TradeSide, entry: PriceLike, protection: RelativeProtection
) -> tuple[Decimal | None, Decimal | None]:
    """Absolute ``(stop_loss, take_profit)`` prices of relative distances from ``entry``.

    The inverse of :func:`relative_protection` (BUY: entry - SL distance, entry + TP distance;
    SELL: the reverse).
    """
    entry_int = price_to_int(entry)
    sign = 1 if TradeSide(side) is TradeSide.BUY else -1
    sl = tp = None
    if protection.stop_loss is not None:
        sl = price_from_int(entry_int - sign * protection.stop_loss)
    if protection.take_profit is not None:
        tp = price_from_int(entry_int + sign * protection.take_profit)
    return sl, tp
