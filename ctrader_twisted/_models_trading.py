"""Account and trading models: accounts, account details, positions and fills.

Owns the conversion of ``ProtoOACtidTraderAccount``, ``ProtoOATrader``, ``ProtoOAPosition`` and
``ProtoOADeal`` into frozen dataclasses with exact money (scaled by ``moneyDigits``), prices
(order and position doubles read exactly) and aware UTC times.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from google.protobuf.message import Message

from . import messages as m
from ._models_units import (
    TradeSide,
    datetime_from_ms,
    money_from_int,
    plain,
    price_from_float,
    volume_to_units,
)

__all__ = [
    "Account",
    "AccountDetails",
    "Fill",
    "Position",
    "PositionStatus",
    "account_from_proto",
    "account_details_from_proto",
    "fill_from_deal",
    "position_from_proto",
]


class PositionStatus(enum.IntEnum):
    """Position status; the values equal ``ProtoOAPositionStatus``."""

    OPEN = 1
    CLOSED = 2
    CREATED = 3
    ERROR = 4


def _optional(message: Message, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


def _time(message: Message, field: str) -> datetime | None:
    value = _optional(message, field)
    return None if value is None else datetime_from_ms(value)


def _price(message: Message, field: str, digits: int | None) -> Decimal | None:
    if not message.HasField(field):
        return None
    return price_from_float(float(getattr(message, field)), digits)


@dataclass(frozen=True, slots=True)
class Account:
    """A trading account that an access token grants access to.

    :ivar account_id: the ``ctidTraderAccountId`` to put into account-scoped requests.
    :ivar is_live: whether it is a live (real money) account.
    :ivar trader_login: the login number shown in cTrader, if known.
    :ivar broker: the broker's short name, or ``""``.
    """

    account_id: int
    is_live: bool
    trader_login: int | None = None
    broker: str = ""


def account_from_proto(account: m.ProtoOACtidTraderAccount) -> Account:
    """Convert one entry of ``ProtoOAGetAccountListByAccessTokenRes.ctidTraderAccount``."""
    return Account(
        account_id=int(account.ctidTraderAccountId),
        is_live=bool(account.isLive),
        trader_login=_optional(account, "traderLogin"),
        broker=account.brokerTitleShort,
    )


@dataclass(frozen=True, slots=True)
class AccountDetails:
    """Balance and settings of an account (from ``ProtoOATraderRes``).

    :ivar account_id: the account.
    :ivar balance: the balance in the deposit currency (exact).
    :ivar money_digits: the ``moneyDigits`` that scaled the monetary fields.
    :ivar deposit_asset_id: asset id of the deposit currency.
    :ivar leverage: leverage as ``N`` of "1:N", if given.
    :ivar trader_login: the login number, if given.
    :ivar broker: the broker name, or ``""``.
    """

    account_id: int
    balance: Decimal
    money_digits: int | None
    deposit_asset_id: int
    leverage: Decimal | None = None
    trader_login: int | None = None
    broker: str = ""


def account_details_from_proto(trader: m.ProtoOATrader) -> AccountDetails:
    """Convert a ``ProtoOATrader``; money uses its ``moneyDigits`` (2 when absent)."""
    digits = _optional(trader, "moneyDigits")
    leverage = _optional(trader, "leverageInCents")
    return AccountDetails(
        account_id=int(trader.ctidTraderAccountId),
        balance=money_from_int(trader.balance, digits),
        money_digits=digits,
        deposit_asset_id=int(trader.depositAssetId),
        leverage=None if leverage is None else plain(Decimal(leverage).scaleb(-2)),
        trader_login=_optional(trader, "traderLogin"),
        broker=trader.brokerName,
    )


@dataclass(frozen=True, slots=True)
class Position:
    """An open (or just closed) position.

    :ivar position_id: the position.
    :ivar symbol_id: its symbol.
    :ivar side: BUY (long) or SELL (short).
    :ivar volume: size as a wire volume (1/100 units); see :attr:`units`.
    :ivar entry_price: average entry price, if known.
    :ivar stop_loss: absolute stop-loss price, if set.
    :ivar take_profit: absolute take-profit price, if set.
    :ivar swap: accumulated swap in the deposit currency.
    :ivar commission: commission charged so far in the deposit currency.
    :ivar status: the position status.
    :ivar open_time: when it was opened, if known.
    :ivar label: the label given when opening, or ``""``.
    :ivar comment: the comment given when opening, or ``""``.
    """

    position_id: int
    symbol_id: int
    side: TradeSide
    volume: int
    entry_price: Decimal | None
    stop_loss: Decimal | None
    take_profit: Decimal | None
    swap: Decimal
    commission: Decimal
    status: PositionStatus
    open_time: datetime | None = None
    label: str = ""
    comment: str = ""

    @property
    def units(self) -> Decimal:
        """Size in units of the base asset."""
        return volume_to_units(self.volume)


def position_from_proto(position: m.ProtoOAPosition, *, digits: int | None = None) -> Position:
    """Convert a ``ProtoOAPosition``; money uses its ``moneyDigits`` (2 when absent).

    :param digits: the symbol's ``digits``, to round the price doubles; exact ``repr`` otherwise.
    """
    money_digits = _optional(position, "moneyDigits")
    trade = position.tradeData
    return Position(
        position_id=int(position.positionId),
        symbol_id=int(trade.symbolId),
        side=TradeSide(trade.tradeSide),
        volume=int(trade.volume),
        entry_price=_price(position, "price", digits),
        stop_loss=_price(position, "stopLoss", digits),
        take_profit=_price(position, "takeProfit", digits),
        swap=money_from_int(position.swap, money_digits),
        commission=money_from_int(position.commission, money_digits),
        status=PositionStatus(position.positionStatus),
        open_time=_time(trade, "openTimestamp"),
        label=trade.label,
        comment=trade.comment,
    )


@dataclass(frozen=True, slots=True)
class Fill:
    """A deal: (part of) an order executed.

    :ivar deal_id: the deal.
    :ivar order_id: the order it executed.
    :ivar position_id: the position it opened, changed or closed.
    :ivar symbol_id: the symbol.
    :ivar side: BUY or SELL.
    :ivar volume: requested wire volume.
    :ivar filled_volume: executed wire volume.
    :ivar price: execution price, if the deal was executed.
    :ivar time: execution time.
    :ivar commission: commission of the deal in the deposit currency.
    :ivar closing: whether the deal closed (part of) a position.
    :ivar gross_profit: realised gross profit of a closing deal, else ``None``.
    """

    deal_id: int
    order_id: int
    position_id: int
    symbol_id: int
    side: TradeSide
    volume: int
    filled_volume: int
    price: Decimal | None
    time: datetime
    commission: Decimal
    closing: bool = False
    gross_profit: Decimal | None = None


def fill_from_deal(deal: m.ProtoOADeal, *, digits: int | None = None) -> Fill:
    """Convert a ``ProtoOADeal`` (e.g. from an ``ORDER_FILLED`` execution event)."""
    money_digits = _optional(deal, "moneyDigits")
    closing = deal.HasField("closePositionDetail")
    profit = None
    if closing:
        detail = deal.closePositionDetail
        detail_digits = _optional(detail, "moneyDigits")
        profit = money_from_int(
            detail.grossProfit, detail_digits if detail_digits is not None else money_digits
        )
    return Fill(
        deal_id=int(deal.dealId),
        order_id=int(deal.orderId),
        position_id=int(deal.positionId),
        symbol_id=int(deal.symbolId),
        side=TradeSide(deal.tradeSide),
        volume=int(deal.volume),
        filled_volume=int(deal.filledVolume),
        price=_price(deal, "executionPrice", digits),
        time=datetime_from_ms(deal.executionTimestamp),
        commission=money_from_int(deal.commission, money_digits),
        closing=closing,
        gross_profit=profit,
    )
