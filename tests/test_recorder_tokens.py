"""The recorder with a token refresher: an expired token is refreshed before the account is
authorized, and the account stays authorized (and subscribed) through later refreshes and
reconnects, on the socket (``socket_refresh``, what ``ctrader-record`` uses) and over HTTP
(a local twisted.web token endpoint backed by the sandbox's tokens).

The sandbox only knows the tokens it issued, so a stale access token that the recorder sent
to the server would be refused: the account being authorized proves the refresh came first.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ctrader_twisted._cli_errors import ExitCode
from ctrader_twisted._oauth_refresh import TokenRefresher, socket_refresh
from ctrader_twisted.client import Client
from ctrader_twisted.errors import AccountAuthError
from ctrader_twisted.recorder._fatal import exit_status
from ctrader_twisted.recorder.service import Recorder
from ctrader_twisted.recorder.storage import open_sqlite
from ctrader_twisted.sandbox import DEFAULT_REFRESH_TOKEN
from ctrader_twisted.tokens import Token, TokenStore
from tests.recorder_support import ACCOUNT, START, World, reactor
from tests.test_oauth import listen, oauth_client
from tests.test_oauth_reauth import SandboxTokenEndpoint

STALE = Token("stale-access-token-0001", DEFAULT_REFRESH_TOKEN, START - 60, START - 3600)


def temp_dir(case: TestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-tokens-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


def server_accounts(world: World) -> dict[int, str]:
    """Account -> access token, over the sandbox's live sessions."""
    return {a: t for s in world.factory.sessions for a, t in s.accounts.items()}


class RecorderTokenTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        directory = temp_dir(self)
        db = directory / "market.sqlite3"
        self.world = World(self, lambda: open_sqlite(reactor, db))
        self.store = TokenStore(directory / "token.json", cast(IReactorThreads, reactor))
        self.store.write(STALE)

    async def until(self, check: Callable[[], bool], what: str) -> None:
        """Step the world until ``check()`` holds: at most 100 s of clock time, and at least
        10 ms of real time per step (HTTP and the token file's thread run on the reactor)."""
        for _ in range(200):
            if check():
                return
            await self.world.step(0.5)
            await deferLater(cast(IReactorTime, reactor), 0.01)
        self.fail(f"timed out waiting for {what}")

    def start(self, make: Callable[[Client], TokenRefresher], token: Token) -> Recorder:
        recorder = self.world.start_recorder(access_token=token.access_token, refresher=make)
        self.addCleanup(self.stop_world)  # before an HTTP site's cleanup, which waits for this
        return recorder

    async def stop_world(self) -> None:
        if self.world.top is not None:
            await self.world.stop_recorder()

    async def check_refreshes_and_reconnects(self, refresher: TokenRefresher) -> None:
        """One more refresh, then a reconnect: the account stays authorized and recording."""
        world = self.world
        recorder = world.recorder
        assert recorder is not None
        first = refresher.token
        refreshed = refresher.refresh_now()
        await self.until(lambda: refreshed.called, "the second refresh")
        await refreshed
        second = refresher.token
        self.assertNotEqual(second.access_token, first.access_token)
        await self.until(lambda: server_accounts(world) == {ACCOUNT: second.access_token}, "auth")
        before = recorder.events_received
        await world.run(10)
        self.assertGreater(recorder.events_received, before + 5)  # still subscribed

        world.factory.drop_all()
        await world.run(10)
        self.assertEqual(world.client.reconnect_count, 1)
        self.assertEqual(server_accounts(world), {ACCOUNT: second.access_token})
        before = recorder.events_received
        await world.run(10)
        self.assertGreater(recorder.events_received, before + 5)
        await self.until(lambda: self.store.read() == second, "the saved token")
        self.assertIsNone(recorder.fatal_error)

    async def test_socket_refresh_of_an_expired_token(self) -> None:
        world = self.world

        def make(client: Client) -> TokenRefresher:
            refresh = socket_refresh(client, world.clock)
            return TokenRefresher(world.clock, refresh, STALE, store=self.store)

        recorder = self.start(make, STALE)
        await self.until(lambda: recorder.events_received > 10, "recording")
        refresher = world.refresher
        assert refresher is not None
        self.assertEqual(refresher.refresh_count, 1)  # the start-up timer and the keeper share it
        fresh = refresher.token
        self.assertNotEqual(fresh.access_token, STALE.access_token)
        self.assertIsNone(recorder.fatal_error)
        self.assertEqual(server_accounts(world), {ACCOUNT: fresh.access_token})
        self.assertGreater(recorder.events_received, 10)
        await self.check_refreshes_and_reconnects(refresher)

    async def test_http_refresh_of_an_expired_token(self) -> None:
        world = self.world
        endpoint = SandboxTokenEndpoint(world.factory)
        oauth = oauth_client(listen(self, endpoint))

        def make(client: Client) -> TokenRefresher:
            return TokenRefresher(world.clock, oauth.refresh, STALE, store=self.store)

        recorder = self.start(make, STALE)
        refresher = world.refresher
        assert refresher is not None
        await self.until(lambda: recorder.events_received > 10, "recording")
        self.assertEqual(endpoint.refreshes, 1)
        self.assertEqual(server_accounts(world), {ACCOUNT: refresher.token.access_token})
        self.assertIsNone(recorder.fatal_error)
        await self.check_refreshes_and_reconnects(refresher)
        self.assertEqual(endpoint.refreshes, 2)

    async def test_refused_refresh_is_fatal(self) -> None:
        world = self.world
        used = Token(STALE.access_token, "refresh-token-used-already", START - 60, START - 3600)
        errors: list[BaseException] = []

        def make(client: Client) -> TokenRefresher:
            return TokenRefresher(world.clock, socket_refresh(client, world.clock), used)

        recorder = self.start(make, used)
        recorder.on_fatal(errors.append)
        await self.until(lambda: bool(errors), "the fatal error")
        self.assertIsInstance(errors[0], AccountAuthError)
        code, message = exit_status(errors[0])
        self.assertEqual(code, ExitCode.AUTH)
        self.assertIn("CH_ACCESS_TOKEN_INVALID", message)
        self.assertNotIn("refresh-token-used-already", message)
        self.assertEqual(server_accounts(world), {})
