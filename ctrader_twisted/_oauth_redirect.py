"""A one-shot local web server that catches the OAuth redirect.

It listens on 127.0.0.1 only, answers the first request to its callback path, checks that the
``state`` parameter is the one this login attempt sent (constant-time comparison), and then
refuses everything else.  A redirect with a wrong or missing ``state`` is refused with an
explanatory page and fails the wait with :class:`StateMismatch`, since it may come from another
site trying to slip its own authorization code into this login (CSRF).

Neither the code nor the ``state`` is ever logged: the web server keeps no access log (whose
request lines would carry them).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from html import escape
from typing import Final, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ctrader_twisted._failure import failure_of
from ctrader_twisted._oauth_errors import OAuthError, StateMismatch

__all__ = ["DEFAULT_CALLBACK_PATH", "RedirectCatcher", "RedirectResult"]

#: Path of the redirect URI served by :class:`RedirectCatcher`.
DEFAULT_CALLBACK_PATH: Final = "/callback"

_PAGE: Final = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


@dataclass(frozen=True, slots=True)
class RedirectResult:
    """What the redirect brought back.

    :ivar code: the authorization code (valid for one minute; exchange it at once).
    """

    code: str = field(repr=False)


class RedirectCatcher:
    """Serve the redirect URI on ``http://127.0.0.1:<port><path>`` until one redirect arrives.

    :param reactor: the reactor to listen with.
    :param state: the ``state`` value sent in the authorization URL.
    :param port: TCP port; it must match the registered redirect URI (``0`` picks a free one,
        useful for tests only).
    :param interface: address to bind; keep the loopback default.
    :param path: the callback path of the redirect URI.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        state: str,
        *,
        port: int = 0,
        interface: str = "127.0.0.1",
        path: str = DEFAULT_CALLBACK_PATH,
    ) -> None:
        self._reactor = reactor
        self._state = state
        self._port_number = port
        self._interface = interface
        self.path = path
        self._listening: IListeningPort | None = None
        self._outcome: RedirectResult | OAuthError | None = None
        self._waiters: list[Deferred[RedirectResult]] = []

    def __repr__(self) -> str:
        return f"RedirectCatcher(port={self._port_number}, path={self.path!r})"

    def listen(self) -> int:
        """Start listening.

        :returns: the TCP port actually bound.
        :raises twisted.internet.error.CannotListenError: the port is taken.
        """
        site = _QuietSite(_CallbackResource(self))
        self._listening = self._reactor.listenTCP(
            self._port_number, cast(ServerFactory, site), interface=self._interface
        )
        self._port_number = self._listening.getHost().port  # type: ignore[attr-defined]
        return self._port_number

    @property
    def redirect_uri(self) -> str:
        """The redirect URI this catcher serves (register exactly this with the application)."""
        return f"http://{self._interface}:{self._port_number}{self.path}"

    def wait(self) -> Deferred[RedirectResult]:
        """Wait for the redirect.

        :returns: a fresh Deferred that fires with the :class:`RedirectResult`, or fails with
            :class:`StateMismatch` (wrong or missing ``state``; refused) or :class:`OAuthError`
            (the user denied access: code ``access_denied`` or whatever ``error`` the server
            sent; or the redirect lacked a ``code``).  Cancel it to stop waiting.
        """
        d: Deferred[RedirectResult] = Deferred(lambda cancelled: self._waiters.remove(cancelled))
        if self._outcome is None:
            self._waiters.append(d)
        else:
            self._fire(d, self._outcome)
        return d

    def stop(self) -> Deferred[None]:
        """Stop listening.

        :returns: a Deferred that fires with ``None`` once the port is closed.
        """
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        d = listening.stopListening()
        if d is None:
            return succeed(None)
        return d.addCallback(lambda _: None)

    def handle(self, args: dict[bytes, list[bytes]]) -> tuple[int, str, str]:
        """Decide on one callback request; returns (HTTP status, page title, page text)."""
        if self._outcome is not None:
            return 410, "Already handled", "This login attempt is finished; close this window."
        outcome = self._judge(
            {k.decode("latin-1"): v[0].decode("utf-8", "replace") for k, v in args.items() if v}
        )
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter, outcome)
        if isinstance(outcome, RedirectResult):
            self._log.info("OAuth redirect received")
            return 200, "Authorization received", "You can close this window now."
        self._log.warn("OAuth redirect refused: {code}", code=outcome.code)
        status = 400 if isinstance(outcome, StateMismatch) else 403
        return status, "Authorization refused", outcome.description or outcome.code

    def _judge(self, params: dict[str, str]) -> RedirectResult | OAuthError:
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode("utf-8"), self._state.encode("utf-8")):
            return StateMismatch(
                "STATE_MISMATCH",
                "the state parameter does not match this login attempt, so the request was "
                "refused; start the login again from the command line",
            )
        if "error" in params:
            return OAuthError(params["error"], params.get("error_description", ""))
        code = params.get("code", "")
        if not code:
            return OAuthError("MISSING_CODE", "the redirect carried no authorization code")
        return RedirectResult(code)

    @staticmethod
    def _fire(d: Deferred[RedirectResult], outcome: RedirectResult | OAuthError) -> None:
        if isinstance(outcome, RedirectResult):
            d.callback(outcome)
        else:
            d.errback(failure_of(outcome))


class _QuietSite(Site):
    """A :class:`Site` without an access log.

    ``twisted.web`` writes one access-log line per request (``"GET /callback?code=...&state=..."``)
    to the global log, where any observer (an application's, ``twistd``'s) would store the
    authorization code and the ``state``.  The catcher logs its own outcome instead, without
    them.  Not ``noisy`` either: the port is opened and closed once per login.
    """

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]

    def log(self, request: http.Request) -> None:
        """Write no access-log line (the request line carries the code and ``state``)."""


class _CallbackResource(Resource):
    isLeaf = True

    def __init__(self, catcher: RedirectCatcher) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._catcher = catcher

    def render_GET(self, request: Request) -> bytes:
        headers = request.responseHeaders
        headers.setRawHeaders(b"Content-Type", [b"text/html; charset=utf-8"])
        headers.setRawHeaders(b"Cache-Control", [b"no-store"])
        headers.setRawHeaders(b"Connection", [b"close"])
        if request.path.decode("latin-1") != self._catcher.path:
            request.setResponseCode(404)
            return _page("Not found", "This server only answers the OAuth redirect.")
        status, title, text = self._catcher.handle(request.args or {})
        request.setResponseCode(status)
        return _page(title, text)


def _page(title: str, text: str) -> bytes:
    return _PAGE.format(title=escape(title), text=escape(text)).encode("utf-8")
