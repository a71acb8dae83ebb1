"""Accounts across token refreshes, against the in-memory sandbox.

A real refresh every time: the sandbox's own token store issues the new tokens and invalidates
the old access token, ending the account sessions that used it
(``ProtoOAAccountsTokenInvalidatedEvent``).  Over the socket, ``socket_refresh`` does it; over
HTTP, a refresh function plays the token endpoint of the same sandbox (the loopback test with
a real twisted.web endpoint is ``tests/test_oauth_reauth.py``).  Also: an expired token at
start-up, and ``unsubscribe_spots`` forgetting the live trendbars and depth that need spots.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.errors import AccountAuthError
from ctrader_twisted.oauth import (
    AccountKeeper,
    Token,
    TokenRefresher,
    keep_client_authorized,
    socket_refresh,
)
from ctrader_twisted.sandbox import SandboxConfig, SandboxFactory
from ctrader_twisted.sandbox.auth import TokenStore as SandboxTokens
from ctrader_twisted.testing import MemorySandbox

from .hostile import LogCapture

_T = TypeVar("_T")

A, B = 5000001, 5000002
LIFETIME = 2_628_000.0
#: A second token the sandbox accepts for every account and never invalidates.
OTHER = "second-access-token-for-b"


class TwoTokens(SandboxTokens):
    def is_valid(self, access_token: str) -> bool:
        return access_token == OTHER or super().is_valid(access_token)


class SandboxCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.sandbox = MemorySandbox(SandboxConfig(always_open=True, tick_interval=0.5))
        self.config = self.sandbox.config
        self.client = self.sandbox.client(reconnect_jitter=0.0)
        self.client.startService()
        self.addCleanup(self._stop)
        self.wait(self.client.when_ready())

    def _stop(self) -> None:
        stopped = self.client.stopService()
        self.sandbox.advance(1)
        self.assertTrue(stopped.called)

    def wait(self, deferred: Deferred[_T]) -> _T:
        return self.sandbox.result(deferred)

    @property
    def factory(self) -> SandboxFactory:
        return self.sandbox.factory

    def first_token(self, expires_at: float | None = None) -> Token:
        now = self.sandbox.clock.seconds()
        expiry = now + LIFETIME if expires_at is None else expires_at
        return Token(self.config.access_token, self.config.refresh_token, expiry, now - 60)

    def server_accounts(self) -> dict[int, str]:
        """Accounts authorized on the sandbox's only connection, with their tokens."""
        (session,) = self.factory.sessions
        return dict(session.accounts)

    def spots_on_server(self, account: int, symbols: list[int]) -> list[bool]:
        (session,) = self.factory.sessions
        return [self.factory.feed.find(session, account, s) is not None for s in symbols]

    def reconnect(self) -> None:
        before = self.client.reconnect_count
        self.sandbox.drop_all()
        self.sandbox.advance(2)
        self.wait(self.client.when_ready())
        self.assertEqual(self.client.reconnect_count, before + 1)


class SocketRefreshTests(SandboxCase):
    def test_accounts_reauthorized_and_restored(self) -> None:
        token = self.first_token()
        for account in (A, B):
            self.wait(self.client.authorize_account(account, token.access_token))
        self.wait(self.client.subscribe_spots(A, [1, 2]))
        refresher = TokenRefresher(
            self.sandbox.clock, socket_refresh(self.client, self.sandbox.clock), token
        )
        new = self.wait(refresher.refresh_now())
        self.assertNotEqual(new.access_token, token.access_token)
        self.assertEqual(self.client.accounts_authorized_with(new.access_token), {A, B})
        self.assertEqual(self.server_accounts(), {A: new.access_token, B: new.access_token})
        self.assertEqual(self.spots_on_server(A, [1, 2]), [True, True])
        self.reconnect()
        self.assertEqual(self.server_accounts(), {A: new.access_token, B: new.access_token})
        self.assertEqual(self.spots_on_server(A, [1, 2]), [True, True])

    def test_only_the_accounts_of_the_refreshed_token(self) -> None:
        self.factory.tokens = TwoTokens(self.config)
        token = self.first_token()
        self.wait(self.client.authorize_account(A, token.access_token))
        self.wait(self.client.authorize_account(B, OTHER))
        self.wait(self.client.subscribe_spots(A, [3]))
        refresher = TokenRefresher(
            self.sandbox.clock, socket_refresh(self.client, self.sandbox.clock), token
        )
        new = self.wait(refresher.refresh_now())
        self.assertEqual(self.client.accounts_authorized_with(new.access_token), {A})
        self.assertEqual(self.client.accounts_authorized_with(OTHER), {B})
        self.reconnect()
        self.assertEqual(self.server_accounts(), {A: new.access_token, B: OTHER})
        self.assertEqual(self.spots_on_server(A, [3]), [True])

    def test_keeper_with_socket_refresh_is_quiet(self) -> None:
        """The client re-authorizes during a socket refresh; the keeper finds nothing to do."""
        token = self.first_token()
        clock = self.sandbox.clock
        refresher = TokenRefresher(clock, socket_refresh(self.client, clock), token)
        keeper = keep_client_authorized(self.client, refresher)
        self.addCleanup(keeper.stop)
        self.wait(keeper.authorize(A))
        with LogCapture() as log:
            new = self.wait(refresher.refresh_now())
            self.wait(keeper.settled())
            self.sandbox.advance(1)
        keeper_events = [
            e for e in log.events if "AccountKeeper" in str(e.get("log_namespace", ""))
        ]
        self.assertEqual(keeper_events, [])  # nothing left to re-authorize, nothing logged
        self.assertEqual(log.formatted("error", "critical"), [])
        self.assertEqual(self.server_accounts(), {A: new.access_token})


class HttpCase(SandboxCase):
    """``TokenRefresher(clock, oauth.refresh, token)`` plus ``keep_client_authorized``."""

    def setUp(self) -> None:
        super().setUp()
        self.hold = False

    def refresh(self, refresh_token: str) -> Deferred[Token]:
        """What the token endpoint does on ``grant_type=refresh_token`` for this sandbox."""
        issued = self.factory.tokens.refresh(refresh_token)
        assert issued is not None, "refresh token refused"
        old, access, refresh = issued
        now = self.sandbox.clock.seconds()
        token = Token.from_expires_in(access, refresh, LIFETIME, now)
        self.factory.invalidate_token(old, "Access token refreshed")
        if not self.hold:
            return succeed(token)  # the HTTP answer comes before the socket's event
        d: Deferred[Token] = Deferred()
        self.sandbox.flush()  # the event comes first: the client drops the accounts
        self.assertEqual(self.client.authorized_accounts, frozenset())
        d.callback(token)
        return d

    def kept(self, token: Token) -> tuple[TokenRefresher, AccountKeeper]:
        refresher = TokenRefresher(self.sandbox.clock, self.refresh, token)
        keeper = keep_client_authorized(self.client, refresher)
        self.addCleanup(keeper.stop)
        return refresher, keeper


class HttpRefreshTests(HttpCase):
    def subscribed(self, keeper: AccountKeeper, token: Token) -> None:
        self.wait(keeper.authorize(A))
        # B is authorized directly on the client with the refresher's token: adopted too
        self.wait(self.client.authorize_account(B, token.access_token))
        self.wait(self.client.subscribe_spots(A, [1, 2]))
        self.wait(self.client.subscribe_live_trendbars(A, 1, m.ProtoOATrendbarPeriod.M1))
        self.wait(self.client.subscribe_spots(B, [4]))

    def check_after_refresh(self, new: Token, keeper: AccountKeeper) -> None:
        self.wait(keeper.settled())
        self.sandbox.advance(1)
        self.assertEqual(keeper.accounts, {A, B})
        self.assertEqual(self.client.accounts_authorized_with(new.access_token), {A, B})
        self.assertEqual(self.server_accounts(), {A: new.access_token, B: new.access_token})
        self.assertEqual(self.spots_on_server(A, [1, 2]) + self.spots_on_server(B, [4]), [True] * 3)
        self.reconnect()
        self.assertEqual(self.server_accounts(), {A: new.access_token, B: new.access_token})
        self.assertEqual(self.spots_on_server(A, [1, 2]) + self.spots_on_server(B, [4]), [True] * 3)
        (session,) = self.factory.sessions
        sub = self.factory.feed.find(session, A, 1)
        assert sub is not None
        self.assertEqual(sub.periods, {m.ProtoOATrendbarPeriod.M1})

    def test_answer_before_invalidation_event(self) -> None:
        token = self.first_token()
        refresher, keeper = self.kept(token)
        self.subscribed(keeper, token)
        new = self.wait(refresher.refresh_now())
        self.check_after_refresh(new, keeper)

    def test_invalidation_event_before_answer(self) -> None:
        token = self.first_token()
        refresher, keeper = self.kept(token)
        self.subscribed(keeper, token)
        self.hold = True
        new = self.wait(refresher.refresh_now())
        self.check_after_refresh(new, keeper)

    def test_two_refreshes_in_a_row(self) -> None:
        token = self.first_token()
        refresher, keeper = self.kept(token)
        self.subscribed(keeper, token)
        self.wait(refresher.refresh_now())
        self.wait(keeper.settled())
        self.hold = True
        newest = self.wait(refresher.refresh_now())
        self.check_after_refresh(newest, keeper)

    def test_without_keeper_the_accounts_are_lost(self) -> None:
        """Why the keeper exists: the server drops the accounts, and so does the client."""
        token = self.first_token()
        self.wait(self.client.authorize_account(A, token.access_token))
        refresher = TokenRefresher(self.sandbox.clock, self.refresh, token)
        self.wait(refresher.refresh_now())
        self.sandbox.advance(1)
        self.assertEqual(self.client.authorized_accounts, frozenset())
        self.assertEqual(self.server_accounts(), {})

    def test_forget_and_stop(self) -> None:
        token = self.first_token()
        refresher, keeper = self.kept(token)
        self.wait(keeper.authorize(A))
        self.wait(keeper.authorize(B))
        keeper.forget(B)
        self.assertEqual(keeper.accounts, {A})
        self.wait(self.client.request(m.ProtoOAAccountLogoutReq(ctidTraderAccountId=B)))
        new = self.wait(refresher.refresh_now())
        self.wait(keeper.settled())
        self.sandbox.advance(1)
        self.assertEqual(self.server_accounts(), {A: new.access_token})
        keeper.stop()
        self.wait(refresher.refresh_now())
        self.sandbox.advance(1)
        self.assertEqual(self.server_accounts(), {})


class ExpiredAtStartTests(HttpCase):
    """The stored token expired while the program was not running."""

    def expired(self) -> Token:
        now = self.sandbox.clock.seconds()
        # the sandbox refuses this access token, as the real server refuses an expired one
        return Token("expired-access-token", self.config.refresh_token, now - 1, now - LIFETIME)

    def test_keeper_refreshes_before_authorizing(self) -> None:
        refresher, keeper = self.kept(self.expired())
        refresher.startService()  # schedules a refresh at once
        self.addCleanup(refresher.stopService)
        result = self.wait(keeper.authorize(A))
        self.assertEqual(result.ctidTraderAccountId, A)
        self.assertEqual(refresher.refresh_count, 1)  # the timer joined the same refresh
        new = refresher.token
        self.assertEqual(self.server_accounts(), {A: new.access_token})
        self.reconnect()
        self.assertEqual(self.server_accounts(), {A: new.access_token})
        self.assertEqual(refresher.refresh_count, 1)

    def test_valid_token_waits_for_the_refresh(self) -> None:
        refresher = TokenRefresher(self.sandbox.clock, self.refresh, self.expired())
        token = self.wait(refresher.valid_token())
        self.assertEqual(refresher.refresh_count, 1)
        self.wait(self.client.authorize_account(A, token.access_token))
        self.assertEqual(self.wait(refresher.valid_token()), token)
        self.assertEqual(refresher.refresh_count, 1)

    def test_authorizing_with_the_expired_token_fails(self) -> None:
        """Documented: an account authorized directly with the expired token is refused and
        not recorded, so no refresh brings it back; authorize after valid_token()."""
        refresher, keeper = self.kept(self.expired())
        refused = self.client.authorize_account(A, refresher.token.access_token)
        self.assertRaises(AccountAuthError, self.wait, refused)
        self.assertEqual(self.client.authorized_accounts, frozenset())
        self.wait(refresher.refresh_now())
        self.wait(keeper.settled())
        self.assertEqual(self.client.authorized_accounts, frozenset())


class UnsubscribeSpotsTests(SandboxCase):
    def test_trendbars_and_depth_forgotten_with_the_spots(self) -> None:
        token = self.first_token()
        client: Client = self.client
        self.wait(client.authorize_account(A, token.access_token))
        self.wait(client.subscribe_spots(A, [1, 2]))
        for symbol in (1, 2):
            self.wait(client.subscribe_live_trendbars(A, symbol, m.ProtoOATrendbarPeriod.M1))
        self.wait(client.subscribe_live_trendbars(A, 1, m.ProtoOATrendbarPeriod.H1))
        self.wait(client.subscribe_depth(A, [1, 2]))
        self.wait(client.unsubscribe_spots(A, [1]))
        with LogCapture() as log:
            self.reconnect()
        self.assertEqual(log.formatted("warn", "error", "critical"), [])
        self.assertEqual(self.spots_on_server(A, [1, 2]), [False, True])
        (session,) = self.factory.sessions
        sub = self.factory.feed.find(session, A, 2)
        assert sub is not None
        self.assertEqual(sub.periods, {m.ProtoOATrendbarPeriod.M1})
        self.assertIsNotNone(sub.depth)
