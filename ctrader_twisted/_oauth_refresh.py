"""Refreshing the access token ahead of its expiry (re-exported by :mod:`ctrader_twisted.oauth`).

:class:`TokenRefresher` is a service that holds the current token, schedules a refresh a margin
before expiry on an injected clock, saves every new token to a store before anyone uses it
(refresh tokens are single-use, so losing the new one would lock the application out), tells
listeners, and retries failed refreshes with a growing delay.

The refresh itself is any ``Callable[[str], Deferred[Token]]``: ``OAuthClient.refresh`` (HTTP) or
:func:`socket_refresh` (``ProtoOARefreshTokenReq`` over the client's connection; the client then
re-authorizes the accounts that used the old access token).  After an HTTP refresh nothing
re-authorizes the client's accounts unless ``oauth.keep_client_authorized`` is attached to the
refresher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ctrader_twisted import messages as m
from ctrader_twisted.tokens import Token, TokenStore

__all__ = [
    "DEFAULT_REFRESH_MARGIN",
    "RefreshFunction",
    "SocketRefresh",
    "SocketTokenClient",
    "TokenRefresher",
    "socket_refresh",
]

#: Refresh this many seconds before expiry (capped at half the token's lifetime).
DEFAULT_REFRESH_MARGIN: Final = 86400.0
_FIRST_RETRY: Final = 30.0
_MAX_RETRY: Final = 3600.0
# expiresIn above these is taken as an absolute time (ms or s) rather than a duration.
_ABSOLUTE_MS: Final = 1e12
_ABSOLUTE_S: Final = 1e9

RefreshFunction = Callable[[str], Deferred[Token]]


class SocketTokenClient(Protocol):
    """The part of ``ctrader_twisted.Client`` used by :func:`socket_refresh`."""

    def refresh_token(
        self, refresh_token: str, *, access_token: str | None = None
    ) -> Deferred[m.ProtoOARefreshTokenRes]:
        """Send ``ProtoOARefreshTokenReq`` and re-authorize the accounts that used
        ``access_token``."""


class SocketRefresh:
    """A refresh function that sends ``ProtoOARefreshTokenReq`` on a client's connection.

    Made by :func:`socket_refresh`.  :class:`TokenRefresher` calls :meth:`refresh` with the whole
    current token, so the client re-authorizes exactly the accounts that used its access token
    (also when other accounts hold other tokens).  Called as a plain function with a refresh
    token only, the client re-authorizes its accounts only if they all share one token.
    """

    def __init__(self, client: SocketTokenClient, clock: IReactorTime) -> None:
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return "SocketRefresh()"

    def __call__(self, refresh_token: str) -> Deferred[Token]:
        return self.refresh(refresh_token)

    def refresh(self, refresh_token: str, access_token: str | None = None) -> Deferred[Token]:
        """Refresh on the socket; ``access_token`` is the token being replaced, if known.

        :returns: a Deferred that fires with the new :class:`Token` once the client has
            re-authorized its accounts; it fails like ``Client.refresh_token``.
        """

        def to_token(res: m.ProtoOARefreshTokenRes) -> Token:
            now = self._clock.seconds()
            expires_at = _expires_at(float(res.expiresIn), now)
            token_type = res.tokenType or "bearer"
            return Token(res.accessToken, res.refreshToken, expires_at, now, token_type)

        sent = self._client.refresh_token(refresh_token, access_token=access_token)
        return sent.addCallback(to_token)


def socket_refresh(client: SocketTokenClient, clock: IReactorTime) -> SocketRefresh:
    """A refresh function that uses ``ProtoOARefreshTokenReq`` on ``client``'s connection.

    Given to a :class:`TokenRefresher`, each refresh tells the client which access token it
    replaces, and the client re-authorizes the accounts that used it with the new one.

    ``expiresIn`` is documented as seconds; a value too large to be a lifetime is read as an
    absolute POSIX time (milliseconds above 10^12, else seconds above 10^9).
    """
    return SocketRefresh(client, clock)


def _expires_at(expires_in: float, now: float) -> float:
    if expires_in > _ABSOLUTE_MS:
        return expires_in / 1000.0
    if expires_in > _ABSOLUTE_S:
        return expires_in
    return now + expires_in


class TokenRefresher(Service):
    """Keep a token fresh: refresh it ``margin`` seconds before it expires.

    :param clock: the clock for scheduling (the reactor in production).
    :param refresh: obtains a new token from a refresh token.
    :param token: the current token.
    :param store: where each new token is saved before listeners hear of it; optional.
    :param margin: refresh this long before expiry, capped at half the token's lifetime.
    :param first_retry: delay before retrying a failed refresh; doubles up to ``max_retry``.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        refresh: RefreshFunction,
        token: Token,
        *,
        store: TokenStore | None = None,
        margin: float = DEFAULT_REFRESH_MARGIN,
        first_retry: float = _FIRST_RETRY,
        max_retry: float = _MAX_RETRY,
    ) -> None:
        self._clock = clock
        self._refresh = refresh
        self._token = token
        self._store = store
        self._margin = margin
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._retry_delay = first_retry
        self._timer: IDelayedCall | None = None
        self._in_flight: list[Deferred[Token]] | None = None
        self._listeners: list[Callable[[Token], object]] = []
        self._before: list[Callable[[Token], object]] = []
        self.refresh_count = 0
        self.failure_count = 0

    def __repr__(self) -> str:
        return f"TokenRefresher(next_refresh_at={self.next_refresh_at!r})"

    @property
    def token(self) -> Token:
        """The current token."""
        return self._token

    @property
    def next_refresh_at(self) -> float | None:
        """Clock time of the next scheduled refresh, or ``None`` when none is scheduled."""
        return self._timer.getTime() if self._timer is not None else None

    @property
    def refreshing(self) -> bool:
        """Whether a refresh is in progress."""
        return self._in_flight is not None

    def on_refreshed(self, callback: Callable[[Token], object]) -> Callable[[], None]:
        """Call ``callback(token)`` after every successful refresh; returns a remover."""
        return _add_listener(self._listeners, callback)

    def on_refreshing(self, callback: Callable[[Token], object]) -> Callable[[], None]:
        """Call ``callback(old_token)`` just before each refresh attempt is sent (the old
        token is still valid then); returns a remover."""
        return _add_listener(self._before, callback)

    def valid_token(self) -> Deferred[Token]:
        """The current token if it has not expired yet, else a freshly refreshed one.

        Authorize accounts with this rather than with :attr:`token` at start-up: with an
        expired token the server would refuse them (``CH_ACCESS_TOKEN_INVALID``).

        :returns: a Deferred that fires with a token that has not expired (at once when the
            current one is still valid); it fails like :meth:`refresh_now`.
        """
        if self._in_flight is None and not self._token.is_expired(self._clock.seconds()):
            return succeed(self._token)
        return self.refresh_now()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._schedule(self._refresh_delay())

    def stopService(self) -> Deferred[None] | None:
        self._cancel_timer()
        super().stopService()  # type: ignore[no-untyped-call]
        return None

    def refresh_now(self) -> Deferred[Token]:
        """Refresh at once (joining a refresh already in progress).

        :returns: a fresh Deferred that fires with the new token once it is saved, or fails with
            whatever the refresh function failed with (typically an ``OAuthError`` or an
            ``OpenApiError``); a retry is scheduled in that case while the service runs.
        """
        d: Deferred[Token] = Deferred()
        if self._in_flight is not None:
            self._in_flight.append(d)
            return d
        self._in_flight = [d]
        self._cancel_timer()
        self._log.info("Refreshing the access token")
        attempt = Deferred.fromCoroutine(self._attempt())
        attempt.addCallbacks(self._succeeded, self._failed)
        return d

    async def _attempt(self) -> Token:
        old = self._token
        _notify(self._before, old, "Token listener (before refresh) failed")
        if isinstance(self._refresh, SocketRefresh):
            token = await self._refresh.refresh(old.refresh_token, old.access_token)
        else:
            token = await self._refresh(old.refresh_token)
        if self._store is not None:
            try:
                await self._store.save(token)
            except Exception as exc:
                self._log.critical(
                    "The refreshed token could not be saved ({error}); it is kept in memory only",
                    error=type(exc).__name__,
                )
        return token

    def _succeeded(self, token: Token) -> None:
        self._token = token
        self.refresh_count += 1
        self._retry_delay = self._first_retry
        self._log.info(
            "Access token refreshed; it expires in {days:.2f} days",
            days=token.remaining(self._clock.seconds()) / 86400,
        )
        if self.running:
            self._schedule(self._refresh_delay())
        _notify(self._listeners, token, "Token listener failed")
        self._settle(lambda d: d.callback(token))

    def _failed(self, failure: Failure) -> None:
        self.failure_count += 1
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._max_retry)
        self._log.error(
            "Token refresh failed ({error}); retrying in {delay:g} s",
            error=str(failure.value),
            delay=delay,
        )
        if self.running:
            self._schedule(delay)
        self._settle(lambda d: d.errback(failure))

    def _settle(self, fire: Callable[[Deferred[Token]], None]) -> None:
        waiters, self._in_flight = self._in_flight or [], None
        for waiter in waiters:
            fire(waiter)

    def _refresh_delay(self) -> float:
        lifetime = self._token.expires_at - self._token.obtained_at
        lead = min(self._margin, max(lifetime, 0.0) / 2)
        return max(0.0, self._token.expires_at - lead - self._clock.seconds())

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self.refresh_now().addErrback(lambda _: None)  # logged and rescheduled by _failed

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _add_listener(
    listeners: list[Callable[[Token], object]], callback: Callable[[Token], object]
) -> Callable[[], None]:
    listeners.append(callback)

    def remove() -> None:
        if callback in listeners:
            listeners.remove(callback)

    return remove


def _notify(listeners: list[Callable[[Token], object]], token: Token, what: str) -> None:
    for listener in list(listeners):
        try:
            listener(token)
        except Exception:
            TokenRefresher._log.failure(what)
