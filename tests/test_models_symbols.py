"""Symbol summaries, details and the per-account catalogue (against a fake client)."""

from __future__ import annotations

from decimal import Decimal

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted._failure import failure_of
from ctrader_twisted.errors import OpenApiError
from ctrader_twisted.models import (
    SymbolCatalog,
    SymbolDetails,
    SymbolSummary,
    UnknownSymbol,
    normalize_symbol_name,
    symbol_details_from_proto,
    symbol_summary_from_proto,
)

LIGHT = [
    m.ProtoOALightSymbol(symbolId=1, symbolName="EURUSD", enabled=True, description="Euro"),
    m.ProtoOALightSymbol(symbolId=2, symbolName="GBPUSD", enabled=True),
    m.ProtoOALightSymbol(symbolId=41, symbolName="XAUUSD", enabled=False),
    m.ProtoOALightSymbol(symbolId=100, symbolName="US500"),
]
FULL = {
    1: m.ProtoOASymbol(
        symbolId=1,
        digits=5,
        pipPosition=4,
        lotSize=10_000_000,
        minVolume=100_000,
        maxVolume=10_000_000_000,
        stepVolume=100_000,
    ),
    2: m.ProtoOASymbol(symbolId=2, digits=5, pipPosition=4, lotSize=10_000_000),
    41: m.ProtoOASymbol(symbolId=41, digits=2, pipPosition=1, lotSize=10_000),
    100: m.ProtoOASymbol(symbolId=100, digits=2, pipPosition=0),
}


class FakeClient:
    """Answers symbol requests from the tables above; may hold answers back."""

    def __init__(self, *, hold: bool = False) -> None:
        self.sent: list[Message] = []
        self.hold = hold
        self.held: list[tuple[Deferred[Message], Message]] = []
        self.fail_with: Exception | None = None

    def request(self, message: Message, *, timeout: float | None = None) -> Deferred[Message]:
        self.sent.append(message)
        if self.fail_with is not None:
            return fail(failure_of(self.fail_with))
        answer = self.answer(message)
        if self.hold:
            waiting: Deferred[Message] = Deferred()
            self.held.append((waiting, answer))
            return waiting
        return succeed(answer)

    def answer(self, message: Message) -> Message:
        if isinstance(message, m.ProtoOASymbolsListReq):
            return m.ProtoOASymbolsListRes(
                ctidTraderAccountId=message.ctidTraderAccountId, symbol=LIGHT
            )
        assert isinstance(message, m.ProtoOASymbolByIdReq)
        found = [FULL[i] for i in message.symbolId if i in FULL]
        return m.ProtoOASymbolByIdRes(ctidTraderAccountId=message.ctidTraderAccountId, symbol=found)

    def release(self) -> None:
        held, self.held = self.held, []
        for waiting, answer in held:
            waiting.callback(answer)


class ConversionTests(SynchronousTestCase):
    def test_summary(self) -> None:
        summary = symbol_summary_from_proto(LIGHT[0])
        self.assertEqual(summary, SymbolSummary(1, "EURUSD", True, "Euro", None, None, None))
        self.assertTrue(symbol_summary_from_proto(LIGHT[3]).enabled)
        self.assertFalse(symbol_summary_from_proto(LIGHT[2]).enabled)

    def test_details(self) -> None:
        details = symbol_details_from_proto(FULL[1], symbol_summary_from_proto(LIGHT[0]))
        self.assertEqual(details.name, "EURUSD")
        self.assertEqual(details.pip_size, Decimal("0.0001"))
        self.assertEqual(details.lots_to_volume("0.01"), 100_000)
        self.assertEqual(details.volume_to_lots(25_000_000), Decimal("2.5"))
        self.assertEqual(str(details.price(110000)), "1.10000")
        self.assertEqual(details.price_to_int("1.123456"), 112346)
        self.assertEqual(details.round_price("1.123456"), Decimal("1.12346"))
        self.assertEqual(symbol_details_from_proto(FULL[2]).name, "")

    def test_check_volume(self) -> None:
        details = symbol_details_from_proto(FULL[1])
        self.assertEqual(details.check_volume(200_000), 200_000)
        for bad, reason in [
            (0, "positive"),
            (50_000, "minimum"),
            (150_000, "step"),
            (10**11, "maximum"),
        ]:
            with self.assertRaisesRegex(ValueError, reason):
                details.check_volume(bad)
        unlimited = SymbolDetails(5, "X", 2, 1)
        self.assertEqual(unlimited.check_volume(1), 1)

    def test_unknown_lot_size(self) -> None:
        details = symbol_details_from_proto(FULL[100])
        with self.assertRaisesRegex(ValueError, "lot size"):
            details.lots_to_volume(1)
        with self.assertRaisesRegex(ValueError, "lot size"):
            details.volume_to_lots(1)

    def test_normalize(self) -> None:
        self.assertEqual(normalize_symbol_name(" eur/usd "), "EURUSD")
        self.assertEqual(normalize_symbol_name("us_500.cash"), "US500CASH")


class CatalogTests(SynchronousTestCase):
    def test_resolve_by_name_caches(self) -> None:
        client = FakeClient()
        catalog = SymbolCatalog(client)
        eurusd = self.successResultOf(catalog.resolve(7, "eur/usd"))
        self.assertEqual((eurusd.symbol_id, eurusd.name, eurusd.digits), (1, "EURUSD", 5))
        self.assertEqual(eurusd.description, "Euro")
        again = self.successResultOf(catalog.resolve(7, "EURUSD"))
        self.assertIs(again, eurusd)
        self.assertEqual(len(client.sent), 2)
        self.assertIs(catalog.cached(7, 1), eurusd)
        self.assertIsNone(catalog.cached(7, 2))
        self.assertIsNone(catalog.cached(8, 1))

    def test_resolve_by_id(self) -> None:
        catalog = SymbolCatalog(FakeClient())
        self.assertEqual(self.successResultOf(catalog.resolve(7, 41)).name, "XAUUSD")
        self.assertEqual(self.successResultOf(catalog.resolve(7, "100")).name, "US500")
        self.failureResultOf(catalog.resolve(7, 999), UnknownSymbol)

    def test_unknown_name_suggests(self) -> None:
        catalog = SymbolCatalog(FakeClient())
        failure = self.failureResultOf(catalog.resolve(7, "EURUSX"), UnknownSymbol)
        self.assertEqual(failure.value.suggestions, ("EURUSD",))
        self.assertEqual(str(failure.value), "unknown symbol 'EURUSX' (did you mean EURUSD?)")
        nothing = self.failureResultOf(catalog.resolve(7, "ZZZZZZZZ"), UnknownSymbol)
        self.assertEqual(str(nothing.value), "unknown symbol 'ZZZZZZZZ'")

    def test_cache_is_per_account(self) -> None:
        client = FakeClient()
        catalog = SymbolCatalog(client)
        self.successResultOf(catalog.symbols(7))
        self.successResultOf(catalog.symbols(7))
        self.successResultOf(catalog.symbols(8))
        accounts = [msg.ctidTraderAccountId for msg in client.sent]  # type: ignore[attr-defined]
        self.assertEqual(accounts, [7, 8])

    def test_symbols_list(self) -> None:
        listed = self.successResultOf(SymbolCatalog(FakeClient()).symbols(7))
        self.assertEqual([s.name for s in listed], ["EURUSD", "GBPUSD", "XAUUSD", "US500"])

    def test_details_batch_fetches_only_missing(self) -> None:
        client = FakeClient()
        catalog = SymbolCatalog(client)
        self.successResultOf(catalog.resolve(7, "EURUSD"))
        result = self.successResultOf(catalog.details(7, [2, 1, 41]))
        self.assertEqual([d.name for d in result], ["GBPUSD", "EURUSD", "XAUUSD"])
        last = client.sent[-1]
        assert isinstance(last, m.ProtoOASymbolByIdReq)
        self.assertEqual(list(last.symbolId), [2, 41])
        self.failureResultOf(catalog.details(7, [1, 12345]), UnknownSymbol)

    def test_concurrent_callers_share_one_request(self) -> None:
        client = FakeClient(hold=True)
        catalog = SymbolCatalog(client)
        first = catalog.symbols(7)
        second = catalog.symbols(7)
        self.assertNoResult(first)
        self.assertEqual(len(client.sent), 1)
        client.release()
        self.assertEqual(len(self.successResultOf(first)), 4)
        self.assertEqual(len(self.successResultOf(second)), 4)

    def test_failure_reaches_every_waiter_and_is_not_cached(self) -> None:
        client = FakeClient()
        client.fail_with = OpenApiError("CH_ACCESS_TOKEN_INVALID")
        catalog = SymbolCatalog(client)
        self.failureResultOf(catalog.resolve(7, "EURUSD"), OpenApiError)
        client.fail_with = None
        self.assertEqual(self.successResultOf(catalog.resolve(7, "EURUSD")).symbol_id, 1)

    def test_invalidate(self) -> None:
        client = FakeClient()
        catalog = SymbolCatalog(client)
        self.successResultOf(catalog.symbols(7))
        self.successResultOf(catalog.symbols(8))
        catalog.invalidate(7)
        self.successResultOf(catalog.symbols(7))
        self.successResultOf(catalog.symbols(8))
        self.assertEqual(len(client.sent), 3)
        catalog.invalidate()
        self.successResultOf(catalog.symbols(8))
        self.assertEqual(len(client.sent), 4)
