"""The Open API client: a reconnecting service with Deferred requests and event listeners.

:class:`Client` composes Twisted's :class:`~twisted.application.internet.ClientService` (with a
jittered, capped exponential backoff) and uses its ``prepareConnection`` hook to restore the
session on every new connection: application auth, every account authorized so far, then spot,
live trendbar and depth subscriptions.  Only then is the client *ready*: :meth:`Client.when_ready`
fires and queued requests go out.  Per-connection work (pacing, heartbeats, matching answers by
clientMsgId) lives in :mod:`ctrader_twisted._client_session`; the replay in
:mod:`ctrader_twisted._client_restore`.  See ``docs/client.md`` for the user guide.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Final, TypeVar, cast

from google.protobuf.message import Message
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import messages as m
from ._callbacks import remover
from ._client_accounts import AccountMethods
from ._client_restore import ALREADY_DONE, RestoreSet, restore_accounts
from ._client_session import MAX_RETRY_AFTER, Listener, Session
from ._failure import failure_of
from ._logsummary import DEFAULT_SUMMARY_INTERVAL, RepeatedLog
from ._pending import PendingRequest, State, encode_id
from .errors import (
    ApplicationAuthError,
    CTraderError,
    NotConnected,
    OpenApiError,
    RequestTimeout,
)
from .protocol import DEFAULT_MAX_LENGTH, OpenApiProtocol
from .tls import DEMO_HOST, LIVE_HOST, PORT, tls_endpoint

__all__ = [
    "DEFAULT_DEAD_LINK_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_LOG_SUMMARY_INTERVAL",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_RATE_MARGIN",
    "DEFAULT_RECONNECT_RESET_AFTER",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
    "DEMO_HOST",
    "LIVE_HOST",
    "PORT",
    "Client",
    "tls_endpoint",
]

_M = TypeVar("_M", bound=Message)

#: Seconds to wait for an answer once a request is written.
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
#: Seconds a request may wait to be written (not ready yet, or held by the rate limit).
DEFAULT_SEND_TIMEOUT: Final = 30.0
#: Seconds of write silence after which a heartbeat is sent.
DEFAULT_HEARTBEAT_INTERVAL: Final = 10.0
#: Seconds without a completed frame after which the link counts as dead.
DEFAULT_DEAD_LINK_TIMEOUT: Final = 40.0
#: Seconds added to the rate-limit window before a request's slot is reused.
DEFAULT_RATE_MARGIN: Final = 0.05
#: Largest ``retryAfter`` (seconds) a rate-limit refusal can make a request lane wait.
DEFAULT_MAX_RETRY_AFTER: Final = MAX_RETRY_AFTER
#: Seconds a session must stay ready before the reconnect backoff starts again from the
#: first delay.
DEFAULT_RECONNECT_RESET_AFTER: Final = 30.0
#: Seconds between two summaries of a warning that repeats per event.
DEFAULT_LOG_SUMMARY_INTERVAL: Final = DEFAULT_SUMMARY_INTERVAL

_ANSWER_TYPES: Final = {req: m.payload_type_of(res) for req, res in m.RESPONSE_TYPES.items()}
_ACCOUNT_DISCONNECT: Final = m.payload_type_of(m.ProtoOAAccountDisconnectEvent)
_TOKENS_INVALIDATED: Final = m.payload_type_of(m.ProtoOAAccountsTokenInvalidatedEvent)
_CLIENT_DISCONNECT: Final = m.payload_type_of(m.ProtoOAClientDisconnectEvent)
_INTERNAL: Final = frozenset({_ACCOUNT_DISCONNECT, _TOKENS_INVALIDATED, _CLIENT_DISCONNECT})


def _default_reactor() -> IReactorTime:
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)


class _SessionFactory(Factory):
    def __init__(self, build: Callable[[], OpenApiProtocol]) -> None:
        self._build = build
        self.noisy = False  # no "Starting factory" lines on every reconnect

    def buildProtocol(self, addr: IAddress | None) -> OpenApiProtocol:
        return self._build()


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that reports each failed connection attempt before passing it on."""

    def __init__(self, endpoint: IStreamClientEndpoint, report: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._report = report

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(reason: Failure) -> Failure:
            self._report(reason)
            return reason

        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(failed)


class Client(AccountMethods, Service):
    """A cTrader Open API client that keeps one connection alive and restores it.

    :param endpoint: where to connect, normally :func:`~ctrader_twisted.tls.tls_endpoint`.
    :param client_id: the application's client id.
    :param client_secret: the application's secret (never logged or shown in reprs).
    :param reactor: clock for every timer; defaults to the global reactor.
    :param request_timeout: seconds to wait for an answer after a request is written.
    :param send_timeout: seconds a request may wait to be written.
    :param heartbeat_interval: send a heartbeat after this long without writing (0: never).
    :param dead_link_timeout: drop and reconnect after this long without receiving a whole
        frame (0: never).  Bytes that do not complete a frame do not count: a frame must arrive
        within this bound of its first byte, or of the frame before it.
    :param rate_limit: requests per ``rate_window`` for ordinary requests (0: unlimited).
    :param historical_rate_limit: requests per ``rate_window`` for historical requests.
    :param rate_window: the server's rate-limit window in seconds.
    :param rate_margin: a sent request's slot is used again one ``rate_window`` after the
        later of its write plus this margin and the arrival of its answer, so that delays on
        the way to the server never make it count more than the limit in a window.
    :param rate_limit_retries: how often a non-trading request refused for the rate limit is
        queued again (first in line; its lane waits for ``retryAfter``, or one window).
    :param max_retry_after: cap in seconds on the wait a refusal's ``retryAfter`` imposes
        (default 60 s); a longer one is logged as a warning and cut to the cap.
    :param reconnect_initial_delay: first reconnect delay in seconds.
    :param reconnect_max_delay: cap of the reconnect delay in seconds.
    :param reconnect_factor: growth factor of the reconnect delay per failed attempt.
    :param reconnect_jitter: relative jitter of the reconnect delay (0.2: +/- 20 %).
    :param reconnect_reset_after: seconds a session must stay ready before the backoff starts
        again from ``reconnect_initial_delay``; a session lost sooner counts as a failed
        attempt, so a server that accepts the session and drops it at once gets ever longer
        delays, not a reconnect loop.
    :param retry_policy: replaces the backoff above: attempt number (1, 2, ...) -> seconds.
    :param account_reauth_attempts: tries to re-authorize an account after the server
        disconnected it (``ProtoOAAccountDisconnectEvent``).
    :param max_frame_length: largest accepted frame in bytes.
    :param log_summary_interval: warnings that a peer can cause once per frame (unknown event
        types, server errors naming no request, a listener that raises) are logged once, then
        summarized as a count every this many seconds (0: log each one).
    :param debug: log routine per-connection and per-message details at debug level (off by
        default: ``twistd`` writes every level to its log).
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        client_id: str,
        client_secret: str,
        reactor: IReactorTime | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        dead_link_timeout: float = DEFAULT_DEAD_LINK_TIMEOUT,
        rate_limit: int = 50,
        historical_rate_limit: int = 5,
        rate_window: float = 1.0,
        rate_margin: float = DEFAULT_RATE_MARGIN,
        rate_limit_retries: int = 3,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        reconnect_initial_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        reconnect_factor: float = 2.0,
        reconnect_jitter: float = 0.2,
        reconnect_reset_after: float = DEFAULT_RECONNECT_RESET_AFTER,
        retry_policy: Callable[[int], float] | None = None,
        account_reauth_attempts: int = 3,
        max_frame_length: int = DEFAULT_MAX_LENGTH,
        log_summary_interval: float = DEFAULT_LOG_SUMMARY_INTERVAL,
        debug: bool = False,
    ) -> None:
        self._clock = _default_reactor() if reactor is None else reactor
        self._client_id = client_id
        self._client_secret = client_secret
        self._request_timeout = request_timeout
        self._send_timeout = send_timeout
        self._limits = (rate_limit, historical_rate_limit)
        self._heartbeat_interval = heartbeat_interval
        self._dead_link_timeout = dead_link_timeout
        self._rate_window = rate_window
        self._rate_margin = rate_margin
        self._rate_limit_retries = rate_limit_retries
        self._max_retry_after = max_retry_after
        self._reset_after = reconnect_reset_after
        self._stable_timer: IDelayedCall | None = None
        self._debug = debug
        self._repeated = RepeatedLog(self._log, self._clock, log_summary_interval)
        self._reauthorizing: set[int] = set()
        self._backoff = (reconnect_initial_delay, reconnect_max_delay, reconnect_factor)
        self._jitter = reconnect_jitter
        self._random = random.Random()
        self._retry_policy = retry_policy
        self._reauth_attempts = account_reauth_attempts
        self._max_frame_length = max_frame_length
        self._listeners: dict[int, tuple[Listener, ...]] = {}
        self._record = RestoreSet()
        self._waiting: deque[PendingRequest] = deque()
        self._ready_waiters: list[Deferred[None]] = []
        self._ready_callbacks: list[Callable[[], object]] = []
        self._fatal_callbacks: list[Callable[[ApplicationAuthError], object]] = []
        self._lost_waiters: list[Deferred[None]] = []
        self._session: Session | None = None
        self._prepared: Deferred[None] | None = None
        self._ready = False
        self._fatal: ApplicationAuthError | None = None
        self._stopped = False
        self._failures = 0
        self._next_id = 0
        self._ready_count = 0
        #: Number of times the client became ready again after its first connection.
        self.reconnect_count = 0
        self._service = ClientService(
            _ReportingEndpoint(endpoint, self._connect_failed),
            _SessionFactory(self._build_protocol),
            retryPolicy=self._retry_delay,
            clock=self._clock,
            prepareConnection=self._prepare,
        )

    def __repr__(self) -> str:
        state = "ready" if self._ready else "not ready"
        return f"<Client {state}, {len(self._record.tokens)} account(s)>"

    # Public state

    @property
    def is_ready(self) -> bool:
        """Whether the connection is up and fully restored."""
        return self._ready

    @property
    def authorized_accounts(self) -> frozenset[int]:
        """Accounts authorized so far, which every reconnect re-authorizes."""
        return frozenset(self._record.tokens)

    # Service

    def startService(self) -> None:
        """Start connecting (and reconnecting until :meth:`stopService`)."""
        if self.running:
            return
        self._stopped = False
        self._fatal = None
        Service.startService(self)  # type: ignore[no-untyped-call]
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting and close the connection.

        Requests waiting to be sent fail with :class:`~ctrader_twisted.errors.NotConnected`,
        written ones with :class:`~ctrader_twisted.errors.ConnectionLost`, and pending
        :meth:`when_ready` Deferreds with ``NotConnected``.

        :returns: a Deferred that fires with ``None`` once disconnected; it does not fail.
        """
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self._stopped = True
        self._cancel_stable_timer()
        self._repeated.flush()
        self._abandon(NotConnected("the client was stopped"))
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        session = self._session
        if session is not None and not self._ready:
            # Still restoring: close it ourselves so ClientService sees a normal disconnect.
            lost: Deferred[None] = Deferred()
            self._lost_waiters.append(lost)
            session.close()
            await lost
        await self._service.stopService()

    def when_ready(self) -> Deferred[None]:
        """Wait until the client is connected and its session restored.

        :returns: a new Deferred per call that fires with ``None`` when ready (at once if it
            already is).  It fails with :class:`~ctrader_twisted.errors.ApplicationAuthError`
            if the application credentials are refused (the client then stops reconnecting),
            or with :class:`~ctrader_twisted.errors.NotConnected` if the client is stopped.
        """
        if self._ready:
            return succeed(None)
        if self._fatal is not None:
            return fail(self._fatal)
        if self._stopped:
            return fail(NotConnected("the client was stopped"))
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def on_ready(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` each time the client becomes ready (after every restore).

        :returns: a function that removes the callback.
        """
        self._ready_callbacks.append(callback)
        return remover(self._ready_callbacks, callback)

    def on_fatal(self, callback: Callable[[ApplicationAuthError], object]) -> Callable[[], None]:
        """Call ``callback(error)`` when the application credentials are refused.

        The client then stops reconnecting (see :meth:`when_ready`); long-running services use
        this to stop, or to alert someone, instead of waiting for a session that never comes.
        A callback registered after it happened is called at once.

        :returns: a function that removes the callback.
        """
        self._fatal_callbacks.append(callback)
        if self._fatal is not None:
            self._call_fatal(callback, self._fatal)
        return remover(self._fatal_callbacks, callback)

    def _call_fatal(
        self, callback: Callable[[ApplicationAuthError], object], error: ApplicationAuthError
    ) -> None:
        try:
            callback(error)
        except Exception:
            self._log.failure("on_fatal callback {callback!r} raised", callback=callback)

    def on(self, message_type: type[_M], callback: Callable[[_M], object]) -> Callable[[], None]:
        """Call ``callback(message)`` for every received message of ``message_type``.

        Answers to requests are delivered too.  A callback that raises is logged; the other
        callbacks still run.

        :returns: a function that removes the callback (safe to call more than once).
        :raises KeyError: if ``message_type`` has no payload type.
        """
        payload_type = m.payload_type_of(message_type)
        listener = cast(Listener, callback)
        self._listeners[payload_type] = (*self._listeners.get(payload_type, ()), listener)

        def remove() -> None:
            current = self._listeners.get(payload_type, ())
            if listener in current:
                index = current.index(listener)
                rest = current[:index] + current[index + 1 :]
                if rest:
                    self._listeners[payload_type] = rest
                else:
                    del self._listeners[payload_type]

        return remove

    # Requests

    def _submit_request(
        self, message: Message, timeout: float | None, send_timeout: float | None
    ) -> Deferred[Message]:
        answer_type = _ANSWER_TYPES.get(type(message))
        if answer_type is None:
            raise TypeError(f"{type(message).__name__} is not a request")
        trading = type(message) in m.TRADING_REQUESTS
        if self._fatal is not None:
            return fail(self._fatal)
        if self._stopped or not self.running:
            return fail(NotConnected("the client is not running"))
        if trading and not self._ready:
            return fail(NotConnected(f"{type(message).__name__}: the client is not ready"))
        pending = self._new_pending(message, answer_type, timeout, send_timeout, None)
        if isinstance(message, m.ProtoOAAccountLogoutReq):
            self._record.tokens.pop(message.ctidTraderAccountId, None)
        session = self._session
        if self._ready and session is not None:
            session.submit(pending)
        else:
            self._wait(pending)
        return pending.deferred

    def _new_pending(
        self,
        message: Message,
        answer_type: int,
        timeout: float | None,
        send_timeout: float | None,
        session: Session | None,
    ) -> PendingRequest:
        cls = type(message)
        pending = PendingRequest(
            message,
            payload_type=m.payload_type_of(cls),
            answer_type=answer_type,
            trading=cls in m.TRADING_REQUESTS,
            historical=cls in m.HISTORICAL_REQUESTS,
            timeout=self._request_timeout if timeout is None else timeout,
            send_timeout=self._send_timeout if send_timeout is None else send_timeout,
            retries=self._rate_limit_retries,
            session=session,
            canceller=lambda _: self._cancel(pending),
        )
        return pending

    def _send_on(self, session: Session, message: Message) -> Deferred[Message]:
        """Send a restore request on ``session`` itself, bypassing the ready gate."""
        pending = self._new_pending(message, _ANSWER_TYPES[type(message)], None, None, session)
        if session.connected:
            session.submit(pending)
        else:
            self._finish(pending, NotConnected("the connection closed"))
        return pending.deferred

    def _wait(self, pending: PendingRequest) -> None:
        pending.state = State.WAITING
        self._waiting.append(pending)
        self.start_send_timer(pending)

    def _cancel(self, pending: PendingRequest) -> None:
        pending.stop_timer()
        if pending.state is State.WAITING:
            self._discard_waiting(pending)
        elif self._session is not None:
            self._session.forget(pending)
        pending.state = State.DONE

    def _discard_waiting(self, pending: PendingRequest) -> None:
        with suppress(ValueError):
            self._waiting.remove(pending)

    def _finish(self, pending: PendingRequest, error: Exception) -> None:
        pending.stop_timer()
        if pending.state is not State.DONE:
            pending.state = State.DONE
            pending.deferred.errback(failure_of(error))

    def _send_expired(self, pending: PendingRequest) -> None:
        pending.timer = None
        if pending.state is State.WAITING:
            self._discard_waiting(pending)
        elif self._session is not None:
            self._session.forget(pending)
        self._finish(pending, RequestTimeout(pending.name, pending.send_timeout, sent=False))

    def _abandon(self, error: CTraderError) -> None:
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            self._finish(pending, error)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(failure_of(error))

    # SessionOwner

    def next_client_msg_id(self) -> str:
        self._next_id += 1
        return encode_id(self._next_id)

    def start_send_timer(self, pending: PendingRequest) -> None:
        if pending.timer is None:
            pending.timer = self._clock.callLater(pending.send_timeout, self._send_expired, pending)

    def session_connected(self, session: Session) -> None:
        self._session = session

    def session_lost(self, session: Session, reason: Failure, unsent: list[PendingRequest]) -> None:
        if session is not self._session:
            return
        if self._ready or self._stopped:
            self._log.info("connection lost: {reason}", reason=reason.getErrorMessage())
        else:
            # Lost before the session was ready: a TLS verification failure, a server that
            # closes at once, a restore that failed.  Visible, since when_ready() still waits.
            self._log.warn(
                "connection lost before the session was ready (attempt {attempt}): {reason}",
                attempt=self._failures + 1,
                reason=reason.getErrorMessage(),
            )
        self._session = None
        self._ready = False
        self._cancel_stable_timer()
        if self._stopped:
            self._repeated.flush()  # nothing more can arrive: report the counts now
        carried = []
        for pending in unsent:
            if pending.trading or pending.session is not None:
                self._finish(pending, NotConnected("the connection closed before sending"))
            else:
                pending.state = State.WAITING
                carried.append(pending)
        self._waiting.extendleft(reversed(carried))
        if self._stopped or self._fatal is not None:
            self._abandon(self._fatal or NotConnected("the client was stopped"))
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.callback(None)  # let ClientService see a connection, then its loss
        self._clock.callLater(0, self._after_lost)

    def _after_lost(self) -> None:
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._fatal is not None and self._service.running:
            self._service.stopService()

    def internal_event(self, payload_type: int, message: Message) -> None:
        if isinstance(message, m.ProtoOAAccountDisconnectEvent):
            self._account_disconnected(message.ctidTraderAccountId)
        elif isinstance(message, m.ProtoOAAccountsTokenInvalidatedEvent):
            for account in message.ctidTraderAccountIds:
                self._record.tokens.pop(account, None)
            self._repeated.warn(
                "tokens-invalidated",
                "access token invalidated for accounts {accounts}: {reason}",
                accounts=list(message.ctidTraderAccountIds),
                reason=message.reason,
            )
        elif isinstance(message, m.ProtoOAClientDisconnectEvent):
            self._repeated.warn(
                "client-disconnect",
                "the server is closing the connection: {reason}",
                reason=message.reason,
            )

    # Connection set-up and restore

    def _build_protocol(self) -> OpenApiProtocol:
        session = Session(
            self,
            self._clock,
            listeners=self._listeners,
            internal=_INTERNAL,
            rate_limit=self._limits[0],
            historical_rate_limit=self._limits[1],
            rate_window=self._rate_window,
            rate_margin=self._rate_margin,
            heartbeat_interval=self._heartbeat_interval,
            dead_link_timeout=self._dead_link_timeout,
            repeated_log=self._repeated,
            max_retry_after=self._max_retry_after,
            debug=self._debug,
        )
        return OpenApiProtocol(
            session,
            self._clock,
            max_length=self._max_frame_length,
            repeated_log=self._repeated,
        )

    def _connect_failed(self, reason: Failure) -> None:
        if not self._stopped:
            self._log.warn(
                "connection attempt {attempt} failed: {reason}",
                attempt=self._failures + 1,
                reason=reason.getErrorMessage(),
            )

    def _stayed_ready(self) -> None:
        """The session stayed ready for ``reconnect_reset_after``: the backoff starts over."""
        self._stable_timer = None
        self._failures = 0

    def _cancel_stable_timer(self) -> None:
        timer, self._stable_timer = self._stable_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _retry_delay(self, attempt: int) -> float:
        self._failures += 1
        if self._retry_policy is not None:
            return self._retry_policy(self._failures)
        initial, cap, factor = self._backoff
        delay = min(cap, initial * factor ** min(self._failures - 1, 64))
        return max(0.0, delay * (1.0 + self._jitter * (2.0 * self._random.random() - 1.0)))

    def _prepare(self, protocol: IProtocol) -> Deferred[None]:
        session = self._session
        if session is None or not session.connected:
            return succeed(None)  # already gone; ClientService will see the loss
        prepared: Deferred[None] = Deferred(lambda _: session.close())
        self._prepared = prepared
        restoring = Deferred.fromCoroutine(self._restore(session))
        restoring.addErrback(self._restore_crashed, session)
        return prepared

    def _restore_crashed(self, failure: Failure, session: Session) -> None:
        self._log.failure("restoring the session failed", failure)
        session.close()

    async def _restore(self, session: Session) -> None:
        auth = m.ProtoOAApplicationAuthReq(
            clientId=self._client_id, clientSecret=self._client_secret
        )
        try:
            await self._send_on(session, auth)
        except ApplicationAuthError as error:
            self._fatal_error(error, session)
            return
        except OpenApiError as error:
            if error.code not in ALREADY_DONE:
                return self._restart(session, error)
        except CTraderError as error:
            return self._restart(session, error)
        try:
            await restore_accounts(
                lambda message: self._send_on(session, message),
                self._record,
                dict(self._record.tokens),
            )
        except CTraderError as error:
            return self._restart(session, error)
        if session.connected:
            self._become_ready(session)

    def _restart(self, session: Session, error: Exception) -> None:
        if session.connected:
            self._log.warn("restoring the session failed ({error}); reconnecting", error=error)
            session.close()

    def _fatal_error(self, error: ApplicationAuthError, session: Session) -> None:
        self._log.error("application authorization refused: {error}", error=str(error))
        self._fatal = error
        self._abandon(error)
        session.close()
        for callback in list(self._fatal_callbacks):
            self._call_fatal(callback, error)

    def _become_ready(self, session: Session) -> None:
        self._ready = True
        self._cancel_stable_timer()
        if self._reset_after > 0:
            self._stable_timer = self._clock.callLater(self._reset_after, self._stayed_ready)
        else:
            self._failures = 0
        self._ready_count += 1
        if self._ready_count > 1:
            self.reconnect_count += 1
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.callback(None)
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            session.submit(pending)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        for callback in list(self._ready_callbacks):
            try:
                callback()
            except Exception:
                self._log.failure("on_ready callback {callback!r} raised", callback=callback)
