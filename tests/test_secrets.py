"""Secrets never leak: not in logs, reprs or exception messages; the token file is 0600.

Every scenario runs with all log output captured (the global log publisher, every level,
every field of every event, tracebacks of logged failures) and then looks for the full text of
each secret: the application's client secret, access tokens, refresh tokens and authorization
codes.  Masked forms (a short prefix and the length) are allowed; the whole secret is not.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ctrader_twisted import Client
from ctrader_twisted.errors import (
    AccountAuthError,
    ApplicationAuthError,
    ConnectionLost,
    OpenApiError,
    RequestTimeout,
)
from ctrader_twisted.oauth import OAuthClient
from ctrader_twisted.sandbox import SandboxConfig
from ctrader_twisted.testing import MemorySandbox
from ctrader_twisted.tokens import Token, TokenFileError, TokenStore
from tests.hostile import LogCapture, leaks

CLIENT_ID = "4242_client-id-is-public"
CLIENT_SECRET = "s3cr3t-Client-Secret-do-not-leak-0123456789"
ACCESS = "access-Token-that-must-never-be-logged-98765"
REFRESH = "refresh-Token-that-must-never-be-logged-13579"
NEW_ACCESS = "second-access-Token-never-logged-24680"
NEW_REFRESH = "second-refresh-Token-never-logged-11223"
CODE = "authorization-code-never-logged-55555"
SECRETS = (CLIENT_SECRET, ACCESS, REFRESH, NEW_ACCESS, NEW_REFRESH, CODE)


class SecretsTestCase(SynchronousTestCase):
    """Captures the log for the whole test and checks it for secrets at the end."""

    def setUp(self) -> None:
        self.log = LogCapture()
        self.log.__enter__()
        self.addCleanup(self._check_log)

    def _check_log(self) -> None:
        self.log.__exit__()
        found = leaks(self.log.texts(), SECRETS)
        self.assertEqual(found, [], "a secret appeared in the log")

    def assertClean(self, *objects: object) -> None:
        """Neither ``str`` nor ``repr`` of any object (or failure) names a secret."""
        texts: list[str] = []
        for obj in objects:
            if isinstance(obj, Failure):
                texts += [obj.getTraceback(), str(obj.value), repr(obj.value)]
            else:
                texts += [str(obj), repr(obj)]
        self.assertEqual(leaks(texts, SECRETS), [])


class TokenStoreTests(SecretsTestCase):
    def test_file_is_0600_and_directory_0700(self) -> None:
        path = Path(self.mktemp()) / "nested" / "token.json"
        store = TokenStore(path)
        token = Token.from_expires_in(ACCESS, REFRESH, 3600, now=1000.0)
        store.write(token)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(path.parent.stat().st_mode), 0o700)
        self.assertEqual(store.read(), token)
        self.assertClean(store, token, token.describe(2000.0))

    def test_loose_existing_file_is_tightened_on_write(self) -> None:
        path = Path(self.mktemp())
        path.write_text("{}")
        os.chmod(path, 0o644)
        TokenStore(path).write(Token.from_expires_in(ACCESS, REFRESH, 3600, now=0.0))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_no_moment_with_a_readable_file(self) -> None:
        """Even the temporary file is private: a umask of 0 must not expose the tokens."""
        path = Path(self.mktemp())
        old = os.umask(0)
        try:
            TokenStore(path).write(Token.from_expires_in(ACCESS, REFRESH, 3600, now=0.0))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        leftovers = [p for p in path.parent.iterdir() if p != path and p.name.startswith(".")]
        for other in leftovers:
            self.assertEqual(stat.S_IMODE(other.stat().st_mode) & 0o077, 0)

    def test_damaged_file_errors_do_not_quote_tokens(self) -> None:
        path = Path(self.mktemp())
        for damaged in (
            {"accessToken": ACCESS, "refreshToken": REFRESH},  # no expiry
            {"accessToken": ACCESS, "refreshToken": REFRESH, "expiresAt": ACCESS},
            {"accessToken": ACCESS, "refreshToken": 5, "expiresAt": 1},
        ):
            path.write_text(json.dumps(damaged))
            with self.assertRaises(TokenFileError) as caught:
                TokenStore(path).read()
            self.assertClean(caught.exception)
        path.write_text(ACCESS + "{not json")
        with self.assertRaises(TokenFileError) as caught:
            TokenStore(path).read()
        self.assertClean(caught.exception)


class TokenEndpoint(Resource):
    """A fake OAuth token endpoint; ``mode`` picks the answer."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.seen: list[dict[str, list[str]]] = []

    def render_GET(self, request: Request) -> bytes | int:
        query = parse_qs((request.uri or b"").decode().partition("?")[2])
        self.seen.append(query)
        if self.mode == "hang":
            return NOT_DONE_YET
        if self.mode == "http-500":
            request.setResponseCode(500)
            return b"<html>oops</html>"
        if self.mode == "error":
            body = {"errorCode": "ACCESS_DENIED", "description": "refresh token already used"}
        elif self.mode == "garbage":
            return b"\x00\xff not json"
        else:
            body = {
                "accessToken": NEW_ACCESS,
                "refreshToken": NEW_REFRESH,
                "tokenType": "bearer",
                "expiresIn": 2628000,
            }
        return json.dumps(body).encode()


class OAuthSecretsTests(SecretsTestCase):
    """Every OAuth outcome: success, server error, HTTP error, garbage, timeout."""

    def setUp(self) -> None:
        from treq.testing import RequestTraversalAgent

        super().setUp()
        self.clock = Clock()
        self.endpoint = TokenEndpoint()
        self.agent = RequestTraversalAgent(self.endpoint)
        self.oauth = OAuthClient(
            self.clock,
            CLIENT_ID,
            CLIENT_SECRET,
            "http://127.0.0.1:5000/callback",
            base_url="https://oauth.test",
            timeout=5,
            agent=self.agent,
        )

    def _answer(self, mode: str, refresh: bool = True) -> object:
        self.endpoint.mode = mode
        d = self.oauth.refresh(REFRESH) if refresh else self.oauth.exchange_code(CODE)
        results: list[object] = []
        d.addBoth(results.append)
        self.agent.flush()
        if not results:
            self.clock.advance(6)
        self.agent.flush()
        self.assertEqual(len(results), 1)
        return results[0]

    def test_every_outcome_is_clean(self) -> None:
        outcomes = [self._answer(mode) for mode in ("ok", "error", "http-500", "garbage", "hang")]
        outcomes.append(self._answer("ok", refresh=False))
        self.assertIsInstance(outcomes[0], Token)
        for outcome in outcomes[1:5]:
            self.assertIsInstance(outcome, Failure)
        self.assertClean(self.oauth, *outcomes)
        # The secret did go where it belongs, so the checks above had something to find.
        self.assertEqual(self.endpoint.seen[0]["client_secret"], [CLIENT_SECRET])
        self.assertIn(CLIENT_SECRET, self.oauth._client_secret)

    def test_authorization_url_has_no_secret(self) -> None:
        url = self.oauth.authorization_url("state-123")
        self.assertNotIn(CLIENT_SECRET, url)
        self.assertIn(CLIENT_ID, url)


class ClientSecretsTests(SecretsTestCase):
    """Client scenarios against the sandbox: success, refusals, token refresh, timeouts,
    disconnects.  Nothing the client logs, shows or raises contains a secret."""

    def setUp(self) -> None:
        super().setUp()
        config = SandboxConfig(
            client_secret=CLIENT_SECRET, access_token=ACCESS, refresh_token=REFRESH
        )
        self.sandbox = MemorySandbox(config)
        self.extra: list[str] = []

    def _check_log(self) -> None:
        self.log.__exit__()
        found = leaks(self.log.texts(), [*SECRETS, *self.extra])
        self.assertEqual(found, [], "a secret appeared in the log")

    def _client(self, secret: str = CLIENT_SECRET, **options: float) -> Client:
        client = Client(
            self.sandbox.endpoint,
            client_id=self.sandbox.config.client_id,
            client_secret=secret,
            reactor=self.sandbox.clock,
            reconnect_jitter=0.0,
            **options,  # type: ignore[arg-type]
        )
        self.addCleanup(self._stop, client)
        return client

    def _stop(self, client: Client) -> None:
        d = client.stopService()
        self.sandbox.advance(1)
        self.assertTrue(d.called)

    def _failure(self, d: Deferred[Any]) -> Failure:
        failures: list[Failure] = []
        d.addErrback(failures.append)
        self.sandbox.advance(15)
        self.assertEqual(len(failures), 1)
        return failures[0]

    def test_happy_path_refresh_and_account_events(self) -> None:
        client = self._client()
        client.startService()
        self.sandbox.result(client.when_ready())
        self.sandbox.result(client.authorize_account(5000001, ACCESS))
        self.sandbox.result(client.subscribe_spots(5000001, [1, 2]))
        self.sandbox.advance(3)
        res = self.sandbox.result(client.refresh_token(REFRESH))
        self.extra += [res.accessToken, res.refreshToken]
        self.assertNotIn(res.accessToken, (ACCESS, ""))
        self.sandbox.drop_all()
        self.sandbox.result(client.when_ready())
        self.assertClean(client)
        self.assertEqual(client.authorized_accounts, frozenset({5000001}))

    def test_wrong_secret_wrong_token_and_reused_refresh_token(self) -> None:
        bad = self._client(secret=CLIENT_SECRET[::-1])
        self.extra.append(CLIENT_SECRET[::-1])
        bad.startService()
        refused = self._failure(bad.when_ready())
        self.assertIsInstance(refused.value, ApplicationAuthError)
        self.assertClean(refused, bad)
        client = self._client()
        client.startService()
        self.sandbox.result(client.when_ready())
        self.extra.append(ACCESS[::-1])
        wrong_token = self._failure(client.authorize_account(5000001, ACCESS[::-1]))
        self.assertIsInstance(wrong_token.value, AccountAuthError)
        self.sandbox.result(client.refresh_token(REFRESH))
        reused = self._failure(client.refresh_token(REFRESH))  # refresh tokens are single-use
        self.assertIsInstance(reused.value, OpenApiError)
        self.assertClean(wrong_token, reused)

    def test_timeouts_and_disconnects_name_no_secret(self) -> None:
        client = self._client(request_timeout=1.0)
        client.startService()
        self.sandbox.result(client.when_ready())
        self.sandbox.factory.stall_all()
        timed_out = self._failure(client.authorize_account(5000002, ACCESS))
        self.assertIsInstance(timed_out.value, RequestTimeout)
        waiting = client.refresh_token(REFRESH)
        self.sandbox.factory.drop_all()
        lost = self._failure(waiting)
        self.assertIsInstance(lost.value, ConnectionLost)
        self.assertClean(timed_out, lost, client)
