"""Sandbox trading: orders, executions, positions, deals, reconcile and order errors."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import SANDBOX_SYMBOLS
from tests.test_sandbox_support import EUR_ACCOUNT, START, USD_ACCOUNT, Wire, make_factory

A = USD_ACCOUNT
X = m.ProtoOAExecutionType
BUY, SELL = m.ProtoOATradeSide.BUY, m.ProtoOATradeSide.SELL
LOT_001 = 100_000  # 0.01 lot of an FX pair = 1,000 units


def order(**fields: object) -> m.ProtoOANewOrderReq:
    base: dict[str, object] = {
        "ctidTraderAccountId": A,
        "symbolId": 1,
        "orderType": m.ProtoOAOrderType.MARKET,
        "tradeSide": BUY,
        "volume": LOT_001,
    }
    base.update(fields)
    return m.ProtoOANewOrderReq(**base)  # type: ignore[arg-type]


def executions(frames: list[m.Envelope]) -> list[m.ProtoOAExecutionEvent]:
    return [f.message for f in frames if isinstance(f.message, m.ProtoOAExecutionEvent)]


class MarketOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire().ready(A)

    def open_position(self, **fields: object) -> m.ProtoOAPosition:
        frames = self.wire.request(order(**fields), "open")
        accepted, filled = executions(frames)
        self.assertEqual(
            [accepted.executionType, filled.executionType], [X.ORDER_ACCEPTED, X.ORDER_FILLED]
        )
        self.assertEqual({f.client_msg_id for f in frames[:2]}, {"open"})
        return filled.position

    def test_market_order_fills_at_ask_with_relative_protection(self) -> None:
        _, ask = self.wire.factory.broker.quote(SANDBOX_SYMBOLS[1])
        position = self.open_position(relativeStopLoss=1000, relativeTakeProfit=2000)
        self.assertAlmostEqual(position.price, ask / 100_000)
        self.assertAlmostEqual(position.stopLoss, round(position.price - 0.01, 5))
        self.assertAlmostEqual(position.takeProfit, round(position.price + 0.02, 5))
        self.assertEqual(position.positionStatus, m.ProtoOAPositionStatus.POSITION_STATUS_OPEN)
        self.assertGreater(position.usedMargin, 0)

    def test_margin_changed_event_follows_fill(self) -> None:
        frames = self.wire.request(order())
        self.assertTrue(any(isinstance(f.message, m.ProtoOAMarginChangedEvent) for f in frames))

    def test_full_and_partial_close(self) -> None:
        position = self.open_position(volume=3 * LOT_001)
        close = m.ProtoOAClosePositionReq(
            ctidTraderAccountId=A, positionId=position.positionId, volume=LOT_001
        )
        frames = self.wire.request(close, "part")
        _, filled = executions(frames)
        self.assertTrue(filled.order.closingOrder)
        self.assertEqual(filled.position.tradeData.volume, 2 * LOT_001)
        self.assertEqual(filled.deal.closePositionDetail.closedVolume, LOT_001)
        self.assertTrue(any(isinstance(f.message, m.ProtoOATraderUpdatedEvent) for f in frames))
        close.volume = 2 * LOT_001
        filled = executions(self.wire.request(close))[1]
        self.assertEqual(
            filled.position.positionStatus, m.ProtoOAPositionStatus.POSITION_STATUS_CLOSED
        )
        trader = self.wire.one(m.ProtoOATraderReq(ctidTraderAccountId=A), m.ProtoOATraderRes).trader
        self.assertEqual(trader.balance, filled.deal.closePositionDetail.balance)
        reconcile = self.wire.one(
            m.ProtoOAReconcileReq(ctidTraderAccountId=A), m.ProtoOAReconcileRes
        )
        self.assertEqual(list(reconcile.position), [])
        self.assertEqual(self.wire.error(close), "POSITION_NOT_FOUND")

    def test_close_errors(self) -> None:
        position = self.open_position()
        too_much = m.ProtoOAClosePositionReq(
            ctidTraderAccountId=A, positionId=position.positionId, volume=2 * LOT_001
        )
        self.assertEqual(self.wire.error(too_much), "TRADING_BAD_VOLUME")
        missing = m.ProtoOAClosePositionReq(ctidTraderAccountId=A, positionId=999, volume=LOT_001)
        frames = self.wire.request(missing, "miss")
        error = frames[0].message
        assert isinstance(error, m.ProtoOAOrderErrorEvent)
        self.assertEqual(
            (error.errorCode, error.positionId, frames[0].client_msg_id),
            ("POSITION_NOT_FOUND", 999, "miss"),
        )

    def test_amend_sltp(self) -> None:
        position = self.open_position()
        price = position.price
        amend = m.ProtoOAAmendPositionSLTPReq(
            ctidTraderAccountId=A,
            positionId=position.positionId,
            stopLoss=round(price - 0.005, 5),
            takeProfit=round(price + 0.005, 5),
        )
        (event,) = executions(self.wire.request(amend))
        self.assertEqual(event.executionType, X.ORDER_REPLACED)
        self.assertAlmostEqual(event.position.stopLoss, round(price - 0.005, 5))
        bad = m.ProtoOAAmendPositionSLTPReq(
            ctidTraderAccountId=A, positionId=position.positionId, stopLoss=price + 0.05
        )
        self.assertEqual(self.wire.error(bad), "TRADING_BAD_STOPS")

    def test_order_errors(self) -> None:
        self.assertEqual(self.wire.error(order(volume=1)), "TRADING_BAD_VOLUME")
        self.assertEqual(self.wire.error(order(volume=LOT_001 + 1)), "TRADING_BAD_VOLUME")
        self.assertEqual(self.wire.error(order(symbolId=999)), "SYMBOL_NOT_FOUND")
        self.assertEqual(self.wire.error(order(volume=1_000_000_000)), "NOT_ENOUGH_MONEY")
        self.assertEqual(self.wire.error(order(stopLoss=1.0)), "TRADING_BAD_STOPS")
        limit = order(orderType=m.ProtoOAOrderType.LIMIT)
        self.assertEqual(self.wire.error(limit), "TRADING_BAD_PRICES")

    def test_market_closed(self) -> None:
        wire = Wire(make_factory(start=START + 4 * 86400)).ready(A)  # Saturday
        self.assertEqual(wire.error(order()), "MARKET_CLOSED")
        frames = wire.request(order(symbolId=16, volume=100))  # BTCUSD trades at weekends
        self.assertEqual(executions(frames)[1].executionType, X.ORDER_FILLED)

    def test_deals_and_orders_lists(self) -> None:
        position = self.open_position()
        self.wire.clock.advance(1)
        close = m.ProtoOAClosePositionReq(
            ctidTraderAccountId=A, positionId=position.positionId, volume=LOT_001
        )
        self.wire.request(close)
        deals = self.wire.one(m.ProtoOADealListReq(ctidTraderAccountId=A), m.ProtoOADealListRes)
        self.assertEqual(len(deals.deal), 2)
        self.assertFalse(deals.hasMore)
        one = self.wire.one(
            m.ProtoOADealListReq(ctidTraderAccountId=A, maxRows=1), m.ProtoOADealListRes
        )
        self.assertEqual(len(one.deal), 1)
        self.assertTrue(one.hasMore)
        self.assertTrue(one.deal[0].HasField("closePositionDetail"))  # the newest one
        by_pos = m.ProtoOADealListByPositionIdReq(
            ctidTraderAccountId=A, positionId=position.positionId
        )
        self.assertEqual(len(self.wire.one(by_pos, m.ProtoOADealListByPositionIdRes).deal), 2)
        orders = self.wire.one(m.ProtoOAOrderListReq(ctidTraderAccountId=A), m.ProtoOAOrderListRes)
        self.assertEqual(len(orders.order), 2)
        details = m.ProtoOAOrderDetailsReq(ctidTraderAccountId=A, orderId=orders.order[0].orderId)
        self.assertEqual(len(self.wire.one(details, m.ProtoOAOrderDetailsRes).deal), 1)
        bad = m.ProtoOADealListReq(ctidTraderAccountId=A, fromTimestamp=10, toTimestamp=5)
        self.assertEqual(self.wire.error(bad), "INCORRECT_BOUNDARIES")

    def test_other_sessions_of_the_account_see_executions(self) -> None:
        other = Wire(self.wire.factory).ready(A)
        self.open_position()
        frames = other.received()
        events = executions(frames)
        self.assertEqual(len(events), 2)
        self.assertEqual({f.client_msg_id for f in frames}, {None})

    def test_eur_account_margin_and_pnl(self) -> None:
        wire = Wire(self.wire.factory).ready(EUR_ACCOUNT)
        frames = wire.request(order(ctidTraderAccountId=EUR_ACCOUNT, symbolId=3))  # USDJPY
        filled = executions(frames)[1]
        self.assertGreater(filled.position.usedMargin, 0)
        pnl = wire.one(
            m.ProtoOAGetPositionUnrealizedPnLReq(ctidTraderAccountId=EUR_ACCOUNT),
            m.ProtoOAGetPositionUnrealizedPnLRes,
        )
        self.assertEqual(len(pnl.positionUnrealizedPnL), 1)
        margin = wire.one(
            m.ProtoOAExpectedMarginReq(
                ctidTraderAccountId=EUR_ACCOUNT, symbolId=1, volume=[LOT_001]
            ),
            m.ProtoOAExpectedMarginRes,
        )
        self.assertGreater(margin.margin[0].buyMargin, 0)


class PendingOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire().ready(A)
        self.bid, self.ask = self.wire.factory.broker.quote(SANDBOX_SYMBOLS[1])

    def place(self, order_type: int, price: float, side: int = BUY) -> m.ProtoOAOrder:
        field = "limitPrice" if order_type == m.ProtoOAOrderType.LIMIT else "stopPrice"
        frames = self.wire.request(order(orderType=order_type, tradeSide=side, **{field: price}))
        (accepted,) = executions(frames)
        self.assertEqual(accepted.executionType, X.ORDER_ACCEPTED)
        return accepted.order

    def test_amend_and_cancel(self) -> None:
        placed = self.place(m.ProtoOAOrderType.LIMIT, 0.5)
        amend = m.ProtoOAAmendOrderReq(
            ctidTraderAccountId=A, orderId=placed.orderId, limitPrice=0.6, volume=2 * LOT_001
        )
        (event,) = executions(self.wire.request(amend))
        self.assertEqual(
            (event.executionType, event.order.limitPrice, event.order.tradeData.volume),
            (X.ORDER_REPLACED, 0.6, 2 * LOT_001),
        )
        reconcile = self.wire.one(
            m.ProtoOAReconcileReq(ctidTraderAccountId=A), m.ProtoOAReconcileRes
        )
        self.assertEqual([o.orderId for o in reconcile.order], [placed.orderId])
        cancel = m.ProtoOACancelOrderReq(ctidTraderAccountId=A, orderId=placed.orderId)
        (event,) = executions(self.wire.request(cancel))
        self.assertEqual(event.executionType, X.ORDER_CANCELLED)
        self.assertEqual(self.wire.error(cancel), "ORDER_NOT_FOUND")
        self.assertEqual(self.wire.error(amend), "ORDER_NOT_FOUND")

    def test_pending_orders_fill_when_the_walk_crosses(self) -> None:
        near_up = (self.ask + 3) / 100_000
        near_down = (self.bid - 3) / 100_000
        stop = self.place(m.ProtoOAOrderType.STOP, near_up)
        self.place(m.ProtoOAOrderType.LIMIT, near_down, side=SELL)
        filled: list[m.ProtoOAExecutionEvent] = []
        for _ in range(600):
            self.wire.clock.advance(1)
            filled += [
                e for e in executions(self.wire.received()) if e.executionType == X.ORDER_FILLED
            ]
            if len(filled) == 2:
                break
        self.assertEqual(len(filled), 2)
        self.assertTrue(all(e.isServerEvent for e in filled))
        self.assertIn(stop.orderId, {e.order.orderId for e in filled})

    def test_stop_loss_closes_the_position(self) -> None:
        frames = self.wire.request(order(relativeStopLoss=5, relativeTakeProfit=5))
        position = executions(frames)[1].position
        closed = None
        for _ in range(600):
            self.wire.clock.advance(1)
            for event in executions(self.wire.received()):
                if event.position.positionStatus == m.ProtoOAPositionStatus.POSITION_STATUS_CLOSED:
                    closed = event
            if closed:
                break
        assert closed is not None
        self.assertEqual(closed.position.positionId, position.positionId)
        self.assertTrue(closed.isServerEvent)
