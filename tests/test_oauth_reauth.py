"""An HTTP token refresh end to end, over real loopback sockets.

A twisted.web token endpoint on 127.0.0.1 refreshes tokens in a TLS sandbox's own token store,
which then ends the account sessions of the old token (``ProtoOAAccountsTokenInvalidatedEvent``)
as the real server does.  ``OAuthClient.refresh`` + ``TokenRefresher`` + ``keep_client_authorized``
must leave the client's account authorized with the new token, now and after a reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

from twisted.internet import reactor as _global_reactor
from twisted.internet.interfaces import IReactorSSL, IReactorTime
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from ctrader_twisted.oauth import Token, TokenRefresher, keep_client_authorized
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_REFRESH_TOKEN,
    RunningSandbox,
    SandboxConfig,
    SandboxFactory,
    start_sandbox,
)
from ctrader_twisted.testing import tls_client

from .test_oauth import listen, oauth_client

reactor = cast(IReactorSSL, _global_reactor)
clock = cast(IReactorTime, _global_reactor)
ACCOUNT = 5000001
LIFETIME = 2_628_000


class SandboxTokenEndpoint(Resource):
    """``/apps/token`` for ``grant_type=refresh_token``, backed by a sandbox's tokens."""

    isLeaf = True

    def __init__(self, factory: SandboxFactory) -> None:
        super().__init__()
        self.factory = factory
        self.refreshes = 0

    def render_GET(self, request: Request) -> bytes:
        args = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        request.setHeader(b"Content-Type", b"application/json")
        issued = self.factory.tokens.refresh(args.get("refresh_token", ""))
        if args.get("grant_type") != "refresh_token" or issued is None:
            return json.dumps({"errorCode": "ACCESS_DENIED", "description": "no"}).encode()
        old, access, refresh = issued
        self.refreshes += 1
        self.factory.invalidate_token(old, "Access token refreshed")
        answer = {
            "accessToken": access,
            "tokenType": "bearer",
            "expiresIn": LIFETIME,
            "refreshToken": refresh,
        }
        return json.dumps(answer).encode()


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` on the real reactor until it holds (bounded)."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await deferLater(clock, 0.02)
    raise AssertionError(f"timed out waiting for {what}")


class HttpRefreshLoopbackTests(TestCase):
    timeout = 30

    async def test_refresh_reauthorizes_and_reconnect_restores(self) -> None:
        config = SandboxConfig(always_open=True, tick_interval=0.05)
        running: RunningSandbox = await start_sandbox(
            reactor, config, port=0, state_dir=self.mktemp()
        )
        self.addCleanup(running.stop)
        client = tls_client(running, reactor, reconnect_initial_delay=0.05, reconnect_jitter=0.0)
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_ready().addTimeout(10, clock)

        endpoint = SandboxTokenEndpoint(running.factory)
        oauth = oauth_client(listen(self, endpoint))
        now = clock.seconds()
        first = Token(DEFAULT_ACCESS_TOKEN, DEFAULT_REFRESH_TOKEN, now + LIFETIME, now)
        refresher = TokenRefresher(clock, oauth.refresh, first)
        keeper = keep_client_authorized(client, refresher)
        self.addCleanup(keeper.stop)
        await keeper.authorize(ACCOUNT)
        await client.subscribe_spots(ACCOUNT, [1])

        def server_state() -> tuple[dict[int, str], bool]:
            sessions = list(running.factory.sessions)
            if len(sessions) != 1:
                return {}, False
            (session,) = sessions
            subscribed = running.factory.feed.find(session, ACCOUNT, 1) is not None
            return dict(session.accounts), subscribed

        new = await refresher.refresh_now()
        self.assertEqual(endpoint.refreshes, 1)
        self.assertNotEqual(new.access_token, first.access_token)
        expected = ({ACCOUNT: new.access_token}, True)
        await until(lambda: server_state() == expected, "re-authorization with the new token")
        await keeper.settled()
        self.assertEqual(client.accounts_authorized_with(new.access_token), {ACCOUNT})

        running.factory.drop_all()
        await until(lambda: client.reconnect_count == 1 and client.is_ready, "the reconnect")
        await until(lambda: server_state() == expected, "the restore with the new token")
        self.assertEqual(client.authorized_accounts, frozenset({ACCOUNT}))
