"""Account state shared by all connections: balances, positions, orders, deals, cash flow,
and the money arithmetic (conversion, margin, profit) behind them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .. import messages as m
from .catalogue import ACCOUNTS, SYMBOLS, AccountSpec, SymbolSpec
from .market import PriceWalk
from .reference import conversion_chain

__all__ = ["MONEY_DIGITS", "Account", "Broker", "Deal", "Order", "Position"]

#: Every sandbox money amount has 2 decimals.
MONEY_DIGITS: Final = 2
_BUY: Final = m.ProtoOATradeSide.BUY


@dataclass(slots=True)
class Position:
    """An open (or just closed) position; prices are plain floats like on the wire."""

    position_id: int
    account_id: int
    symbol_id: int
    side: int
    volume: int
    price: float
    opened: int
    updated: int
    stop_loss: float | None = None
    take_profit: float | None = None
    label: str = ""
    comment: str = ""
    used_margin: int = 0
    closed: bool = False


@dataclass(slots=True)
class Order:
    """An order: pending, or historical once filled, cancelled or rejected."""

    order_id: int
    account_id: int
    symbol_id: int
    side: int
    order_type: int
    volume: int
    created: int
    updated: int
    status: int = m.ProtoOAOrderStatus.ORDER_STATUS_ACCEPTED
    limit_price: float | None = None
    stop_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    relative_stop_loss: int | None = None
    relative_take_profit: int | None = None
    position_id: int | None = None
    client_order_id: str = ""
    label: str = ""
    comment: str = ""
    time_in_force: int = m.ProtoOATimeInForce.GOOD_TILL_CANCEL
    expiration: int | None = None
    executed_volume: int = 0
    execution_price: float | None = None
    closing: bool = False


@dataclass(slots=True)
class Deal:
    """One fill.  ``close`` holds (entry price, gross profit, balance after) for closing deals."""

    deal_id: int
    order_id: int
    position_id: int
    account_id: int
    symbol_id: int
    side: int
    volume: int
    price: float
    executed: int
    margin_rate: float
    close: tuple[float, int, int] | None = None


@dataclass(slots=True)
class Account:
    """One trading account's live state."""

    spec: AccountSpec
    balance: int
    created: int
    balance_version: int = 1
    positions: dict[int, Position] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    order_history: list[Order] = field(default_factory=list)
    closed_positions: dict[int, Position] = field(default_factory=dict)
    deals: list[Deal] = field(default_factory=list)

    @property
    def account_id(self) -> int:
        return self.spec.account_id


class Broker:
    """All accounts, the id counters, and money arithmetic at current prices.

    :param walk: the price walk (for conversion rates and margins).
    :param now_ms: current time in milliseconds.
    """

    def __init__(self, walk: PriceWalk, now_ms: Callable[[], int]) -> None:
        self.walk = walk
        self.now_ms = now_ms
        start = now_ms()
        self.started = start
        self.accounts = {
            spec.account_id: Account(spec, spec.balance, start - 30 * 86_400_000)
            for spec in ACCOUNTS.values()
        }
        self._next_id = 1

    def new_id(self) -> int:
        """A fresh id for an order, position, deal or depth quote."""
        self._next_id += 1
        return self._next_id

    def account(self, account_id: int) -> Account:
        """The account ``account_id`` (sessions only ask for authorized, known ones)."""
        return self.accounts[account_id]

    # Prices and money

    def quote(self, spec: SymbolSpec) -> tuple[int, int]:
        """Current (bid, ask) of ``spec`` in 1/100000 units."""
        return self.walk.quote_at(spec, self.now_ms())

    def mid(self, spec: SymbolSpec) -> float:
        bid, ask = self.quote(spec)
        return (bid + ask) / 200_000

    def rate(self, first: int, last: int) -> float:
        """Value of one unit of asset ``first`` in asset ``last`` at mid prices."""
        chain = conversion_chain(first, last)
        if not chain:
            return 1.0
        value, asset = 1.0, first
        for spec in chain:
            price = self.mid(spec)
            if spec.base_asset == asset:
                value, asset = value * price, spec.quote_asset
            else:
                value, asset = value / price, spec.base_asset
        return value

    def margin(self, account: Account, spec: SymbolSpec, volume: int) -> int:
        """Margin (money units, 2 digits) needed for ``volume`` of ``spec``."""
        units = volume / 100
        value = units * self.rate(spec.base_asset, account.spec.deposit_asset)
        return round(value / account.spec.leverage * 100)

    def profit(self, account: Account, position: Position, volume: int, price: float) -> int:
        """Gross profit (money units) of closing ``volume`` of ``position`` at ``price``."""
        spec = SYMBOLS[position.symbol_id]
        sign = 1 if position.side == _BUY else -1
        in_quote = (price - position.price) * sign * volume / 100
        return round(in_quote * self.rate(spec.quote_asset, account.spec.deposit_asset) * 100)

    def close_price(self, position: Position) -> float:
        """Price a position would close at now (bid for buys, ask for sells)."""
        bid, ask = self.quote(SYMBOLS[position.symbol_id])
        return (bid if position.side == _BUY else ask) / 100_000

    def used_margin(self, account: Account) -> int:
        return sum(p.used_margin for p in account.positions.values())

    def equity(self, account: Account) -> int:
        pnl = sum(
            self.profit(account, p, p.volume, self.close_price(p))
            for p in account.positions.values()
        )
        return account.balance + pnl

    # Wire forms

    def trader_message(self, account: Account) -> m.ProtoOATrader:
        spec = account.spec
        return m.ProtoOATrader(
            ctidTraderAccountId=spec.account_id,
            balance=account.balance,
            balanceVersion=account.balance_version,
            managerBonus=0,
            ibBonus=0,
            nonWithdrawableBonus=0,
            accessRights=m.ProtoOAAccessRights.FULL_ACCESS,
            depositAssetId=spec.deposit_asset,
            swapFree=False,
            leverageInCents=spec.leverage * 100,
            totalMarginCalculationType=m.ProtoOATotalMarginCalculationType.MAX,
            maxLeverage=spec.leverage,
            traderLogin=spec.login,
            accountType=m.ProtoOAAccountType.HEDGED,
            brokerName="Sandbox",
            registrationTimestamp=account.created,
            moneyDigits=MONEY_DIGITS,
        )

    def position_message(self, position: Position) -> m.ProtoOAPosition:
        status = m.ProtoOAPositionStatus
        msg = m.ProtoOAPosition(
            positionId=position.position_id,
            tradeData=m.ProtoOATradeData(
                symbolId=position.symbol_id,
                volume=position.volume,
                tradeSide=position.side,  # type: ignore[arg-type]
                openTimestamp=position.opened,
                label=position.label,
                comment=position.comment,
            ),
            positionStatus=status.POSITION_STATUS_CLOSED
            if position.closed
            else status.POSITION_STATUS_OPEN,
            swap=0,
            price=position.price,
            utcLastUpdateTimestamp=position.updated,
            commission=0,
            marginRate=position.price,
            usedMargin=position.used_margin,
            moneyDigits=MONEY_DIGITS,
        )
        if position.stop_loss is not None:
            msg.stopLoss = position.stop_loss
        if position.take_profit is not None:
            msg.takeProfit = position.take_profit
        return msg

    def order_message(self, order: Order) -> m.ProtoOAOrder:
        msg = m.ProtoOAOrder(
            orderId=order.order_id,
            tradeData=m.ProtoOATradeData(
                symbolId=order.symbol_id,
                volume=order.volume,
                tradeSide=order.side,  # type: ignore[arg-type]
                openTimestamp=order.created,
                label=order.label,
                comment=order.comment,
            ),
            orderType=order.order_type,  # type: ignore[arg-type]
            orderStatus=order.status,  # type: ignore[arg-type]
            executedVolume=order.executed_volume,
            utcLastUpdateTimestamp=order.updated,
            closingOrder=order.closing,
            clientOrderId=order.client_order_id,
            timeInForce=order.time_in_force,  # type: ignore[arg-type]
        )
        for name in (
            "limit_price",
            "stop_price",
            "stop_loss",
            "take_profit",
            "execution_price",
            "relative_stop_loss",
            "relative_take_profit",
            "position_id",
            "expiration",
        ):
            value = getattr(order, name)
            if value is not None:
                setattr(msg, _ORDER_FIELDS[name], value)
        return msg

    def deal_message(self, deal: Deal) -> m.ProtoOADeal:
        msg = m.ProtoOADeal(
            dealId=deal.deal_id,
            orderId=deal.order_id,
            positionId=deal.position_id,
            volume=deal.volume,
            filledVolume=deal.volume,
            symbolId=deal.symbol_id,
            createTimestamp=deal.executed,
            executionTimestamp=deal.executed,
            utcLastUpdateTimestamp=deal.executed,
            executionPrice=deal.price,
            tradeSide=deal.side,  # type: ignore[arg-type]
            dealStatus=m.ProtoOADealStatus.FILLED,
            marginRate=deal.margin_rate,
            commission=0,
            baseToUsdConversionRate=self.rate(SYMBOLS[deal.symbol_id].base_asset, 1),
            moneyDigits=MONEY_DIGITS,
        )
        if deal.close is not None:
            entry, gross, balance = deal.close
            msg.closePositionDetail.CopyFrom(
                m.ProtoOAClosePositionDetail(
                    entryPrice=entry,
                    grossProfit=gross,
                    swap=0,
                    commission=0,
                    balance=balance,
                    closedVolume=deal.volume,
                    moneyDigits=MONEY_DIGITS,
                )
            )
        return msg


_ORDER_FIELDS: Final = {
    "limit_price": "limitPrice",
    "stop_price": "stopPrice",
    "stop_loss": "stopLoss",
    "take_profit": "takeProfit",
    "execution_price": "executionPrice",
    "relative_stop_loss": "relativeStopLoss",
    "relative_take_profit": "relativeTakeProfit",
    "position_id": "positionId",
    "expiration": "expirationTimestamp",
}
