"""OAuth against a local twisted.web token endpoint (real HTTP on 127.0.0.1, real reactor)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IListeningPort,
    IPullProducer,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ctrader_twisted.oauth import (
    OAuthClient,
    OAuthConnectionError,
    OAuthError,
    OAuthHTTPError,
    OAuthTimeout,
    RedirectCatcher,
    StateMismatch,
    Token,
    TokenRefresher,
    TokenStore,
    new_state,
)

reactor = cast("IReactorTCP", _global_reactor)
SECRET = "app-secret-do-not-leak"
GOOD = {
    "accessToken": "access-1-abcdefgh",
    "tokenType": "bearer",
    "expiresIn": 2628000,
    "refreshToken": "refresh-1-abcdefgh",
}


def temp_path(case: SynchronousTestCase) -> Path:
    """A fresh path in a private temporary directory removed after the test."""
    directory = tempfile.mkdtemp(prefix="ctrader-oauth-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory) / "tokens" / "token.json"


class TokenEndpoint(Resource):
    """A scripted ``/apps/token``: each request pops the next (status, body) answer."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, bytes] | None] = []
        self.seen: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.hanging: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.paths.append(request.path.decode())
        args = request.args or {}
        self.seen.append({k.decode(): v[0].decode() for k, v in args.items()})
        answer = self.answers.pop(0) if self.answers else (200, json.dumps(GOOD).encode())
        if answer is None:
            self.hanging.append(request)
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return body


@implementer(IPullProducer)
class _Endless:
    """Writes ``prefix`` and then spaces forever, as fast as the client takes them."""

    def __init__(self, request: Request, prefix: bytes) -> None:
        self.request = request
        self.pending = prefix
        self.sent = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        if not self.stopped:
            chunk, self.pending = self.pending or b" " * 65536, b""
            self.sent += len(chunk)
            self.request.write(chunk)

    def stopProducing(self) -> None:
        self.stopped = True


class EndlessEndpoint(Resource):
    """A token endpoint whose answer never ends (no Content-Length, chunked)."""

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.producers: list[_Endless] = []
        self.gone: list[Deferred[None]] = []

    def render_GET(self, request: Request) -> int:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        body = json.dumps(GOOD).encode() if self.status == 200 else b'{"errorCode":"BUSY"}'
        producer = _Endless(request, body)
        self.producers.append(producer)
        finished: Deferred[None] = request.notifyFinish()
        self.gone.append(finished.addErrback(lambda _: producer.stopProducing()))
        request.registerProducer(producer, False)
        return NOT_DONE_YET


class TrackingSite(Site):
    """A Site whose cleanup waits until every server-side connection has closed."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: list[Deferred[None]] = []

    def buildProtocol(self, addr: object) -> Protocol:
        proto = super().buildProtocol(addr)
        closed: Deferred[None] = Deferred()
        self.open.append(closed)
        original = proto.connectionLost

        def lost(reason: object) -> None:
            original(reason)
            closed.callback(None)

        proto.connectionLost = lost  # type: ignore[method-assign]
        return proto

    def all_closed(self) -> Deferred[object]:
        return DeferredList(list(self.open))


def listen(case: TestCase, resource: Resource) -> int:
    site = TrackingSite(resource)
    port: IListeningPort = reactor.listenTCP(0, cast(ServerFactory, site), interface="127.0.0.1")
    case.addCleanup(site.all_closed)
    case.addCleanup(port.stopListening)
    return cast(int, port.getHost().port)  # type: ignore[attr-defined]


def oauth_client(port: int, timeout: float = 5.0, clock: Clock | None = None) -> OAuthClient:
    return OAuthClient(
        cast(IReactorTime, reactor),
        "app-id",
        SECRET,
        "http://127.0.0.1:8765/callback",
        base_url=f"http://127.0.0.1:{port}/",
        timeout=timeout,
        clock=clock,
    )


class AuthorizationUrlTests(TestCase):
    def test_query_is_encoded(self) -> None:
        client = oauth_client(1)
        url = client.authorization_url("st ate&x", scope="accounts")
        parts = urlsplit(url)
        self.assertEqual(
            f"{parts.scheme}://{parts.netloc}{parts.path}", "http://127.0.0.1:1/apps/auth"
        )
        query = parse_qs(parts.query)
        self.assertEqual(query["client_id"], ["app-id"])
        self.assertEqual(query["redirect_uri"], ["http://127.0.0.1:8765/callback"])
        self.assertEqual(query["scope"], ["accounts"])
        self.assertEqual(query["state"], ["st ate&x"])
        self.assertIn("redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback", url)
        self.assertNotIn(SECRET, url)

    def test_bad_scope_or_state(self) -> None:
        client = oauth_client(1)
        self.assertRaises(ValueError, client.authorization_url, "s", scope="everything")
        self.assertRaises(ValueError, client.authorization_url, "")

    def test_states_are_fresh(self) -> None:
        self.assertNotEqual(new_state(), new_state())
        self.assertGreaterEqual(len(new_state()), 32)

    def test_repr_hides_secret(self) -> None:
        self.assertNotIn(SECRET, repr(oauth_client(1)))


class TokenEndpointTests(TestCase):
    def setUp(self) -> None:
        self.endpoint = TokenEndpoint()
        self.port = listen(self, self.endpoint)
        self.client = oauth_client(self.port)

    async def test_exchange_success(self) -> None:
        before = cast(IReactorTime, reactor).seconds()
        token = await self.client.exchange_code("the-code")
        self.assertEqual(token.access_token, GOOD["accessToken"])
        self.assertEqual(token.refresh_token, GOOD["refreshToken"])
        self.assertAlmostEqual(token.expires_at - token.obtained_at, 2628000)
        self.assertGreaterEqual(token.obtained_at, before)
        self.assertEqual(self.endpoint.paths, ["/apps/token"])
        self.assertEqual(
            self.endpoint.seen[0],
            {
                "grant_type": "authorization_code",
                "code": "the-code",
                "redirect_uri": "http://127.0.0.1:8765/callback",
                "client_id": "app-id",
                "client_secret": SECRET,
            },
        )

    async def test_refresh_success(self) -> None:
        token = await self.client.refresh("old-refresh")
        self.assertEqual(token.access_token, GOOD["accessToken"])
        self.assertEqual(self.endpoint.seen[0]["grant_type"], "refresh_token")
        self.assertEqual(self.endpoint.seen[0]["refresh_token"], "old-refresh")

    async def test_error_json_on_http_200(self) -> None:
        body = {"errorCode": "ACCESS_DENIED", "description": "refresh token already used"}
        self.endpoint.answers.append((200, json.dumps(body).encode()))
        with self.assertRaises(OAuthError) as caught:
            await self.client.refresh("used")
        self.assertNotIsInstance(caught.exception, OAuthHTTPError)
        self.assertEqual(caught.exception.code, "ACCESS_DENIED")
        self.assertEqual(caught.exception.description, "refresh token already used")
        self.assertNotIn(SECRET, str(caught.exception))

    async def test_http_error_with_json(self) -> None:
        body = {"errorCode": "INVALID_GRANT", "description": "code expired"}
        self.endpoint.answers.append((400, json.dumps(body).encode()))
        with self.assertRaises(OAuthHTTPError) as caught:
            await self.client.exchange_code("late")
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "INVALID_GRANT"))

    async def test_http_error_without_json(self) -> None:
        self.endpoint.answers.append((503, b"<html>down</html>"))
        with self.assertRaises(OAuthHTTPError) as caught:
            await self.client.exchange_code("x")
        self.assertEqual((caught.exception.status, caught.exception.code), (503, "HTTP_503"))

    async def test_garbage_on_200(self) -> None:
        self.endpoint.answers.append((200, b"not json"))
        self.endpoint.answers.append((200, json.dumps({"accessToken": "a"}).encode()))
        for _ in range(2):
            with self.assertRaises(OAuthError) as caught:
                await self.client.exchange_code("x")
            self.assertEqual(caught.exception.code, "INVALID_RESPONSE")

    async def test_timeout(self) -> None:
        self.endpoint.answers.append(None)
        client = oauth_client(self.port, timeout=0.2)
        with self.assertRaises(OAuthTimeout):
            await client.exchange_code("x")
        for request in self.endpoint.hanging:
            if not request.finished and not request._disconnected:
                request.finish()

    async def test_endless_body_is_cut_at_the_cap(self) -> None:
        for status in (200, 503):
            endpoint = EndlessEndpoint(status)
            client = oauth_client(listen(self, endpoint), timeout=10)
            with self.assertRaises(OAuthError) as caught:
                await client.refresh("r")
            if status == 200:
                self.assertNotIsInstance(caught.exception, OAuthHTTPError)
                self.assertEqual(caught.exception.code, "INVALID_RESPONSE")
                self.assertIn("exceeds 65536 bytes", str(caught.exception))
            else:
                # an error status is still reported, with the code from the first bytes
                assert isinstance(caught.exception, OAuthHTTPError)
                self.assertEqual((caught.exception.status, caught.exception.code), (503, "BUSY"))
            await endpoint.gone[0]  # the client hung up: the server stopped writing
            (producer,) = endpoint.producers
            self.assertTrue(producer.stopped)
            self.assertLess(producer.sent, 8 * 1024 * 1024)  # bounded by buffers, not the body

    async def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        number = port.getHost().port  # type: ignore[attr-defined]
        await port.stopListening()
        with self.assertRaises(OAuthConnectionError) as caught:
            await oauth_client(number).exchange_code("x")
        self.assertNotIn(SECRET, str(caught.exception))


class ExpiryDrivenRefreshTests(TestCase):
    """A Clock drives the schedule; the refresh itself is real HTTP and a real file."""

    async def test_refresh_ahead_of_expiry_then_store(self) -> None:
        endpoint = TokenEndpoint()
        clock = Clock()
        clock.advance(1000)
        client = oauth_client(listen(self, endpoint), clock=clock)
        store = TokenStore(temp_path(self), cast("IReactorThreads", reactor))
        first = Token("access-0-abcdefgh", "refresh-0-abcdefgh", 1000 + 3600, 1000)
        refresher = TokenRefresher(clock, client.refresh, first, store=store, margin=600)
        refreshed: list[Token] = []
        refresher.on_refreshed(refreshed.append)
        refresher.startService()
        self.addCleanup(refresher.stopService)
        self.assertEqual(refresher.next_refresh_at, 1000 + 3600 - 600)
        clock.advance(2999)
        self.assertEqual(endpoint.seen, [])
        done = Deferred[Token]()
        refresher.on_refreshed(done.callback)
        clock.advance(1)
        token = await done
        self.assertEqual(endpoint.seen[0]["refresh_token"], "refresh-0-abcdefgh")
        self.assertEqual(refresher.token, token)
        self.assertEqual(refreshed, [token])
        self.assertEqual(store.read(), token)
        self.assertEqual(token.obtained_at, 4000)
        self.assertEqual(token.expires_at, 4000 + 2628000)
        self.assertEqual(refresher.next_refresh_at, token.expires_at - 600)

    async def test_failed_refresh_is_retried(self) -> None:
        endpoint = TokenEndpoint()
        endpoint.answers.append((200, json.dumps({"errorCode": "SERVER_BUSY"}).encode()))
        client = oauth_client(listen(self, endpoint))
        clock = Clock()
        first = Token("access-0-abcdefgh", "refresh-0-abcdefgh", 100, 0)
        refresher = TokenRefresher(clock, client.refresh, first, margin=10, first_retry=5)
        refresher.startService()
        self.addCleanup(refresher.stopService)
        with self.assertRaises(OAuthError):
            await refresher.refresh_now()
        self.assertEqual(refresher.failure_count, 1)
        self.assertEqual(refresher.next_refresh_at, 5)
        done = Deferred[Token]()
        refresher.on_refreshed(done.callback)
        clock.advance(5)
        await done
        self.assertEqual(len(endpoint.seen), 2)


class RedirectCatcherTests(TestCase):
    def setUp(self) -> None:
        self.state = new_state()
        self.catcher = RedirectCatcher(reactor, self.state, port=0)
        self.catcher.listen()
        self.addCleanup(self.catcher.stop)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def get(self, query: str) -> tuple[int, str]:
        response = await self.http.get(f"{self.catcher.redirect_uri}?{query}")
        return response.code, (await response.text("utf-8"))

    async def test_code_with_right_state(self) -> None:
        waiting = self.catcher.wait()
        status, page = await self.get(f"code=abc123&state={self.state}")
        self.assertEqual(status, 200)
        self.assertIn("close this window", page)
        result = await waiting
        self.assertEqual(result.code, "abc123")
        self.assertNotIn("abc123", repr(result))
        status, _ = await self.get(f"code=again&state={self.state}")
        self.assertEqual(status, 410)

    async def test_wrong_state_refused(self) -> None:
        waiting = self.catcher.wait()
        status, page = await self.get("code=evil&state=not-the-state")
        self.assertEqual(status, 400)
        self.assertIn("refused", page)
        with self.assertRaises(StateMismatch):
            await waiting
        status, _ = await self.get(f"code=late&state={self.state}")
        self.assertEqual(status, 410)

    async def test_missing_state_refused(self) -> None:
        status, _ = await self.get("code=evil")
        self.assertEqual(status, 400)
        with self.assertRaises(StateMismatch):
            await self.catcher.wait()

    async def test_user_denied(self) -> None:
        status, _ = await self.get(f"error=access_denied&state={self.state}")
        self.assertEqual(status, 403)
        with self.assertRaises(OAuthError) as caught:
            await self.catcher.wait()
        self.assertEqual(caught.exception.code, "access_denied")

    async def test_other_paths_ignored(self) -> None:
        response = await self.http.get(
            self.catcher.redirect_uri.replace("/callback", "/favicon.ico")
        )
        await response.content()
        self.assertEqual(response.code, 404)
        self.assertNoResult(self.catcher.wait())
