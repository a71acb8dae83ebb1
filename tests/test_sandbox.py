"""Sandbox sessions: authorization state machine, reference data, spots and protocol errors."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_REFRESH_TOKEN,
    SANDBOX_SYMBOLS,
)
from tests.test_sandbox_support import EUR_ACCOUNT, START, USD_ACCOUNT, Wire, make_factory

A = USD_ACCOUNT


class ApplicationAuthTests(SynchronousTestCase):
    def test_authorizes_with_configured_credentials(self) -> None:
        wire = Wire()
        wire.auth_app()
        self.assertTrue(wire.connected)

    def test_wrong_secret_fails_then_closes(self) -> None:
        wire = Wire()
        req = m.ProtoOAApplicationAuthReq(clientId=DEFAULT_CLIENT_ID, clientSecret="wrong")
        self.assertEqual(wire.error(req), "CH_CLIENT_AUTH_FAILURE")
        self.assertFalse(wire.connected)

    def test_requests_before_app_auth_are_refused(self) -> None:
        wire = Wire()
        self.assertEqual(wire.error(m.ProtoOAVersionReq()), "CH_CLIENT_NOT_AUTHENTICATED")
        req = m.ProtoOAGetAccountListByAccessTokenReq(accessToken=DEFAULT_ACCESS_TOKEN)
        self.assertEqual(wire.error(req), "CH_CLIENT_NOT_AUTHENTICATED")
        self.assertTrue(wire.connected)

    def test_second_app_auth_is_refused(self) -> None:
        wire = Wire()
        wire.auth_app()
        with self.assertRaises(AssertionError):
            wire.auth_app()
        self.assertEqual(wire.factory.stats.errors_by_code["CH_CLIENT_ALREADY_AUTHENTICATED"], 1)

    def test_version(self) -> None:
        wire = Wire(version="test-1")
        wire.auth_app()
        self.assertEqual(wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes).version, "test-1")


class AccountAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire()
        self.wire.auth_app()

    def test_account_list_and_profile(self) -> None:
        req = m.ProtoOAGetAccountListByAccessTokenReq(accessToken=DEFAULT_ACCESS_TOKEN)
        res = self.wire.one(req, m.ProtoOAGetAccountListByAccessTokenRes)
        ids = [a.ctidTraderAccountId for a in res.ctidTraderAccount]
        self.assertEqual(ids, [USD_ACCOUNT, EUR_ACCOUNT])
        self.assertEqual(res.permissionScope, m.ProtoOAClientPermissionScope.SCOPE_TRADE)
        prof = m.ProtoOAGetCtidProfileByTokenReq(accessToken=DEFAULT_ACCESS_TOKEN)
        self.assertTrue(self.wire.one(prof, m.ProtoOAGetCtidProfileByTokenRes).profile.userId)

    def test_bad_token(self) -> None:
        req = m.ProtoOAGetAccountListByAccessTokenReq(accessToken="nope")
        self.assertEqual(self.wire.error(req), "CH_ACCESS_TOKEN_INVALID")
        auth = m.ProtoOAAccountAuthReq(ctidTraderAccountId=A, accessToken="nope")
        self.assertEqual(self.wire.error(auth), "CH_ACCESS_TOKEN_INVALID")

    def test_unknown_account(self) -> None:
        req = m.ProtoOAAccountAuthReq(ctidTraderAccountId=42, accessToken=DEFAULT_ACCESS_TOKEN)
        self.assertEqual(self.wire.error(req), "CH_CTID_TRADER_ACCOUNT_NOT_FOUND")

    def test_already_logged_in(self) -> None:
        self.wire.auth_account(A)
        req = m.ProtoOAAccountAuthReq(ctidTraderAccountId=A, accessToken=DEFAULT_ACCESS_TOKEN)
        frames = self.wire.request(req, "again")
        error = frames[0].message
        assert isinstance(error, m.ProtoOAErrorRes)
        self.assertEqual(
            (error.errorCode, error.ctidTraderAccountId, frames[0].client_msg_id),
            ("ALREADY_LOGGED_IN", A, "again"),
        )

    def test_account_requests_need_account_auth(self) -> None:
        req = m.ProtoOATraderReq(ctidTraderAccountId=A)
        self.assertEqual(self.wire.error(req), "ACCOUNT_NOT_AUTHORIZED")
        self.wire.auth_account(A)
        trader = self.wire.one(req, m.ProtoOATraderRes).trader
        self.assertEqual(
            (trader.balance, trader.moneyDigits, trader.depositAssetId), (1_000_000, 2, 1)
        )
        self.assertEqual(trader.leverageInCents, 10_000)
        other = m.ProtoOATraderReq(ctidTraderAccountId=EUR_ACCOUNT)
        self.assertEqual(self.wire.error(other), "ACCOUNT_NOT_AUTHORIZED")

    def test_logout_sends_disconnect_event(self) -> None:
        self.wire.auth_account(A)
        frames = self.wire.request(m.ProtoOAAccountLogoutReq(ctidTraderAccountId=A), "bye")
        self.assertIsInstance(frames[0].message, m.ProtoOAAccountLogoutRes)
        self.assertEqual(frames[0].client_msg_id, "bye")
        self.assertIsInstance(frames[1].message, m.ProtoOAAccountDisconnectEvent)
        self.assertEqual(
            self.wire.error(m.ProtoOATraderReq(ctidTraderAccountId=A)), "ACCOUNT_NOT_AUTHORIZED"
        )

    def test_refresh_token_invalidates_old_tokens(self) -> None:
        other = Wire(self.wire.factory).ready(A, EUR_ACCOUNT)
        self.wire.auth_account(A)
        frames = self.wire.request(m.ProtoOARefreshTokenReq(refreshToken=DEFAULT_REFRESH_TOKEN))
        res = frames[0].message
        assert isinstance(res, m.ProtoOARefreshTokenRes)
        self.assertNotEqual(res.accessToken, DEFAULT_ACCESS_TOKEN)
        self.assertEqual((res.tokenType, res.expiresIn), ("bearer", 2_628_000))
        events = [f.message for f in frames[1:] + other.received()]
        invalidated = [e for e in events if isinstance(e, m.ProtoOAAccountsTokenInvalidatedEvent)]
        self.assertEqual(
            [list(e.ctidTraderAccountIds) for e in invalidated], [[A], [A, EUR_ACCOUNT]]
        )
        # The old token no longer works; the new one does.
        old = m.ProtoOAAccountAuthReq(ctidTraderAccountId=A, accessToken=DEFAULT_ACCESS_TOKEN)
        self.assertEqual(self.wire.error(old), "CH_ACCESS_TOKEN_INVALID")
        self.wire.auth_account(A, res.accessToken)
        # The refresh token was single-use.
        again = m.ProtoOARefreshTokenReq(refreshToken=DEFAULT_REFRESH_TOKEN)
        self.assertEqual(self.wire.error(again), "CH_ACCESS_TOKEN_INVALID")
        self.wire.one(
            m.ProtoOARefreshTokenReq(refreshToken=res.refreshToken), m.ProtoOARefreshTokenRes
        )


class ReferenceDataTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire().ready(A)

    def test_symbols(self) -> None:
        res = self.wire.one(m.ProtoOASymbolsListReq(ctidTraderAccountId=A), m.ProtoOASymbolsListRes)
        names = {s.symbolName: s.symbolId for s in res.symbol}
        self.assertEqual(names["EURUSD"], 1)
        self.assertTrue({"XAUUSD", "XAGUSD", "US500"} <= names.keys())
        self.assertGreaterEqual(len(names), 14)
        by_id = self.wire.one(
            m.ProtoOASymbolByIdReq(ctidTraderAccountId=A, symbolId=[1, 3]), m.ProtoOASymbolByIdRes
        )
        eurusd, usdjpy = by_id.symbol
        self.assertEqual((eurusd.digits, eurusd.pipPosition, eurusd.lotSize), (5, 4, 10_000_000))
        self.assertEqual((usdjpy.digits, usdjpy.pipPosition), (3, 2))
        self.assertTrue(eurusd.schedule)
        missing = m.ProtoOASymbolByIdReq(ctidTraderAccountId=A, symbolId=[999])
        self.assertEqual(self.wire.error(missing), "SYMBOL_NOT_FOUND")

    def test_assets_classes_categories(self) -> None:
        assets = self.wire.one(m.ProtoOAAssetListReq(ctidTraderAccountId=A), m.ProtoOAAssetListRes)
        self.assertIn("EUR", {a.name for a in assets.asset})
        classes = self.wire.one(
            m.ProtoOAAssetClassListReq(ctidTraderAccountId=A), m.ProtoOAAssetClassListRes
        )
        self.assertIn("Forex", {c.name for c in classes.assetClass})
        cats = self.wire.one(
            m.ProtoOASymbolCategoryListReq(ctidTraderAccountId=A), m.ProtoOASymbolCategoryListRes
        )
        self.assertTrue(cats.symbolCategory)

    def test_conversion_and_leverage(self) -> None:
        req = m.ProtoOASymbolsForConversionReq(ctidTraderAccountId=A, firstAssetId=3, lastAssetId=4)
        chain = self.wire.one(req, m.ProtoOASymbolsForConversionRes).symbol
        self.assertEqual([s.symbolName for s in chain], ["GBPJPY"])
        req = m.ProtoOASymbolsForConversionReq(ctidTraderAccountId=A, firstAssetId=8, lastAssetId=5)
        chain = self.wire.one(req, m.ProtoOASymbolsForConversionRes).symbol
        self.assertEqual([s.symbolName for s in chain], ["NZDUSD", "USDCHF"])
        lev = self.wire.one(
            m.ProtoOAGetDynamicLeverageByIDReq(ctidTraderAccountId=A, leverageId=1),
            m.ProtoOAGetDynamicLeverageByIDRes,
        )
        self.assertTrue(lev.leverage.tiers)


class ProtocolErrorTests(SynchronousTestCase):
    def test_unknown_payload_type(self) -> None:
        wire = Wire()
        wire.auth_app()
        body = m.ProtoMessage(payloadType=9999, clientMsgId="u").SerializeToString()
        wire.protocol.dataReceived(len(body).to_bytes(4, "big") + body)
        (frame,) = wire.received()
        assert isinstance(frame.message, m.ProtoErrorRes)
        self.assertEqual(
            (frame.message.errorCode, frame.client_msg_id), ("UNSUPPORTED_MESSAGE", "u")
        )
        self.assertTrue(wire.connected)

    def test_event_sent_by_client_is_unsupported(self) -> None:
        wire = Wire()
        wire.auth_app()
        self.assertEqual(wire.error(m.ProtoOAVersionRes(version="x")), "UNSUPPORTED_MESSAGE")

    def test_undecodable_frame_closes(self) -> None:
        wire = Wire()
        wire.protocol.dataReceived(b"\x00\x00\x00\x03\xff\xff\xff")
        (frame,) = wire.received()
        assert isinstance(frame.message, m.ProtoErrorRes)
        self.assertEqual(frame.message.errorCode, "INVALID_REQUEST")
        self.assertFalse(wire.connected)

    def test_oversize_frame_is_answered_then_closed(self) -> None:
        wire = Wire(max_frame=1000)
        wire.protocol.dataReceived(b"\x00\x00\x10\x00")
        (frame,) = wire.received()
        assert isinstance(frame.message, m.ProtoErrorRes)
        self.assertEqual(frame.message.errorCode, "FRAME_TOO_LONG")
        self.assertFalse(wire.connected)

    def test_heartbeats_are_not_requests(self) -> None:
        wire = Wire()
        wire.send(m.ProtoHeartbeatEvent())
        self.assertEqual(wire.received(), [])
        self.assertEqual(wire.factory.stats.requests_by_payload_type, {})

    def test_stats_count_requests(self) -> None:
        wire = Wire().ready(A)
        stats = wire.factory.stats
        self.assertEqual(
            stats.requests_by_payload_type[m.payload_type_of(m.ProtoOAAccountAuthReq)], 1
        )
        self.assertEqual((stats.connections_total, stats.connections_open), (1, 1))
        wire.close()
        self.assertEqual(stats.connections_open, 0)
        self.assertEqual(wire.factory.sessions, [])


class SpotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire().ready(A)

    def tearDown(self) -> None:
        self.wire.close()
        self.assertEqual(self.wire.clock.getDelayedCalls(), [])

    def subscribe(self, *ids: int, stamps: bool = False) -> list[m.Envelope]:
        req = m.ProtoOASubscribeSpotsReq(
            ctidTraderAccountId=A, symbolId=list(ids), subscribeToSpotTimestamp=stamps
        )
        return self.wire.request(req)

    def test_first_event_has_both_sides_then_only_changes(self) -> None:
        res, first = self.subscribe(1, stamps=True)
        self.assertIsInstance(res.message, m.ProtoOASubscribeSpotsRes)
        spot = first.message
        assert isinstance(spot, m.ProtoOASpotEvent)
        self.assertTrue(spot.HasField("bid") and spot.HasField("ask") and spot.timestamp)
        self.assertGreater(spot.ask, spot.bid)
        bid, ask = spot.bid, spot.ask
        changes = 0
        for _ in range(20):
            self.wire.clock.advance(1)
            for frame in self.wire.received():
                event = frame.message
                if isinstance(event, m.ProtoOASpotEvent):
                    changes += 1
                    self.assertTrue(event.HasField("bid") or event.HasField("ask"))
                    self.assertNotEqual((event.bid or bid, event.ask or ask), (bid, ask))
                    bid, ask = event.bid or bid, event.ask or ask
        self.assertGreater(changes, 5)

    def test_live_spots_follow_tick_history(self) -> None:
        self.subscribe(1)
        seen = {}
        for _ in range(5):
            self.wire.clock.advance(1)
            for frame in self.wire.received():
                if isinstance(frame.message, m.ProtoOASpotEvent) and frame.message.HasField("bid"):
                    seen[self.wire.factory.now_ms()] = frame.message.bid
        now = self.wire.factory.now_ms()
        req = m.ProtoOAGetTickDataReq(
            ctidTraderAccountId=A, symbolId=1, type=m.ProtoOAQuoteType.BID,
            fromTimestamp=now - 10_000, toTimestamp=now,
        )  # fmt: skip
        ticks = self.wire.one(req, m.ProtoOAGetTickDataRes).tickData
        when = price = 0
        history = {}
        for tick in ticks:
            when, price = when + tick.timestamp, price + tick.tick
            history[when] = price
        for at, bid in seen.items():
            self.assertEqual(history[at], bid)

    def test_errors(self) -> None:
        self.subscribe(1)
        self.wire.received()
        again = m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[1])
        self.assertEqual(self.wire.error(again), "ALREADY_SUBSCRIBED")
        unknown = m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[12345])
        self.assertEqual(self.wire.error(unknown), "SYMBOL_NOT_FOUND")
        bars = m.ProtoOASubscribeLiveTrendbarReq(ctidTraderAccountId=A, symbolId=2, period=1)
        self.assertEqual(self.wire.error(bars), "NOT_SUBSCRIBED_TO_SPOTS")
        depth = m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=A, symbolId=[2])
        self.assertEqual(self.wire.error(depth), "NOT_SUBSCRIBED_TO_SPOTS")
        unsub = m.ProtoOAUnsubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[2])
        self.assertEqual(self.wire.error(unsub), "NOT_SUBSCRIBED_TO_SPOTS")
        ok = m.ProtoOAUnsubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[1])
        self.wire.one(ok, m.ProtoOAUnsubscribeSpotsRes)
        self.wire.clock.advance(5)
        self.assertEqual(self.wire.received(), [])

    def test_live_trendbars_inside_spot_events(self) -> None:
        self.subscribe(1)
        req = m.ProtoOASubscribeLiveTrendbarReq(ctidTraderAccountId=A, symbolId=1, period=1)
        self.wire.one(req, m.ProtoOASubscribeLiveTrendbarRes)
        self.assertEqual(self.wire.error(req), "ALREADY_SUBSCRIBED")
        self.wire.clock.advance(1)
        events = [f.message for f in self.wire.received()]
        spot = events[-1]
        assert isinstance(spot, m.ProtoOASpotEvent)
        (bar,) = spot.trendbar
        self.assertEqual(bar.period, m.ProtoOATrendbarPeriod.M1)
        self.assertEqual(bar.utcTimestampInMinutes, self.wire.factory.now_ms() // 60_000)
        self.assertEqual(bar.low + bar.deltaClose, spot.bid or bar.low + bar.deltaClose)
        unsub = m.ProtoOAUnsubscribeLiveTrendbarReq(ctidTraderAccountId=A, symbolId=1, period=1)
        self.wire.one(unsub, m.ProtoOAUnsubscribeLiveTrendbarRes)

    def test_depth_quotes(self) -> None:
        self.subscribe(1)
        req = m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=A, symbolId=[1])
        frames = self.wire.request(req)
        self.assertIsInstance(frames[0].message, m.ProtoOASubscribeDepthQuotesRes)
        first = frames[1].message
        assert isinstance(first, m.ProtoOADepthEvent)
        self.assertEqual(len(first.newQuotes), 10)
        self.assertFalse(first.deletedQuotes)
        for quote in first.newQuotes:
            self.assertNotEqual(quote.HasField("bid"), quote.HasField("ask"))
        self.assertEqual(self.wire.error(req), "ALREADY_SUBSCRIBED")
        for _ in range(10):
            self.wire.clock.advance(1)
            depth = [
                f.message
                for f in self.wire.received()
                if isinstance(f.message, m.ProtoOADepthEvent)
            ]
            if depth:
                break
        self.assertEqual(set(depth[0].deletedQuotes), {q.id for q in first.newQuotes})
        unsub = m.ProtoOAUnsubscribeDepthQuotesReq(ctidTraderAccountId=A, symbolId=[1])
        self.wire.one(unsub, m.ProtoOAUnsubscribeDepthQuotesRes)

    def test_closed_market_sends_first_event_only(self) -> None:
        wire = Wire(make_factory(start=START + 4 * 86400)).ready(A)  # a Saturday
        req = m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[1, 16])
        frames = wire.request(req)
        self.assertEqual(len(frames), 3)
        wire.clock.advance(10)
        symbols = {
            f.message.symbolId for f in wire.received() if isinstance(f.message, m.ProtoOASpotEvent)
        }
        self.assertEqual(symbols, {16})  # only BTCUSD trades at weekends
        wire.close()

    def test_catalogue_has_eurusd_first(self) -> None:
        self.assertEqual(SANDBOX_SYMBOLS[1].name, "EURUSD")
