"""The sandbox's reference data: assets, asset classes, categories, symbols and accounts.

Everything here is static and identical for every seed; only prices move.  Symbol and account
ids are part of the documented sandbox contract (``EURUSD`` is symbol 1, accounts 5000001 and
5000002).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .. import messages as m

__all__ = [
    "ACCOUNTS",
    "ASSETS",
    "ASSET_CLASSES",
    "CATEGORIES",
    "CTID_USER_ID",
    "SYMBOLS",
    "SYMBOLS_BY_NAME",
    "AccountSpec",
    "SymbolSpec",
    "asset_message",
    "dynamic_leverage",
    "is_open",
    "light_symbol",
    "symbol_message",
]

_HOUR: Final = 3600
_DAY: Final = 86400
_WEEK: Final = 7 * _DAY
#: 1970-01-01 (epoch) was a Thursday: seconds from the previous Sunday 00:00 UTC.
_EPOCH_WEEK_OFFSET: Final = 4 * _DAY

# Trading hours as [start, end) seconds from Sunday 00:00 UTC.
_FX_HOURS: Final = ((22 * _HOUR, 5 * _DAY + 21 * _HOUR),)
_CFD_HOURS: Final = tuple((d * _DAY + 22 * _HOUR, (d + 1) * _DAY + 21 * _HOUR) for d in range(5))
_ALWAYS: Final = ((0, _WEEK),)

#: Asset id -> (name, display name).
ASSETS: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        1: ("USD", "US Dollar"),
        2: ("EUR", "Euro"),
        3: ("GBP", "British Pound"),
        4: ("JPY", "Japanese Yen"),
        5: ("CHF", "Swiss Franc"),
        6: ("AUD", "Australian Dollar"),
        7: ("CAD", "Canadian Dollar"),
        8: ("NZD", "New Zealand Dollar"),
        9: ("XAU", "Gold"),
        10: ("XAG", "Silver"),
        11: ("US500", "US 500 Index"),
        12: ("BTC", "Bitcoin"),
    }
)

#: Asset class id -> name.
ASSET_CLASSES: Final[Mapping[int, str]] = MappingProxyType(
    {1: "Forex", 2: "Metals", 3: "Indices", 4: "Crypto"}
)

#: Category id -> (asset class id, name).
CATEGORIES: Final[Mapping[int, tuple[int, str]]] = MappingProxyType(
    {1: (1, "Majors"), 2: (1, "Crosses"), 3: (2, "Metals"), 4: (3, "Indices"), 5: (4, "Crypto")}
)

CTID_USER_ID: Final = 4000001


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """A tradable symbol.

    :ivar price: centre of the price walk in price units.
    :ivar spread: spread in points (one point = 10^-digits).
    :ivar volatility: scales the walk's relative amplitude (1.0 = a major FX pair).
    """

    symbol_id: int
    name: str
    base_asset: int
    quote_asset: int
    category: int
    digits: int
    pip_position: int
    price: float
    spread: int
    lot_size: int
    min_volume: int
    max_volume: int
    step_volume: int
    hours: tuple[tuple[int, int], ...]
    leverage_id: int
    volatility: float = 1.0
    description: str = ""

    @property
    def point(self) -> int:
        """One point (the smallest price step) in 1/100000 price units."""
        return int(10 ** (5 - self.digits))


def _fx(
    symbol_id: int, name: str, base: int, quote: int, price: float, spread: int, cat: int = 1
) -> SymbolSpec:
    jpy = quote == 4
    return SymbolSpec(
        symbol_id=symbol_id,
        name=name,
        base_asset=base,
        quote_asset=quote,
        category=cat,
        digits=3 if jpy else 5,
        pip_position=2 if jpy else 4,
        price=price,
        spread=spread,
        lot_size=10_000_000,
        min_volume=100_000,
        max_volume=10_000_000_000,
        step_volume=100_000,
        hours=_FX_HOURS,
        leverage_id=1,
        description=f"{ASSETS[base][1]} vs {ASSETS[quote][1]}",
    )


_ALL_SYMBOLS: Final = (
    _fx(1, "EURUSD", 2, 1, 1.085, 8),
    _fx(2, "GBPUSD", 3, 1, 1.265, 12),
    _fx(3, "USDJPY", 1, 4, 149.5, 10),
    _fx(4, "USDCHF", 1, 5, 0.885, 12),
    _fx(5, "AUDUSD", 6, 1, 0.655, 10),
    _fx(6, "USDCAD", 1, 7, 1.36, 15),
    _fx(7, "NZDUSD", 8, 1, 0.60, 15),
    _fx(8, "EURGBP", 2, 3, 0.858, 12, cat=2),
    _fx(9, "EURJPY", 2, 4, 162.2, 15, cat=2),
    _fx(10, "GBPJPY", 3, 4, 189.1, 25, cat=2),
    _fx(11, "EURCHF", 2, 5, 0.96, 15, cat=2),
    _fx(12, "AUDJPY", 6, 4, 97.9, 20, cat=2),
    SymbolSpec(
        13,
        "XAUUSD",
        9,
        1,
        3,
        2,
        1,
        2350.0,
        25,
        10_000,
        100,
        10_000_000,
        100,
        _CFD_HOURS,
        2,
        2.0,
        "Gold vs US Dollar",
    ),
    SymbolSpec(
        14,
        "XAGUSD",
        10,
        1,
        3,
        3,
        2,
        28.5,
        25,
        500_000,
        100,
        100_000_000,
        100,
        _CFD_HOURS,
        2,
        3.0,
        "Silver vs US Dollar",
    ),
    SymbolSpec(
        15,
        "US500",
        11,
        1,
        4,
        2,
        1,
        5200.0,
        50,
        100,
        10,
        1_000_000,
        10,
        _CFD_HOURS,
        3,
        2.0,
        "US 500 Index",
    ),
    SymbolSpec(
        16,
        "BTCUSD",
        12,
        1,
        5,
        2,
        0,
        65000.0,
        2500,
        100,
        1,
        100_000,
        1,
        _ALWAYS,
        4,
        6.0,
        "Bitcoin vs US Dollar (trades 24/7)",
    ),
)

#: Symbol id -> spec.
SYMBOLS: Final[Mapping[int, SymbolSpec]] = MappingProxyType({s.symbol_id: s for s in _ALL_SYMBOLS})
#: Symbol name -> spec.
SYMBOLS_BY_NAME: Final[Mapping[str, SymbolSpec]] = MappingProxyType(
    {s.name: s for s in _ALL_SYMBOLS}
)

#: Leverage id -> tiers of (volume limit in deposit units, leverage ratio).
_LEVERAGE_TIERS: Final[Mapping[int, tuple[tuple[int, int], ...]]] = MappingProxyType(
    {
        1: ((1_000_000, 500), (10_000_000, 200), (50_000_000, 100)),
        2: ((500_000, 100), (5_000_000, 50)),
        3: ((1_000_000, 100), (10_000_000, 20)),
        4: ((100_000, 10), (1_000_000, 5)),
    }
)


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """A trading account as configured at start-up.

    :ivar balance: starting balance in 1/100 of the deposit currency (moneyDigits 2).
    :ivar leverage: leverage ratio (100 means 1:100).
    """

    account_id: int
    login: int
    deposit_asset: int
    balance: int
    leverage: int


#: The sandbox's accounts: 5000001 deposits in USD, 5000002 in EUR.
ACCOUNTS: Final[Mapping[int, AccountSpec]] = MappingProxyType(
    {
        5000001: AccountSpec(5000001, 1000001, 1, 1_000_000, 100),
        5000002: AccountSpec(5000002, 1000002, 2, 1_000_000, 30),
    }
)


def is_open(spec: SymbolSpec, seconds: float) -> bool:
    """Whether ``spec`` trades at ``seconds`` since the epoch (UTC)."""
    in_week = (int(seconds) + _EPOCH_WEEK_OFFSET) % _WEEK
    return any(start <= in_week < end for start, end in spec.hours)


def asset_message(asset_id: int) -> m.ProtoOAAsset:
    """The ``ProtoOAAsset`` for ``asset_id``."""
    name, display = ASSETS[asset_id]
    return m.ProtoOAAsset(assetId=asset_id, name=name, displayName=display, digits=2)


def light_symbol(spec: SymbolSpec) -> m.ProtoOALightSymbol:
    """The ``ProtoOALightSymbol`` for ``spec``."""
    return m.ProtoOALightSymbol(
        symbolId=spec.symbol_id,
        symbolName=spec.name,
        enabled=True,
        baseAssetId=spec.base_asset,
        quoteAssetId=spec.quote_asset,
        symbolCategoryId=spec.category,
        description=spec.description,
        sortingNumber=float(spec.symbol_id),
    )


def symbol_message(spec: SymbolSpec) -> m.ProtoOASymbol:
    """The full ``ProtoOASymbol`` for ``spec``."""
    return m.ProtoOASymbol(
        symbolId=spec.symbol_id,
        digits=spec.digits,
        pipPosition=spec.pip_position,
        enableShortSelling=True,
        guaranteedStopLoss=False,
        swapRollover3Days=m.ProtoOADayOfWeek.WEDNESDAY,
        swapLong=0.0,
        swapShort=0.0,
        maxVolume=spec.max_volume,
        minVolume=spec.min_volume,
        stepVolume=spec.step_volume,
        schedule=[m.ProtoOAInterval(startSecond=s, endSecond=e) for s, e in spec.hours],
        commission=0,
        commissionType=m.ProtoOACommissionType.USD_PER_MILLION_USD,
        slDistance=0,
        tpDistance=0,
        distanceSetIn=m.ProtoOASymbolDistanceType.SYMBOL_DISTANCE_IN_POINTS,
        scheduleTimeZone="UTC",
        tradingMode=m.ProtoOATradingMode.ENABLED,
        lotSize=spec.lot_size,
        leverageId=spec.leverage_id,
        measurementUnits=ASSETS[spec.base_asset][0],
    )


def dynamic_leverage(leverage_id: int) -> m.ProtoOADynamicLeverage | None:
    """The ``ProtoOADynamicLeverage`` for ``leverage_id``, or ``None`` if unknown."""
    tiers = _LEVERAGE_TIERS.get(leverage_id)
    if tiers is None:
        return None
    return m.ProtoOADynamicLeverage(
        leverageId=leverage_id,
        tiers=[m.ProtoOADynamicLeverageTier(volume=v, leverage=lev) for v, lev in tiers],
    )
