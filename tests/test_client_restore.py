"""Client session restore, reconnect backoff, fatal auth and account events (rate limits:
``test_client_ratelimit.py``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ctrader_twisted import messages as m
from ctrader_twisted.errors import AccountAuthError, ApplicationAuthError, NotConnected

from .fakeserver import TOKEN
from .test_client import ClientTestCase, Harness


class RestoreTests(ClientTestCase):
    def subscribed(self, **options: Any) -> Harness:
        h = self.ready(**options)
        for account in (1001, 1002):
            self.successResultOf(self.settle(h, h.client.authorize_account(account, TOKEN)))
        self.successResultOf(self.settle(h, h.client.subscribe_spots(1001, [1, 2])))
        self.successResultOf(self.settle(h, h.client.subscribe_spots(1002, [3], timestamps=True)))
        self.successResultOf(self.settle(h, h.client.subscribe_live_trendbars(1001, 1, 1)))
        self.successResultOf(self.settle(h, h.client.subscribe_depth(1002, [3])))
        h.server.clear()
        return h

    def settle(self, h: Harness, deferred: Deferred[Any]) -> Deferred[Any]:
        h.flush()
        return deferred

    def test_restore_order_after_reconnect(self) -> None:
        h = self.subscribed()
        answered = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.successResultOf(answered)
        h.drop()
        later = h.client.request(m.ProtoOAVersionReq())
        self.assertFalse(h.client.is_ready)
        h.advance(0.5)
        self.assertTrue(h.client.is_ready)
        self.assertEqual(
            h.server.names(),
            [
                "ProtoOAVersionReq",  # answered on the first connection
                "ProtoOAApplicationAuthReq",
                "ProtoOAAccountAuthReq",
                "ProtoOAAccountAuthReq",
                "ProtoOASubscribeSpotsReq",
                "ProtoOASubscribeSpotsReq",
                "ProtoOASubscribeLiveTrendbarReq",
                "ProtoOASubscribeDepthQuotesReq",
                "ProtoOAVersionReq",  # queued during the outage: only after the restore
            ],
        )
        restored = [
            msg for _, msg in h.server.received if isinstance(msg, m.ProtoOASubscribeSpotsReq)
        ]
        self.assertEqual(
            [
                (s.ctidTraderAccountId, list(s.symbolId), s.subscribeToSpotTimestamp)
                for s in restored
            ],
            [(1001, [1, 2], False), (1002, [3], True)],
        )
        self.assertEqual(h.server.current.accounts, {1001, 1002})
        self.assertEqual(h.client.authorized_accounts, frozenset({1001, 1002}))
        self.assertEqual(h.client.reconnect_count, 1)
        self.successResultOf(later)

    def test_when_ready_waits_for_the_restore(self) -> None:
        h = self.subscribed()
        h.server.silent.add(m.ProtoOASubscribeDepthQuotesReq)
        h.drop()
        ready = h.client.when_ready()
        h.advance(0.5)
        self.assertNoResult(ready)
        conn = h.server.current
        cid = next(
            c for c, msg in h.server.received if isinstance(msg, m.ProtoOASubscribeDepthQuotesReq)
        )
        conn.send(m.ProtoOASubscribeDepthQuotesRes(ctidTraderAccountId=1002), cid)
        h.flush()
        self.successResultOf(ready)

    def test_unsubscribed_is_not_restored(self) -> None:
        h = self.subscribed()
        self.successResultOf(self.settle(h, h.client.unsubscribe_spots(1001, [2])))
        self.successResultOf(self.settle(h, h.client.unsubscribe_depth(1002, [3])))
        self.successResultOf(self.settle(h, h.client.unsubscribe_live_trendbars(1001, 1, 1)))
        h.server.clear()
        h.drop()
        h.advance(0.5)
        spots = [msg for _, msg in h.server.received if isinstance(msg, m.ProtoOASubscribeSpotsReq)]
        self.assertEqual([list(s.symbolId) for s in spots], [[1], [3]])
        self.assertNotIn("ProtoOASubscribeDepthQuotesReq", h.server.names())
        self.assertNotIn("ProtoOASubscribeLiveTrendbarReq", h.server.names())

    def test_refused_account_is_dropped_on_restore(self) -> None:
        h = self.subscribed()
        h.server.tokens[TOKEN] = (1001,)
        h.drop()
        h.advance(0.5)
        self.assertTrue(h.client.is_ready)
        self.assertEqual(h.client.authorized_accounts, frozenset({1001}))
        spots = [msg for _, msg in h.server.received if isinstance(msg, m.ProtoOASubscribeSpotsReq)]
        self.assertEqual([s.ctidTraderAccountId for s in spots], [1001])

    def test_restore_timeout_reconnects(self) -> None:
        h = self.subscribed(request_timeout=2.0)
        h.server.silent.add(m.ProtoOAAccountAuthReq)
        h.drop()
        h.advance(0.5)
        self.assertFalse(h.client.is_ready)
        h.advance(2.0)  # the account auth times out: the connection is dropped
        self.assertEqual(len(h.server.connections), 2)
        h.server.silent.clear()
        h.advance(0.999)  # the failed restore counts: the delay doubled
        self.assertEqual(len(h.server.connections), 2)
        h.advance(0.001)
        self.assertTrue(h.client.is_ready)
        self.assertEqual(len(h.server.connections), 3)

    def test_backoff_grows_until_ready(self) -> None:
        h = self.ready(reconnect_initial_delay=0.5, reconnect_factor=2.0, reconnect_max_delay=3.0)
        h.endpoint.refuse = 4
        h.drop()
        for expected in (0.5, 1.0, 2.0, 3.0):
            attempts = h.endpoint.attempts
            h.advance(expected - 0.001)
            self.assertEqual(h.endpoint.attempts, attempts)
            h.advance(0.001)
            self.assertEqual(h.endpoint.attempts, attempts + 1)
        h.advance(3.0)
        self.assertTrue(h.client.is_ready)
        h.drop()  # ready for less than reconnect_reset_after: the delay keeps growing
        h.advance(2.999)
        self.assertFalse(h.client.is_ready)
        h.advance(0.001)
        self.assertTrue(h.client.is_ready)
        h.advance(30.0)  # ready for reconnect_reset_after: the delay starts small again
        h.drop()
        h.advance(0.5)
        self.assertTrue(h.client.is_ready)

    def test_jitter_stays_in_bounds(self) -> None:
        h = self.harness(reconnect_jitter=0.2, reconnect_initial_delay=1.0)
        for base in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0):
            delay = h.client._retry_delay(1)
            self.assertTrue(0.8 * base <= delay <= 1.2 * base, (base, delay))

    def test_stop_during_restore(self) -> None:
        h = self.harness()
        h.server.silent.add(m.ProtoOAApplicationAuthReq)
        h.start()
        waiting = h.client.request(m.ProtoOAVersionReq())
        stopped = h.client.stopService()
        h.flush()
        h.clock.advance(0)
        self.successResultOf(stopped)
        self.failureResultOf(waiting, NotConnected)
        h.advance(60)
        self.assertEqual(len(h.server.connections), 1)


class FatalAuthTests(ClientTestCase):
    def test_wrong_credentials_are_fatal(self) -> None:
        h = self.harness()
        h.server.client_secret = "other"
        ready = h.client.when_ready()
        h.client.startService()
        queued = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.clock.advance(0)
        error = self.failureResultOf(ready, ApplicationAuthError).value
        self.assertEqual(error.code, "CH_CLIENT_AUTH_FAILURE")
        self.failureResultOf(queued, ApplicationAuthError)
        self.failureResultOf(h.client.when_ready(), ApplicationAuthError)
        self.failureResultOf(h.client.request(m.ProtoOAVersionReq()), ApplicationAuthError)
        h.advance(120)
        self.assertEqual(h.endpoint.attempts, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class AccountEventTests(ClientTestCase):
    def authorized(self) -> Harness:
        h = self.ready()
        h.client.authorize_account(1001, TOKEN)
        h.flush()
        h.client.subscribe_spots(1001, [1])
        h.flush()
        h.server.clear()
        return h

    def test_account_disconnect_reauthorizes(self) -> None:
        h = self.authorized()
        seen: list[int] = []
        h.client.on(m.ProtoOAAccountDisconnectEvent, lambda e: seen.append(e.ctidTraderAccountId))
        h.server.current.send(m.ProtoOAAccountDisconnectEvent(ctidTraderAccountId=1001))
        h.flush()
        self.assertEqual(seen, [1001])
        self.assertEqual(h.server.names(), ["ProtoOAAccountAuthReq", "ProtoOASubscribeSpotsReq"])

    def test_account_disconnect_refused_drops_account(self) -> None:
        h = self.authorized()
        h.server.tokens.clear()
        h.server.current.send(m.ProtoOAAccountDisconnectEvent(ctidTraderAccountId=1001))
        h.flush()
        self.assertEqual(h.client.authorized_accounts, frozenset())

    def test_token_invalidated_drops_accounts(self) -> None:
        h = self.authorized()
        seen: list[list[int]] = []
        h.client.on(
            m.ProtoOAAccountsTokenInvalidatedEvent,
            lambda e: seen.append(list(e.ctidTraderAccountIds)),
        )
        h.server.current.send(m.ProtoOAAccountsTokenInvalidatedEvent(ctidTraderAccountIds=[1001]))
        h.flush()
        self.assertEqual(seen, [[1001]])
        self.assertEqual(h.client.authorized_accounts, frozenset())
        h.drop()
        h.advance(0.5)
        self.assertEqual(h.server.names(), ["ProtoOAApplicationAuthReq"])
        # Authorizing again brings the recorded subscriptions back.
        h.client.authorize_account(1001, "access-token-2")
        h.flush()
        self.assertEqual(
            h.server.names()[1:], ["ProtoOAAccountAuthReq", "ProtoOASubscribeSpotsReq"]
        )

    def test_account_auth_refused(self) -> None:
        h = self.ready()
        failed = h.client.authorize_account(1001, "wrong")
        h.flush()
        self.failureResultOf(failed, AccountAuthError)
        self.assertEqual(h.client.authorized_accounts, frozenset())

    def test_logout_removes_account(self) -> None:
        h = self.authorized()
        h.client.request(m.ProtoOAAccountLogoutReq(ctidTraderAccountId=1001))
        h.flush()
        h.server.current.send(m.ProtoOAAccountDisconnectEvent(ctidTraderAccountId=1001))
        h.flush()
        self.assertEqual(h.client.authorized_accounts, frozenset())
        self.assertEqual(h.server.names(), ["ProtoOAAccountLogoutReq"])

    def test_refresh_token_reauthorizes(self) -> None:
        h = self.authorized()
        result = h.client.refresh_token("refresh-1")
        h.flush()
        self.assertEqual(self.successResultOf(result).accessToken, "access-token-2")
        auth = [msg for _, msg in h.server.received if isinstance(msg, m.ProtoOAAccountAuthReq)]
        self.assertEqual(
            [(a.ctidTraderAccountId, a.accessToken) for a in auth], [(1001, "access-token-2")]
        )
        h.server.clear()
        h.drop()
        h.advance(0.5)
        auth = [msg for _, msg in h.server.received if isinstance(msg, m.ProtoOAAccountAuthReq)]
        self.assertEqual([a.accessToken for a in auth], ["access-token-2"])
