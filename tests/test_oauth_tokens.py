"""Token model, JSON token store and the refresh scheduler (Clock-driven, no sockets)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import cast
from unittest import mock

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.oauth import (
    OAuthError,
    Token,
    TokenRefresher,
    TokenStore,
    default_token_path,
    socket_refresh,
)
from ctrader_twisted.tokens import TokenFileError, mask

ACCESS = "access-secret-0123456789"
REFRESH = "refresh-secret-0123456789"


def temp_path(case: SynchronousTestCase) -> Path:
    """A fresh path in a private temporary directory removed after the test."""
    directory = tempfile.mkdtemp(prefix="ctrader-oauth-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory) / "tokens" / "token.json"


def token(expires_at: float = 1000.0, obtained_at: float = 0.0, n: int = 0) -> Token:
    return Token(f"{ACCESS}-{n}", f"{REFRESH}-{n}", expires_at, obtained_at)


class TokenModelTests(SynchronousTestCase):
    def test_repr_and_describe_hide_secrets(self) -> None:
        t = token()
        for text in (repr(t), str(t), json.dumps(t.describe(0))):
            self.assertNotIn(ACCESS, text)
            self.assertNotIn(REFRESH, text)
        self.assertEqual(t.describe(0)["access_token"], f"acce...<{len(ACCESS) + 2} chars>")
        self.assertEqual(mask("short"), "<5 chars>")

    def test_expiry_from_clock(self) -> None:
        t = Token.from_expires_in("a", "r", 2628000, now=50.0)
        self.assertEqual((t.obtained_at, t.expires_at), (50.0, 2628050.0))
        self.assertFalse(t.is_expired(2628049.9))
        self.assertTrue(t.is_expired(2628050.0))
        self.assertEqual(t.remaining(28050.0), 2600000.0)
        self.assertIn("expired", t.describe(3e6)["expires"])

    def test_json_round_trip_and_validation(self) -> None:
        t = token()
        self.assertEqual(Token.from_json(t.to_json()), t)
        self.assertRaises(TokenFileError, Token.from_json, {"accessToken": "a"})
        bad = dict(t.to_json(), expiresAt="soon")
        self.assertRaises(TokenFileError, Token.from_json, bad)
        bad = dict(t.to_json(), refreshToken=5)
        self.assertRaises(TokenFileError, Token.from_json, bad)

    def test_default_path(self) -> None:
        with mock.patch.dict(os.environ, {"CTRADER_TOKEN_FILE": "/x/t.json"}):
            self.assertEqual(default_token_path(), Path("/x/t.json"))
        env = {"XDG_CONFIG_HOME": "/cfg"}
        with mock.patch.dict(os.environ, env), mock.patch.dict(os.environ, clear=False):
            os.environ.pop("CTRADER_TOKEN_FILE", None)
            self.assertEqual(default_token_path(), Path("/cfg/ctrader-twisted/token.json"))


class TokenStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = temp_path(self)
        self.store = TokenStore(self.path)

    def test_missing_file_reads_none(self) -> None:
        self.assertIsNone(self.store.read())

    def test_written_with_0600_in_0700_dir(self) -> None:
        self.store.write(token())
        self.assertEqual(self.store.permissions(), 0o600)
        self.assertEqual(stat.S_IMODE(self.path.parent.stat().st_mode) & 0o077, 0)
        self.assertEqual(self.store.read(), token())

    def test_rewrite_tightens_loose_permissions(self) -> None:
        self.store.write(token())
        os.chmod(self.path, 0o644)
        self.store.write(token(n=1))
        self.assertEqual(self.store.permissions(), 0o600)
        self.assertEqual(self.store.read(), token(n=1))

    def test_atomic_failed_write_keeps_old_file(self) -> None:
        self.store.write(token())
        with mock.patch("ctrader_twisted.tokens.os.replace", side_effect=OSError(28, "No space")):
            self.assertRaises(TokenFileError, self.store.write, token(n=1))
        self.assertEqual(self.store.read(), token())
        self.assertEqual(sorted(p.name for p in self.path.parent.iterdir()), ["token.json"])

    def test_atomic_crash_mid_write_keeps_old_file(self) -> None:
        self.store.write(token())
        with mock.patch("ctrader_twisted.tokens.os.fsync", side_effect=KeyboardInterrupt):
            self.assertRaises(KeyboardInterrupt, self.store.write, token(n=1))
        self.assertEqual(self.store.read(), token())
        self.assertEqual(len(list(self.path.parent.iterdir())), 1)

    def test_corrupt_file(self) -> None:
        self.path.parent.mkdir(parents=True)
        self.path.write_text("{not json")
        self.assertRaises(TokenFileError, self.store.read)
        self.path.write_text("[1, 2]")
        self.assertRaises(TokenFileError, self.store.read)

    def test_error_messages_hide_secrets(self) -> None:
        self.store.write(token())
        denied = OSError(13, "Denied")
        with (
            mock.patch("ctrader_twisted.tokens.os.replace", side_effect=denied),
            self.assertRaises(TokenFileError) as caught,
        ):
            self.store.write(token(n=1))
        self.assertNotIn(ACCESS, str(caught.exception))

    def test_async_needs_reactor(self) -> None:
        self.assertRaises(TypeError, self.store.load)


class TokenStoreThreadTests(TestCase):
    """load() and save() run the file I/O in the reactor's thread pool."""

    async def test_save_then_load(self) -> None:
        store = TokenStore(temp_path(self), cast(IReactorThreads, _global_reactor))
        self.assertIsNone(await store.load())
        await store.save(token(n=3))
        self.assertEqual(await store.load(), token(n=3))
        self.assertEqual(store.permissions(), 0o600)


class FakeSocketClient:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.replaced: list[str | None] = []
        self.expires_in = 2628000

    def refresh_token(
        self, refresh_token: str, *, access_token: str | None = None
    ) -> Deferred[m.ProtoOARefreshTokenRes]:
        self.seen.append(refresh_token)
        self.replaced.append(access_token)
        n = len(self.seen)
        return succeed(
            m.ProtoOARefreshTokenRes(
                accessToken=f"sock-access-{n}",
                tokenType="bearer",
                expiresIn=self.expires_in,
                refreshToken=f"sock-refresh-{n}",
            )
        )


class RefresherTests(SynchronousTestCase):
    def test_schedule_margin_capped_at_half_life(self) -> None:
        clock = Clock()
        calls: list[str] = []

        def refresh(rt: str) -> Deferred[Token]:
            calls.append(rt)
            return succeed(token(clock.seconds() + 100, clock.seconds(), n=len(calls)))

        refresher = TokenRefresher(clock, refresh, token(100, 0), margin=3600)
        refresher.startService()
        self.assertEqual(refresher.next_refresh_at, 50)
        clock.advance(49)
        self.assertEqual(calls, [])
        clock.advance(1)
        self.assertEqual(calls, [f"{REFRESH}-0"])
        self.assertEqual(refresher.token, token(150, 50, n=1))
        self.assertEqual(refresher.next_refresh_at, 100)
        refresher.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_expired_token_refreshes_at_once(self) -> None:
        clock = Clock()
        clock.advance(500)
        calls: list[str] = []

        def refresh(rt: str) -> Deferred[Token]:
            calls.append(rt)
            return succeed(token(5000, 500, n=1))

        refresher = TokenRefresher(clock, refresh, token(100, 0))
        refresher.startService()
        clock.advance(0)
        self.assertEqual(len(calls), 1)
        refresher.stopService()

    def test_valid_token_and_on_refreshing(self) -> None:
        clock = Clock()
        pending: list[Deferred[Token]] = []

        def refresh(rt: str) -> Deferred[Token]:
            d: Deferred[Token] = Deferred()
            pending.append(d)
            return d

        refresher = TokenRefresher(clock, refresh, token(100, 0))
        before: list[Token] = []
        refresher.on_refreshing(before.append)
        self.assertEqual(self.successResultOf(refresher.valid_token()), token(100, 0))
        self.assertEqual(pending, [])
        clock.advance(100)  # expired now: valid_token refreshes and waits for it
        first = refresher.valid_token()
        self.assertTrue(refresher.refreshing)
        self.assertEqual(before, [token(100, 0)])
        joined = refresher.valid_token()  # a refresh is in flight: join it
        self.assertEqual(len(pending), 1)
        pending.pop().callback(token(5000, 100, n=1))
        self.assertFalse(refresher.refreshing)
        self.assertEqual(self.successResultOf(first), token(5000, 100, n=1))
        self.assertEqual(self.successResultOf(joined), token(5000, 100, n=1))
        self.assertEqual(self.successResultOf(refresher.valid_token()), token(5000, 100, n=1))

    def test_failures_back_off_and_concurrent_calls_join(self) -> None:
        clock = Clock()
        pending: list[Deferred[Token]] = []

        def refresh(rt: str) -> Deferred[Token]:
            d: Deferred[Token] = Deferred()
            pending.append(d)
            return d

        refresher = TokenRefresher(clock, refresh, token(1000, 0), first_retry=10, max_retry=25)
        refresher.startService()
        a, b = refresher.refresh_now(), refresher.refresh_now()
        self.assertEqual(len(pending), 1)
        pending.pop().errback(OAuthError("BUSY"))
        self.failureResultOf(a, OAuthError)
        self.failureResultOf(b, OAuthError)
        self.assertEqual(refresher.next_refresh_at, 10)
        for expected_next in (30, 55, 80):
            clock.advance(refresher.next_refresh_at - clock.seconds())  # type: ignore[operator]
            pending.pop().errback(OAuthError("BUSY"))
            self.assertEqual(refresher.next_refresh_at, expected_next)
        self.assertEqual(refresher.failure_count, 4)
        refresher.stopService()

    def test_socket_refresh_and_listener_errors(self) -> None:
        clock = Clock()
        clock.advance(10)
        client = FakeSocketClient()
        refresher = TokenRefresher(clock, socket_refresh(client, clock), token(1e6, 0))
        seen: list[Token] = []
        refresher.on_refreshed(lambda t: 1 / 0)
        remove = refresher.on_refreshed(seen.append)
        new = self.successResultOf(refresher.refresh_now())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(client.seen, [f"{REFRESH}-0"])
        self.assertEqual(client.replaced, [f"{ACCESS}-0"])  # the client knows what to replace
        self.assertEqual(new, Token("sock-access-1", "sock-refresh-1", 10 + 2628000, 10))
        self.assertEqual(seen, [new])
        remove()
        client.expires_in = 1_800_000_000_000  # an absolute time in ms is tolerated
        self.assertEqual(self.successResultOf(refresher.refresh_now()).expires_at, 1.8e9)
        self.assertEqual(client.replaced, [f"{ACCESS}-0", "sock-access-1"])
        self.assertEqual(seen, [new])
        # called as a plain function, the old access token is unknown
        self.successResultOf(socket_refresh(client, clock)("sock-refresh-2"))
        self.assertEqual(client.replaced[-1], None)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_failed_save_keeps_token_in_memory(self) -> None:
        clock = Clock()
        store = mock.Mock(spec=TokenStore)
        store.save.return_value = fail(TokenFileError("disk full"))
        new = token(5000, 0, n=1)
        refresher = TokenRefresher(clock, lambda rt: succeed(new), token(), store=store)
        self.assertEqual(self.successResultOf(refresher.refresh_now()), new)
        self.assertEqual(refresher.token, new)


class UnreadableTokenFileTests(TestCase):
    """Every kind of unusable token file is a ``TokenFileError`` (the CLI's exit 2, the
    recorder's start-up error), never a ``UnicodeDecodeError`` or a hang."""

    def store_with(self, content: bytes) -> TokenStore:
        path = Path(self.mktemp())
        path.write_bytes(content)
        return TokenStore(path, cast(IReactorThreads, _global_reactor))

    def test_bad_files(self) -> None:
        deep = b"[" * 30_000 + b"]" * 30_000
        nan = json.dumps({"accessToken": "a", "refreshToken": "r", "expiresAt": float("nan")})
        huge = b'{"accessToken": "' + b"a" * 70_000 + b'", "refreshToken": "r"}'
        for content, message in (
            (b"\xff\xfe{\x00}\x00", "not UTF-8"),
            (b'{"accessToken": "\xe9t\xe9"}', "not UTF-8"),
            (deep, "not valid JSON"),
            (nan.encode(), "non-finite"),
            (b'{"accessToken": "a", "refreshToken": "r", "expiresAt": 1e999}', "non-finite"),
            (huge, "too large"),
        ):
            with self.assertRaises(TokenFileError) as caught:
                self.store_with(content).read()
            self.assertIn(message, str(caught.exception))

    async def test_load_fails_the_same_way(self) -> None:
        with self.assertRaises(TokenFileError):
            await self.store_with(b"\x80\x81").load()

    def test_not_a_regular_file(self) -> None:
        fifo = Path(self.mktemp())
        os.mkfifo(fifo)  # opening it for reading would wait for a writer for ever
        with self.assertRaises(TokenFileError) as caught:
            TokenStore(fifo).read()
        self.assertIn("not a regular file", str(caught.exception))
        directory = Path(self.mktemp())
        directory.mkdir()
        with self.assertRaises(TokenFileError):
            TokenStore(directory).read()


class ExpiresInTests(SynchronousTestCase):
    def test_out_of_range_lifetimes_are_refused(self) -> None:
        from ctrader_twisted.oauth import OAuthError, parse_token_response

        for expires in ("NaN", "Infinity", "-1", "1e300"):
            body = f'{{"accessToken": "a", "refreshToken": "r", "expiresIn": {expires}}}'
            with self.assertRaises(OAuthError, msg=expires):
                parse_token_response(200, body.encode(), 0.0)
        token = parse_token_response(200, b'{"accessToken": "a", "refreshToken": "r", '
                                     b'"expiresIn": 2628000}', 10.0)  # fmt: skip
        self.assertEqual(token.expires_at, 2628010.0)
