"""Handlers of the five trading requests; the state changes live in :mod:`.trading`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .. import messages as m
from .accounts import Account, Order, Position
from .catalogue import SYMBOLS
from .trading import OrderEngine, TradeError, check_volume

if TYPE_CHECKING:
    from .session import Handler, Session

__all__ = ["HANDLERS"]

_T = m.ProtoOAOrderType
_X = m.ProtoOAExecutionType
_S = m.ProtoOAOrderStatus
_BUY: Final = m.ProtoOATradeSide.BUY
_MARKETS: Final = (_T.MARKET, _T.MARKET_RANGE)


def _run(session: Session, account_id: int, cmid: str | None, action: Callable[[], None]) -> None:
    try:
        action()
    except TradeError as error:
        session.order_error(
            account_id,
            error.code,
            error.description,
            cmid,
            order_id=error.order_id,
            position_id=error.position_id,
        )


def _engine(session: Session) -> OrderEngine:
    return session.factory.engine


def _new_order(session: Session, req: m.ProtoOANewOrderReq, cmid: str | None) -> None:
    _run(session, req.ctidTraderAccountId, cmid, lambda: _place(session, req, cmid))


def _place(session: Session, req: m.ProtoOANewOrderReq, cmid: str | None) -> None:
    engine = _engine(session)
    account = engine.broker.account(req.ctidTraderAccountId)
    spec = SYMBOLS.get(req.symbolId)
    if spec is None:
        raise TradeError("SYMBOL_NOT_FOUND", f"Symbol not found: {req.symbolId}")
    check_volume(spec, req.volume)
    if not engine.market_open(spec):
        raise TradeError("MARKET_CLOSED", f"Market is closed for {spec.name}")
    market = req.orderType in _MARKETS
    if market and (req.HasField("stopLoss") or req.HasField("takeProfit")):
        raise TradeError(
            "TRADING_BAD_STOPS",
            "Absolute stopLoss/takeProfit are not supported "
            "for MARKET orders; use relativeStopLoss/relativeTakeProfit",
        )
    if req.orderType == _T.LIMIT and req.limitPrice <= 0:
        raise TradeError("TRADING_BAD_PRICES", "A LIMIT order needs a positive limitPrice")
    if req.orderType in (_T.STOP, _T.STOP_LIMIT) and req.stopPrice <= 0:
        raise TradeError("TRADING_BAD_PRICES", "A STOP order needs a positive stopPrice")
    if req.relativeStopLoss < 0 or req.relativeTakeProfit < 0:
        raise TradeError("TRADING_BAD_STOPS", "Relative stop loss and take profit must be positive")
    if market:
        engine.check_margin(account, spec, req.volume)
    order = _order_from(engine, account, req)
    account.orders[order.order_id] = order
    engine.execution(account, _X.ORDER_ACCEPTED, session, cmid, order=order)
    if market:
        engine.fill(account, order, session, cmid)
    else:
        engine.refresh_watch(spec.symbol_id)


def _order_from(engine: OrderEngine, account: Account, req: m.ProtoOANewOrderReq) -> Order:
    now = engine.broker.now_ms()
    order = Order(
        engine.broker.new_id(),
        account.account_id,
        req.symbolId,
        req.tradeSide,
        req.orderType,
        req.volume,
        now,
        now,
        client_order_id=req.clientOrderId,
        label=req.label,
        comment=req.comment,
    )
    if req.orderType == _T.LIMIT:
        order.limit_price = req.limitPrice
    elif req.orderType in (_T.STOP, _T.STOP_LIMIT):
        order.stop_price = req.stopPrice
    order.stop_loss = req.stopLoss if req.HasField("stopLoss") else None
    order.take_profit = req.takeProfit if req.HasField("takeProfit") else None
    order.relative_stop_loss = req.relativeStopLoss or None
    order.relative_take_profit = req.relativeTakeProfit or None
    if req.HasField("timeInForce"):
        order.time_in_force = req.timeInForce
    if req.HasField("expirationTimestamp"):
        order.expiration = req.expirationTimestamp
    return order


def _pending(account: Account, order_id: int) -> Order:
    order = account.orders.get(order_id)
    if order is None or order.closing:
        raise TradeError(
            "ORDER_NOT_FOUND", f"Order not found with id {order_id}", order_id=order_id
        )
    return order


def _position(account: Account, position_id: int) -> Position:
    position = account.positions.get(position_id)
    if position is None:
        text = f"Position not found with id {position_id}"
        raise TradeError("POSITION_NOT_FOUND", text, position_id=position_id)
    return position


def _cancel(session: Session, req: m.ProtoOACancelOrderReq, cmid: str | None) -> None:
    def action() -> None:
        engine = _engine(session)
        account = engine.broker.account(req.ctidTraderAccountId)
        order = _pending(account, req.orderId)
        del account.orders[order.order_id]
        order.status, order.updated = _S.ORDER_STATUS_CANCELLED, engine.broker.now_ms()
        account.order_history.append(order)
        engine.execution(account, _X.ORDER_CANCELLED, session, cmid, order=order)
        engine.refresh_watch(order.symbol_id)

    _run(session, req.ctidTraderAccountId, cmid, action)


def _amend(session: Session, req: m.ProtoOAAmendOrderReq, cmid: str | None) -> None:
    def action() -> None:
        engine = _engine(session)
        account = engine.broker.account(req.ctidTraderAccountId)
        order = _pending(account, req.orderId)
        if req.HasField("volume"):
            check_volume(SYMBOLS[order.symbol_id], req.volume)
            order.volume = req.volume
        if req.HasField("limitPrice") and order.order_type == _T.LIMIT:
            order.limit_price = req.limitPrice
        if req.HasField("stopPrice") and order.order_type in (_T.STOP, _T.STOP_LIMIT):
            order.stop_price = req.stopPrice
        if req.HasField("stopLoss"):
            order.stop_loss = req.stopLoss
        if req.HasField("takeProfit"):
            order.take_profit = req.takeProfit
        if req.HasField("relativeStopLoss"):
            order.relative_stop_loss = req.relativeStopLoss
        if req.HasField("relativeTakeProfit"):
            order.relative_take_profit = req.relativeTakeProfit
        if req.HasField("expirationTimestamp"):
            order.expiration = req.expirationTimestamp
        order.updated = engine.broker.now_ms()
        engine.execution(account, _X.ORDER_REPLACED, session, cmid, order=order)
        engine.refresh_watch(order.symbol_id)

    _run(session, req.ctidTraderAccountId, cmid, action)


def _amend_sltp(session: Session, req: m.ProtoOAAmendPositionSLTPReq, cmid: str | None) -> None:
    def action() -> None:
        engine = _engine(session)
        account = engine.broker.account(req.ctidTraderAccountId)
        position = _position(account, req.positionId)
        bid, ask = (p / 100_000 for p in engine.broker.quote(SYMBOLS[position.symbol_id]))
        sl = req.stopLoss if req.HasField("stopLoss") else None
        tp = req.takeProfit if req.HasField("takeProfit") else None
        buy = position.side == _BUY
        if sl is not None and (sl >= bid if buy else sl <= ask):
            side, where = ("BUY", "< current BID") if buy else ("SELL", "> current ASK")
            raise TradeError(
                "TRADING_BAD_STOPS",
                f"New SL for {side} position should be {where} price.",
                position_id=position.position_id,
            )
        if tp is not None and (tp <= bid if buy else tp >= ask):
            side, where = ("BUY", "> current BID") if buy else ("SELL", "< current ASK")
            raise TradeError(
                "TRADING_BAD_STOPS",
                f"New TP for {side} position should be {where} price.",
                position_id=position.position_id,
            )
        position.stop_loss, position.take_profit = sl, tp
        position.updated = engine.broker.now_ms()
        engine.execution(account, _X.ORDER_REPLACED, session, cmid, position=position)
        engine.refresh_watch(position.symbol_id)

    _run(session, req.ctidTraderAccountId, cmid, action)


def _close(session: Session, req: m.ProtoOAClosePositionReq, cmid: str | None) -> None:
    def action() -> None:
        engine = _engine(session)
        account = engine.broker.account(req.ctidTraderAccountId)
        position = _position(account, req.positionId)
        spec = SYMBOLS[position.symbol_id]
        if req.volume <= 0 or req.volume > position.volume or req.volume % spec.step_volume:
            text = (
                f"Close volume {req.volume / 100:.2f} is not valid for position "
                f"{position.position_id} of volume {position.volume / 100:.2f}"
            )
            raise TradeError("TRADING_BAD_VOLUME", text, position_id=position.position_id)
        if not engine.market_open(spec):
            raise TradeError("MARKET_CLOSED", f"Market is closed for {spec.name}")
        engine.close(account, position, req.volume, session, cmid)

    _run(session, req.ctidTraderAccountId, cmid, action)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOANewOrderReq: _new_order,
    m.ProtoOACancelOrderReq: _cancel,
    m.ProtoOAAmendOrderReq: _amend,
    m.ProtoOAAmendPositionSLTPReq: _amend_sltp,
    m.ProtoOAClosePositionReq: _close,
}
