"""Account and trading models."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.models import (
    Account,
    PositionStatus,
    TradeSide,
    account_details_from_proto,
    account_from_proto,
    fill_from_deal,
    position_from_proto,
)


class AccountTests(SynchronousTestCase):
    def test_account(self) -> None:
        proto = m.ProtoOACtidTraderAccount(
            ctidTraderAccountId=5000001, isLive=False, traderLogin=42, brokerTitleShort="Sandbox"
        )
        self.assertEqual(account_from_proto(proto), Account(5000001, False, 42, "Sandbox"))
        bare = account_from_proto(m.ProtoOACtidTraderAccount(ctidTraderAccountId=9))
        self.assertEqual(bare, Account(9, False, None, ""))

    def test_details(self) -> None:
        trader = m.ProtoOATrader(
            ctidTraderAccountId=1,
            balance=10053099944,
            depositAssetId=3,
            moneyDigits=8,
            leverageInCents=5000,
            brokerName="B",
        )
        details = account_details_from_proto(trader)
        self.assertEqual(details.balance, Decimal("100.53099944"))
        self.assertEqual(details.leverage, Decimal(50))
        self.assertEqual(details.money_digits, 8)
        fallback = account_details_from_proto(
            m.ProtoOATrader(ctidTraderAccountId=1, balance=12345, depositAssetId=3)
        )
        self.assertEqual(fallback.balance, Decimal("123.45"))
        self.assertIsNone(fallback.leverage)
        self.assertIsNone(fallback.money_digits)


class PositionTests(SynchronousTestCase):
    def test_position(self) -> None:
        proto = m.ProtoOAPosition(
            positionId=77,
            tradeData=m.ProtoOATradeData(
                symbolId=1, volume=100_000, tradeSide=2, openTimestamp=1000, label="x"
            ),
            positionStatus=1,
            swap=-150,
            price=1.10001,
            stopLoss=1.2,
            commission=7,
            moneyDigits=2,
        )
        position = position_from_proto(proto)
        self.assertEqual(position.position_id, 77)
        self.assertIs(position.side, TradeSide.SELL)
        self.assertIs(position.status, PositionStatus.OPEN)
        self.assertEqual(position.entry_price, Decimal("1.10001"))
        self.assertEqual(position.stop_loss, Decimal("1.2"))
        self.assertIsNone(position.take_profit)
        self.assertEqual(position.swap, Decimal("-1.50"))
        self.assertEqual(position.commission, Decimal("0.07"))
        self.assertEqual(position.units, Decimal(1000))
        self.assertEqual(position.open_time, datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
        self.assertEqual(position.label, "x")
        rounded = position_from_proto(proto, digits=3)
        self.assertEqual(str(rounded.entry_price), "1.100")

    def test_fill(self) -> None:
        deal = m.ProtoOADeal(
            dealId=1,
            orderId=2,
            positionId=3,
            volume=100_000,
            filledVolume=100_000,
            symbolId=1,
            createTimestamp=0,
            executionTimestamp=60_000,
            executionPrice=1.10012,
            tradeSide=1,
            dealStatus=2,
            commission=-3,
            moneyDigits=2,
        )
        fill = fill_from_deal(deal)
        self.assertEqual(fill.price, Decimal("1.10012"))
        self.assertIs(fill.side, TradeSide.BUY)
        self.assertFalse(fill.closing)
        self.assertIsNone(fill.gross_profit)
        self.assertEqual(fill.commission, Decimal("-0.03"))
        deal.closePositionDetail.CopyFrom(
            m.ProtoOAClosePositionDetail(
                entryPrice=1.1, grossProfit=123456, swap=0, commission=0, balance=0, moneyDigits=4
            )
        )
        closing = fill_from_deal(deal)
        self.assertTrue(closing.closing)
        self.assertEqual(closing.gross_profit, Decimal("12.3456"))
