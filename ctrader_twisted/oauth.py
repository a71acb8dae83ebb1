"""OAuth 2.0 for cTrader Open API applications, without blocking the reactor.

The flow (see ``docs/oauth.md``):

1. :meth:`OAuthClient.authorization_url` builds the page the user opens to grant access, with a
   random ``state`` from :func:`new_state`;
2. the browser comes back to the registered redirect URI with ``?code=...&state=...``;
   :class:`RedirectCatcher` is a one-shot local web server that catches it and checks ``state``;
3. :meth:`OAuthClient.exchange_code` trades the code (valid for one minute) for a
   :class:`~ctrader_twisted.tokens.Token`;
4. :meth:`OAuthClient.refresh` (HTTP) or ``Client.refresh_token`` (on the socket) renews it;
   :class:`TokenRefresher` does that ahead of expiry, and :func:`keep_client_authorized`
   authorizes a client's accounts again with each new token.

Every failure is an :class:`OAuthError` (or a subclass), whether the token endpoint answered with
an HTTP error, with ``errorCode`` in a JSON body on HTTP 200, with something unparsable, too
slowly, or not at all.  Client secrets and tokens never appear in exception messages or logs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlencode

from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from ctrader_twisted import _oauth_defaults
from ctrader_twisted._oauth_accounts import AccountKeeper, keep_client_authorized
from ctrader_twisted._oauth_errors import (
    OAuthConnectionError,
    OAuthError,
    OAuthHTTPError,
    OAuthTimeout,
    StateMismatch,
)
from ctrader_twisted._oauth_redirect import RedirectCatcher, RedirectResult
from ctrader_twisted._oauth_refresh import SocketRefresh, TokenRefresher, socket_refresh
from ctrader_twisted.tokens import Token, TokenFileError, TokenStore, default_token_path

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_HTTP_TIMEOUT",
    "SCOPES",
    "AccountKeeper",
    "OAuthClient",
    "OAuthConnectionError",
    "OAuthError",
    "OAuthHTTPError",
    "OAuthTimeout",
    "RedirectCatcher",
    "RedirectResult",
    "SocketRefresh",
    "StateMismatch",
    "Token",
    "TokenFileError",
    "TokenRefresher",
    "TokenStore",
    "default_token_path",
    "keep_client_authorized",
    "new_state",
    "parse_token_response",
    "socket_refresh",
]

#: Where the authorization page (``/apps/auth``) and token endpoint (``/apps/token``) live.
DEFAULT_BASE_URL: Final = _oauth_defaults.DEFAULT_BASE_URL
#: Seconds allowed for one token-endpoint round trip (connect, request, body).
DEFAULT_HTTP_TIMEOUT: Final = 30.0
#: ``trading`` grants full access, ``accounts`` read-only access.
SCOPES: Final = _oauth_defaults.SCOPES
_MAX_BODY: Final = 64 * 1024
#: Longest token lifetime believed (about 100 years); beyond it ``expiresIn`` is nonsense.
_MAX_EXPIRES_IN: Final = 100 * 365 * 86400


def new_state() -> str:
    """A fresh unguessable ``state`` value (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(24)


class OAuthClient:
    """Talks to the cTrader OAuth endpoints over HTTP(S) with treq.

    :param reactor: the reactor (TCP/TLS connections and the clock for timeouts and expiry).
    :param client_id: the application's client id.
    :param client_secret: the application's secret; never logged or shown.
    :param redirect_uri: the redirect URI registered for the application.
    :param base_url: scheme and host of the OAuth server (no trailing path).
    :param timeout: seconds for each token-endpoint round trip.
    :param agent: an ``IAgent`` to use instead of a fresh non-persistent ``Agent``.
    :param clock: the clock that stamps tokens (``obtained_at``, ``expires_at``); defaults to
        ``reactor``.  Timeouts always run on ``reactor``.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        agent: IAgent | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
            agent = Agent(reactor, pool=pool, connectTimeout=timeout)  # type: ignore[no-untyped-call]
        self._http = HTTPClient(agent)

    def __repr__(self) -> str:
        return f"OAuthClient(client_id={self.client_id!r}, base_url={self.base_url!r})"

    def authorization_url(self, state: str, scope: str = "trading") -> str:
        """The URL of the page where the user grants this application access.

        :param state: an unguessable value (see :func:`new_state`) the redirect must carry back.
        :param scope: ``"trading"`` (full access) or ``"accounts"`` (read-only).
        :raises ValueError: unknown scope or empty state.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        if not state:
            raise ValueError("state must not be empty")
        query = urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": scope,
                "state": state,
            },
            quote_via=quote,
        )
        return f"{self.base_url}/apps/auth?{query}"

    def exchange_code(self, code: str) -> Deferred[Token]:
        """Trade an authorization code for a token.

        :returns: a Deferred that fires with the new :class:`Token` (expiry computed from the
            reactor clock).  It fails with :class:`OAuthError` when the server answers with an
            ``errorCode`` (even on HTTP 200) or an unusable body, :class:`OAuthHTTPError` on an
            HTTP error status, :class:`OAuthTimeout` after :attr:`timeout` seconds and
            :class:`OAuthConnectionError` when the server cannot be reached.
        """
        return self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
            }
        )

    def refresh(self, refresh_token: str) -> Deferred[Token]:
        """Obtain a new token with a (single-use) refresh token.

        :returns: a Deferred that fires with the new :class:`Token`; it fails as
            :meth:`exchange_code` does.
        """
        return self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def _token_request(self, params: dict[str, str]) -> Deferred[Token]:
        grant = params["grant_type"]
        query = dict(params, client_id=self.client_id, client_secret=self._client_secret)
        url = f"{self.base_url}/apps/token?{urlencode(query, quote_via=quote)}"
        d = Deferred.fromCoroutine(self._fetch(url))
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=self._timed_out)
        d.addErrback(self._translate_failure)

        def log_ok(token: Token) -> Token:
            self._log.info("OAuth {grant} succeeded", grant=grant)
            return token

        return d.addCallback(log_ok)

    async def _fetch(self, url: str) -> Token:
        response = await self._http.get(url, headers=Headers({b"Accept": [b"application/json"]}))
        body = _CappedBody(_MAX_BODY)
        try:
            await collect(response, body)
        except _BodyTooLarge:
            if response.code == 200:
                raise OAuthError(
                    "INVALID_RESPONSE", f"the token endpoint's answer exceeds {_MAX_BODY} bytes"
                ) from None
            # an error status: its first bytes may still name the error
        return parse_token_response(response.code, body.data(), self._clock.seconds())

    def _timed_out(self, result: object, timeout: float) -> Token:
        raise OAuthTimeout("TIMEOUT", f"no answer within {timeout:g} s")

    def _translate_failure(self, failure: Failure) -> Token:
        error = failure.value
        if isinstance(error, OAuthError):
            raise error
        if isinstance(error, CancelledError):
            raise OAuthError("CANCELLED", "the request was cancelled") from None
        if isinstance(error, ConnectError | DNSLookupError | ResponseFailed):
            raise OAuthConnectionError("CONNECTION_FAILED", type(error).__name__) from None
        raise OAuthError("UNEXPECTED", type(error).__name__) from None


class _BodyTooLarge(Exception):
    """The response body went past the cap (reading stopped and the connection was closed)."""


class _CappedBody:
    """A ``treq.collect`` collector that keeps at most ``cap`` bytes, then stops the transfer."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parts: list[bytes] = []
        self._size = 0

    def __call__(self, chunk: bytes) -> None:
        room = self._cap - self._size
        self._parts.append(chunk[:room])
        self._size += min(len(chunk), room)
        if len(chunk) > room:
            raise _BodyTooLarge()

    def data(self) -> bytes:
        return b"".join(self._parts)


def parse_token_response(status: int, body: bytes, now: float) -> Token:
    """Turn a token-endpoint answer into a :class:`Token`.

    :param status: the HTTP status code.
    :param body: the response body (JSON).
    :param now: the current time; the token expires ``expiresIn`` seconds after it.
    :raises OAuthHTTPError: ``status`` is not 200.
    :raises OAuthError: the JSON carries a non-empty ``errorCode``, or lacks a token field.
    """
    data = _json_object(body)
    code = _text(data.get("errorCode")) if data else ""
    description = _text(data.get("description")) if data else ""
    if status != 200:
        raise OAuthHTTPError(status, code or f"HTTP_{status}", description)
    if data is None:
        raise OAuthError("INVALID_RESPONSE", "token endpoint did not answer with a JSON object")
    if code:
        raise OAuthError(code, description)
    access = data.get("accessToken")
    refresh = data.get("refreshToken")
    expires_in = data.get("expiresIn")
    if not isinstance(access, str) or not access or not isinstance(refresh, str):
        raise OAuthError("INVALID_RESPONSE", "token response lacks accessToken or refreshToken")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise OAuthError("INVALID_RESPONSE", "token response lacks a numeric expiresIn")
    if not 0 <= expires_in < _MAX_EXPIRES_IN:  # also refuses NaN, which JSON can carry
        raise OAuthError("INVALID_RESPONSE", "token response has an out-of-range expiresIn")
    token_type = _text(data.get("tokenType")) or "bearer"
    return Token.from_expires_in(access, refresh, float(expires_in), now, token_type)


def _json_object(body: bytes) -> Mapping[str, object] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text(value: object) -> str:
    return "" if value is None else str(value)
