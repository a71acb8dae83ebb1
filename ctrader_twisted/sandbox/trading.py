"""Trading: new, amended and cancelled orders, position closes and SL/TP amendments, and the
order engine that fills pending orders and protection levels as the live walk crosses them.

Every execution event caused by a request carries that request's clientMsgId (for the session
that sent it; other sessions of the same account get the events without one).  Fills done by
the engine on its own (pending orders, stop loss, take profit, expiry) are server events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import messages as m
from .accounts import MONEY_DIGITS, Account, Deal, Order, Position
from .catalogue import SYMBOLS, SymbolSpec

if TYPE_CHECKING:
    from .server import SandboxFactory
    from .session import Session

__all__ = ["OrderEngine", "TradeError", "check_volume"]

_T = m.ProtoOAOrderType
_X = m.ProtoOAExecutionType
_S = m.ProtoOAOrderStatus
_BUY: Final = m.ProtoOATradeSide.BUY
_SELL: Final = m.ProtoOATradeSide.SELL
_MARKETS: Final = (_T.MARKET, _T.MARKET_RANGE)


class TradeError(Exception):
    """A trading request is refused; becomes a ``ProtoOAOrderErrorEvent``."""

    def __init__(
        self,
        code: str,
        description: str,
        *,
        order_id: int | None = None,
        position_id: int | None = None,
    ) -> None:
        super().__init__(description)
        self.code, self.description = code, description
        self.order_id, self.position_id = order_id, position_id


def _money(value: int) -> str:
    return f"{value / 100:.2f}"


def check_volume(spec: SymbolSpec, volume: int) -> None:
    """:raises TradeError: ``TRADING_BAD_VOLUME`` unless ``volume`` fits ``spec``."""
    if volume < spec.min_volume:
        text = f"Order volume {_money(volume)} is smaller than minVolume={_money(spec.min_volume)}."
    elif volume > spec.max_volume:
        text = f"Order volume {_money(volume)} is bigger than maxVolume={_money(spec.max_volume)}."
    elif volume % spec.step_volume:
        step = _money(spec.step_volume)
        text = f"Order volume {_money(volume)} is not a multiple of stepVolume={step}."
    else:
        return
    raise TradeError("TRADING_BAD_VOLUME", text)


class OrderEngine:
    """Applies trading requests to the broker's accounts and reports executions."""

    def __init__(self, factory: SandboxFactory) -> None:
        self._factory = factory
        self.broker = factory.broker
        factory.feed.on_quote = self.on_quote

    # Reporting

    def execution(
        self,
        account: Account,
        kind: int,
        origin: Session | None,
        cmid: str | None,
        *,
        order: Order | None = None,
        position: Position | None = None,
        deal: Deal | None = None,
        error_code: str | None = None,
    ) -> None:
        """Send one ``ProtoOAExecutionEvent`` to the account's sessions."""
        broker = self.broker
        event = m.ProtoOAExecutionEvent(
            ctidTraderAccountId=account.account_id,
            executionType=kind,  # type: ignore[arg-type]
            isServerEvent=origin is None,
        )
        if order is not None:
            event.order.CopyFrom(broker.order_message(order))
        if position is not None:
            event.position.CopyFrom(broker.position_message(position))
        if deal is not None:
            event.deal.CopyFrom(broker.deal_message(deal))
        if error_code is not None:
            event.errorCode = error_code
        self._factory.stats.executions_sent += 1
        self._factory.to_account(account.account_id, event, origin, cmid)

    def _margin_changed(self, account: Account, position: Position) -> None:
        event = m.ProtoOAMarginChangedEvent(
            ctidTraderAccountId=account.account_id,
            positionId=position.position_id,
            usedMargin=position.used_margin,
            moneyDigits=MONEY_DIGITS,
        )
        self._factory.to_account(account.account_id, event, None, None)

    def _trader_updated(self, account: Account) -> None:
        event = m.ProtoOATraderUpdatedEvent(
            ctidTraderAccountId=account.account_id, trader=self.broker.trader_message(account)
        )
        self._factory.to_account(account.account_id, event, None, None)

    # Watching

    def refresh_watch(self, symbol_id: int) -> None:
        """Ask the feed for quotes of ``symbol_id`` while anything may trigger on it."""
        for account in self.broker.accounts.values():
            if any(o.symbol_id == symbol_id for o in account.orders.values()) or any(
                p.symbol_id == symbol_id and (p.stop_loss or p.take_profit)
                for p in account.positions.values()
            ):
                self._factory.feed.watched.add(symbol_id)
                return
        self._factory.feed.watched.discard(symbol_id)

    def market_open(self, spec: SymbolSpec) -> bool:
        return self._factory.walk.is_open(spec, self._factory.now_ms() // 60_000)

    # Fills

    def fill(
        self, account: Account, order: Order, origin: Session | None, cmid: str | None
    ) -> None:
        """Fill ``order`` at the current market price (opening or closing a position).

        :raises TradeError: ``NOT_ENOUGH_MONEY`` (the order is then recorded as rejected).
        """
        spec = SYMBOLS[order.symbol_id]
        bid, ask = self.broker.quote(spec)
        price = (ask if order.side == _BUY else bid) / 100_000
        if order.closing:
            self._fill_closing(account, order, price, origin, cmid)
            return
        now = self._factory.now_ms()
        margin = self._reserve_margin(account, order, spec, now)
        position = self._open_position(account, order, spec, price, now, margin)
        deal = self._deal(account, order, price, now)
        self._finish(account, order, price, now)
        self.execution(
            account, _X.ORDER_FILLED, origin, cmid, order=order, position=position, deal=deal
        )
        self._margin_changed(account, position)
        self.refresh_watch(spec.symbol_id)

    def _reserve_margin(self, account: Account, order: Order, spec: SymbolSpec, now: int) -> int:
        """The margin ``order`` needs.

        :raises TradeError: ``NOT_ENOUGH_MONEY``; the order is then moved to the history as
            rejected.
        """
        try:
            return self.check_margin(account, spec, order.volume)
        except TradeError:
            account.orders.pop(order.order_id, None)
            order.status, order.updated = _S.ORDER_STATUS_REJECTED, now
            account.order_history.append(order)
            raise

    def _open_position(
        self, account: Account, order: Order, spec: SymbolSpec, price: float, now: int, margin: int
    ) -> Position:
        """Open the position ``order`` fills, with its protection levels."""
        position = Position(
            self.broker.new_id(),
            account.account_id,
            spec.symbol_id,
            order.side,
            order.volume,
            price,
            now,
            now,
            label=order.label,
            comment=order.comment,
            used_margin=margin,
        )
        self._protect(spec, order, position)
        account.positions[position.position_id] = position
        order.position_id = position.position_id
        return position

    def check_margin(self, account: Account, spec: SymbolSpec, volume: int) -> int:
        """The margin ``volume`` of ``spec`` needs.

        :raises TradeError: ``NOT_ENOUGH_MONEY`` if the free margin is smaller.
        """
        margin = self.broker.margin(account, spec, volume)
        free = self.broker.equity(account) - self.broker.used_margin(account)
        if margin > free:
            text = f"Not enough money: margin {_money(margin)} is more than free {_money(free)}"
            raise TradeError("NOT_ENOUGH_MONEY", text)
        return margin

    def _protect(self, spec: SymbolSpec, order: Order, position: Position) -> None:
        sign = 1 if order.side == _BUY else -1
        position.stop_loss, position.take_profit = order.stop_loss, order.take_profit
        if order.relative_stop_loss:
            position.stop_loss = round(
                position.price - sign * order.relative_stop_loss / 1e5, spec.digits
            )
        if order.relative_take_profit:
            position.take_profit = round(
                position.price + sign * order.relative_take_profit / 1e5, spec.digits
            )

    def _deal(
        self,
        account: Account,
        order: Order,
        price: float,
        now: int,
        close: tuple[float, int, int] | None = None,
    ) -> Deal:
        deal = Deal(
            self.broker.new_id(),
            order.order_id,
            order.position_id or 0,
            account.account_id,
            order.symbol_id,
            order.side,
            order.volume,
            price,
            now,
            price,
            close,
        )
        account.deals.append(deal)
        return deal

    def _finish(self, account: Account, order: Order, price: float, now: int) -> None:
        account.orders.pop(order.order_id, None)
        order.status, order.updated = _S.ORDER_STATUS_FILLED, now
        order.executed_volume, order.execution_price = order.volume, price
        account.order_history.append(order)

    def _fill_closing(
        self, account: Account, order: Order, price: float, origin: Session | None, cmid: str | None
    ) -> None:
        now = self._factory.now_ms()
        position = account.positions[order.position_id or 0]
        gross = self.broker.profit(account, position, order.volume, price)
        account.balance += gross
        account.balance_version += 1
        deal = self._deal(account, order, price, now, (position.price, gross, account.balance))
        margin_per_unit = position.used_margin / position.volume
        position.volume -= order.volume
        position.used_margin = round(margin_per_unit * position.volume)
        position.updated = now
        if position.volume == 0:
            position.closed = True
            del account.positions[position.position_id]
            account.closed_positions[position.position_id] = position
        self._finish(account, order, price, now)
        self.execution(
            account, _X.ORDER_FILLED, origin, cmid, order=order, position=position, deal=deal
        )
        self._margin_changed(account, position)
        self._trader_updated(account)
        self.refresh_watch(position.symbol_id)

    def close(
        self,
        account: Account,
        position: Position,
        volume: int,
        origin: Session | None,
        cmid: str | None,
    ) -> None:
        """Close ``volume`` of ``position`` with a market order."""
        now = self._factory.now_ms()
        side = _SELL if position.side == _BUY else _BUY
        order = Order(
            self.broker.new_id(),
            account.account_id,
            position.symbol_id,
            side,
            _T.MARKET,
            volume,
            now,
            now,
            position_id=position.position_id,
            closing=True,
        )
        account.orders[order.order_id] = order
        self.execution(account, _X.ORDER_ACCEPTED, origin, cmid, order=order, position=position)
        self.fill(account, order, origin, cmid)

    # The walk moved

    def on_quote(self, spec: SymbolSpec, bid: int, ask: int) -> None:
        """Fill triggered pending orders and protection levels of ``spec``."""
        now = self._factory.now_ms()
        b, a = bid / 100_000, ask / 100_000
        for account in self.broker.accounts.values():
            for order in [o for o in account.orders.values() if o.symbol_id == spec.symbol_id]:
                if order.expiration is not None and order.expiration <= now:
                    self._expire(account, order, now)
                elif _triggered(order, b, a):
                    try:
                        self.fill(account, order, None, None)
                    except TradeError as error:
                        self.execution(
                            account,
                            _X.ORDER_REJECTED,
                            None,
                            None,
                            order=order,
                            error_code=error.code,
                        )
            for position in [
                p for p in account.positions.values() if p.symbol_id == spec.symbol_id
            ]:
                if _protection_hit(position, b, a):
                    self.close(account, position, position.volume, None, None)
        self.refresh_watch(spec.symbol_id)

    def _expire(self, account: Account, order: Order, now: int) -> None:
        del account.orders[order.order_id]
        order.status, order.updated = _S.ORDER_STATUS_EXPIRED, now
        account.order_history.append(order)
        self.execution(account, _X.ORDER_EXPIRED, None, None, order=order)


def _triggered(order: Order, bid: float, ask: float) -> bool:
    buy = order.side == _BUY
    if order.order_type == _T.LIMIT and order.limit_price is not None:
        return ask <= order.limit_price if buy else bid >= order.limit_price
    if order.order_type in (_T.STOP, _T.STOP_LIMIT) and order.stop_price is not None:
        return ask >= order.stop_price if buy else bid <= order.stop_price
    return False


def _protection_hit(position: Position, bid: float, ask: float) -> bool:
    sl, tp = position.stop_loss, position.take_profit
    if position.side == _BUY:
        return (sl is not None and bid <= sl) or (tp is not None and bid >= tp)
    return (sl is not None and ask >= sl) or (tp is not None and ask <= tp)
