"""Account queries: reconcile, deal and order lists, order details, margins, P&L, cash flow
and margin calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from .. import messages as m
from .accounts import MONEY_DIGITS, Account, Deal, Order
from .catalogue import SYMBOLS
from .history import MAX_TIMESTAMP

if TYPE_CHECKING:
    from .session import Handler, Session

__all__ = ["HANDLERS"]

_Item = TypeVar("_Item", Deal, Order)


def _account(session: Session, account_id: int) -> Account:
    return session.factory.broker.account(account_id)


def _window(
    session: Session,
    req: m.ProtoOADealListReq
    | m.ProtoOAOrderListReq
    | m.ProtoOADealListByPositionIdReq
    | m.ProtoOAOrderListByPositionIdReq,
    cmid: str | None,
) -> tuple[int, int] | None:
    to_ms = req.toTimestamp if req.HasField("toTimestamp") else session.factory.now_ms()
    from_ms = req.fromTimestamp if req.HasField("fromTimestamp") else 0
    if from_ms < 0 or from_ms > to_ms or to_ms > MAX_TIMESTAMP:
        text = "fromTimestamp and toTimestamp must satisfy 0 <= from <= to <= 2147483646000"
        session.error("INCORRECT_BOUNDARIES", text, cmid, account_id=req.ctidTraderAccountId)
        return None
    return from_ms, to_ms


def _page(
    items: Sequence[_Item], times: Sequence[int], window: tuple[int, int], limit: int
) -> tuple[list[_Item], bool]:
    """Items inside ``window``, the newest ``limit`` of them in time order, and whether
    older ones were left out."""
    inside = [
        item for item, when in zip(items, times, strict=True) if window[0] <= when <= window[1]
    ]
    return inside[-limit:], len(inside) > limit


def _deal_list(session: Session, req: m.ProtoOADealListReq, cmid: str | None) -> None:
    window = _window(session, req, cmid)
    if window is None:
        return
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    limit = session.config.list_chunk
    if req.HasField("maxRows") and req.maxRows > 0:
        limit = min(limit, req.maxRows)
    deals, more = _page(account.deals, [d.executed for d in account.deals], window, limit)
    res = m.ProtoOADealListRes(ctidTraderAccountId=account.account_id, hasMore=more)
    res.deal.extend(broker.deal_message(d) for d in deals)
    session.reply(res, cmid)


def _all_orders(account: Account) -> list[Order]:
    orders = account.order_history + list(account.orders.values())
    return sorted(orders, key=lambda o: (o.created, o.order_id))


def _order_list(session: Session, req: m.ProtoOAOrderListReq, cmid: str | None) -> None:
    window = _window(session, req, cmid)
    if window is None:
        return
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    orders = _all_orders(account)
    chosen, more = _page(orders, [o.created for o in orders], window, session.config.list_chunk)
    res = m.ProtoOAOrderListRes(ctidTraderAccountId=account.account_id, hasMore=more)
    res.order.extend(broker.order_message(o) for o in chosen)
    session.reply(res, cmid)


def _known_position(session: Session, account: Account, position_id: int, cmid: str | None) -> bool:
    if position_id in account.positions or position_id in account.closed_positions:
        return True
    text = f"Position not found with id {position_id}"
    session.error("POSITION_NOT_FOUND", text, cmid, account_id=account.account_id)
    return False


def _deals_by_position(
    session: Session, req: m.ProtoOADealListByPositionIdReq, cmid: str | None
) -> None:
    window = _window(session, req, cmid)
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    if window is None or not _known_position(session, account, req.positionId, cmid):
        return
    deals = [d for d in account.deals if d.position_id == req.positionId]
    chosen, more = _page(deals, [d.executed for d in deals], window, session.config.list_chunk)
    res = m.ProtoOADealListByPositionIdRes(ctidTraderAccountId=account.account_id, hasMore=more)
    res.deal.extend(broker.deal_message(d) for d in chosen)
    session.reply(res, cmid)


def _orders_by_position(
    session: Session, req: m.ProtoOAOrderListByPositionIdReq, cmid: str | None
) -> None:
    window = _window(session, req, cmid)
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    if window is None or not _known_position(session, account, req.positionId, cmid):
        return
    orders = [o for o in _all_orders(account) if o.position_id == req.positionId]
    chosen, more = _page(orders, [o.created for o in orders], window, session.config.list_chunk)
    res = m.ProtoOAOrderListByPositionIdRes(ctidTraderAccountId=account.account_id, hasMore=more)
    res.order.extend(broker.order_message(o) for o in chosen)
    session.reply(res, cmid)


def _order_details(session: Session, req: m.ProtoOAOrderDetailsReq, cmid: str | None) -> None:
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    order = next((o for o in _all_orders(account) if o.order_id == req.orderId), None)
    if order is None:
        text = f"Order not found with id {req.orderId}"
        session.error("ORDER_NOT_FOUND", text, cmid, account_id=account.account_id)
        return
    res = m.ProtoOAOrderDetailsRes(
        ctidTraderAccountId=account.account_id, order=broker.order_message(order)
    )
    res.deal.extend(broker.deal_message(d) for d in account.deals if d.order_id == order.order_id)
    session.reply(res, cmid)


def _reconcile(session: Session, req: m.ProtoOAReconcileReq, cmid: str | None) -> None:
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    res = m.ProtoOAReconcileRes(ctidTraderAccountId=account.account_id)
    res.position.extend(broker.position_message(p) for p in account.positions.values())
    res.order.extend(broker.order_message(o) for o in account.orders.values() if not o.closing)
    session.reply(res, cmid)


def _expected_margin(session: Session, req: m.ProtoOAExpectedMarginReq, cmid: str | None) -> None:
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    spec = SYMBOLS.get(req.symbolId)
    if spec is None:
        text = f"Symbol not found: {req.symbolId}"
        session.error("SYMBOL_NOT_FOUND", text, cmid, account_id=account.account_id)
        return
    res = m.ProtoOAExpectedMarginRes(
        ctidTraderAccountId=account.account_id, moneyDigits=MONEY_DIGITS
    )
    for volume in req.volume:
        margin = broker.margin(account, spec, volume)
        res.margin.add(volume=volume, buyMargin=margin, sellMargin=margin)
    session.reply(res, cmid)


def _unrealized(
    session: Session, req: m.ProtoOAGetPositionUnrealizedPnLReq, cmid: str | None
) -> None:
    account, broker = _account(session, req.ctidTraderAccountId), session.factory.broker
    res = m.ProtoOAGetPositionUnrealizedPnLRes(
        ctidTraderAccountId=account.account_id, moneyDigits=MONEY_DIGITS
    )
    for position in account.positions.values():
        gross = broker.profit(account, position, position.volume, broker.close_price(position))
        res.positionUnrealizedPnL.add(
            positionId=position.position_id, grossUnrealizedPnL=gross, netUnrealizedPnL=gross
        )
    session.reply(res, cmid)


def _cash_flow(session: Session, req: m.ProtoOACashFlowHistoryListReq, cmid: str | None) -> None:
    account = _account(session, req.ctidTraderAccountId)
    if req.fromTimestamp > req.toTimestamp or req.toTimestamp - req.fromTimestamp > 604_800_000:
        text = "The window must be at most one week (604800000 ms) with from <= to"
        session.error("INCORRECT_BOUNDARIES", text, cmid, account_id=account.account_id)
        return
    res = m.ProtoOACashFlowHistoryListRes(ctidTraderAccountId=account.account_id)
    if req.fromTimestamp <= account.created <= req.toTimestamp:
        res.depositWithdraw.add(
            operationType=m.ProtoOAChangeBalanceType.BALANCE_DEPOSIT,
            balanceHistoryId=account.account_id,
            balance=account.spec.balance,
            delta=account.spec.balance,
            changeBalanceTimestamp=account.created,
            externalNote="Sandbox opening deposit",
            balanceVersion=1,
            equity=account.spec.balance,
            moneyDigits=MONEY_DIGITS,
        )
    session.reply(res, cmid)


def _margin_calls(session: Session, req: m.ProtoOAMarginCallListReq, cmid: str | None) -> None:
    session.reply(m.ProtoOAMarginCallListRes(), cmid)


def _margin_call_update(
    session: Session, req: m.ProtoOAMarginCallUpdateReq, cmid: str | None
) -> None:
    session.reply(m.ProtoOAMarginCallUpdateRes(), cmid)


def _deal_offsets(session: Session, req: m.ProtoOADealOffsetListReq, cmid: str | None) -> None:
    session.reply(m.ProtoOADealOffsetListRes(ctidTraderAccountId=req.ctidTraderAccountId), cmid)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOAReconcileReq: _reconcile,
    m.ProtoOADealListReq: _deal_list,
    m.ProtoOAOrderListReq: _order_list,
    m.ProtoOADealListByPositionIdReq: _deals_by_position,
    m.ProtoOAOrderListByPositionIdReq: _orders_by_position,
    m.ProtoOAOrderDetailsReq: _order_details,
    m.ProtoOAExpectedMarginReq: _expected_margin,
    m.ProtoOAGetPositionUnrealizedPnLReq: _unrealized,
    m.ProtoOACashFlowHistoryListReq: _cash_flow,
    m.ProtoOAMarginCallListReq: _margin_calls,
    m.ProtoOAMarginCallUpdateReq: _margin_call_update,
    m.ProtoOADealOffsetListReq: _deal_offsets,
}
