"""The account, subscription and token half of :class:`~ctrader_twisted.client.Client`.

:class:`AccountMethods` is a mixin: the methods that change what a reconnect restores
(authorized accounts, subscriptions, tokens) and the reaction to the server dropping an account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TypeVar, cast

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import messages as m
from ._client_restore import ALREADY_DONE, RestoreSet, restore_accounts, restore_subscriptions
from ._client_session import Session
from ._logsummary import RepeatedLog
from ._requests_typed import TypedRequests
from .errors import CTraderError, OpenApiError

__all__ = ["AccountMethods"]

_M = TypeVar("_M", bound=Message)


class AccountMethods(TypedRequests):
    """Accounts, subscriptions and tokens (mixed into the client)."""

    _log: Logger
    _clock: IReactorTime
    _record: RestoreSet
    _session: Session | None
    _ready: bool
    _rate_window: float
    _reauth_attempts: int
    _repeated: RepeatedLog
    #: Accounts being authorized again after a disconnect event (one try sequence at a time).
    _reauthorizing: set[int]

    def _send_on(self, session: Session, message: Message) -> Deferred[Message]:
        raise NotImplementedError

    # Accounts

    def _account_disconnected(self, account: int) -> None:
        token = self._record.tokens.get(account)
        if token is None or not self._ready:
            return
        self._repeated.warn(
            ("account-disconnected", account),
            "account {account} was disconnected; authorizing again",
            account=account,
        )
        if account in self._reauthorizing:
            return  # a repeated event: the tries under way cover it
        self._reauthorizing.add(account)
        reauthorizing = Deferred.fromCoroutine(self._reauthorize(account, token))
        reauthorizing.addErrback(
            lambda failure: self._log.failure("re-authorizing failed", failure)
        )
        reauthorizing.addBoth(lambda _: self._reauthorizing.discard(account))

    async def _reauthorize(self, account: int, token: str) -> None:
        for attempt in range(self._reauth_attempts):
            session = self._session
            if session is None or not self._ready or self._record.tokens.get(account) != token:
                return  # a reconnect restores it, or the account was dropped meanwhile
            send = partial(self._send_on, session)
            try:
                await restore_accounts(send, self._record, {account: token})
                return
            except CTraderError as error:
                self._log.warn(
                    "re-authorizing account {account} failed: {error}", account=account, error=error
                )
            delay: Deferred[None] = Deferred()
            self._clock.callLater(self._rate_window * 2**attempt, delay.callback, None)
            await delay

    def authorize_account(
        self, account_id: int, access_token: str
    ) -> Deferred[m.ProtoOAAccountAuthRes]:
        """Authorize a trading account on this connection and on every future one.

        If the account had subscriptions recorded (it was authorized before and its token was
        invalidated), they are restored too.

        :returns: a Deferred that fires with the ``ProtoOAAccountAuthRes`` (also when the server
            says the account is already authorized).  It fails like :meth:`request`, notably
            with :class:`~ctrader_twisted.errors.AccountAuthError` for a refused token.
        """
        return Deferred.fromCoroutine(self._authorize(account_id, access_token))

    async def _authorize(self, account: int, token: str) -> m.ProtoOAAccountAuthRes:
        request = m.ProtoOAAccountAuthReq(ctidTraderAccountId=account, accessToken=token)
        try:
            result = await self.request(request)
        except OpenApiError as error:
            if error.code not in ALREADY_DONE:
                raise
            result = m.ProtoOAAccountAuthRes(ctidTraderAccountId=account)
        known = account in self._record.tokens
        self._record.tokens[account] = token
        session = self._session
        if not known and self._record.has_subscriptions(account) and session is not None:
            await restore_subscriptions(
                lambda message: self._send_on(session, message), self._record, [account]
            )
        return result

    def accounts_authorized_with(self, access_token: str) -> frozenset[int]:
        """The accounts this client holds (and restores) with ``access_token``.

        An account the server dropped (its token invalidated or refused) is not included.
        """
        return frozenset(a for a, token in self._record.tokens.items() if token == access_token)

    # Subscriptions

    def subscribe_spots(
        self, account_id: int, symbol_ids: Iterable[int], timestamps: bool = False
    ) -> Deferred[m.ProtoOASubscribeSpotsRes]:
        """Subscribe to spot prices, and keep the subscription across reconnects.

        :param timestamps: ask for ``timestamp`` in every spot event.
        :returns: a Deferred that fires with the ``ProtoOASubscribeSpotsRes`` (also when
            already subscribed); it fails like :meth:`request`.
        """
        symbols = list(symbol_ids)
        request = m.ProtoOASubscribeSpotsReq(
            ctidTraderAccountId=account_id, symbolId=symbols, subscribeToSpotTimestamp=timestamps
        )
        result = m.ProtoOASubscribeSpotsRes(ctidTraderAccountId=account_id)
        return self._subscribe(
            request, result, lambda: self._record.add_spots(account_id, symbols, timestamps)
        )

    def unsubscribe_spots(
        self, account_id: int, symbol_ids: Iterable[int]
    ) -> Deferred[m.ProtoOAUnsubscribeSpotsRes]:
        """Unsubscribe from spot prices (a few events may still arrive afterwards).

        Live trendbars and depth need spots, so the server ends them with the spots: they are
        forgotten too and no reconnect restores them.

        :returns: a Deferred that fires with the ``ProtoOAUnsubscribeSpotsRes``; it fails like
            :meth:`request`.
        """
        symbols = list(symbol_ids)
        self._record.remove_spots(account_id, symbols)  # with their trendbars and depth
        return self.request(
            m.ProtoOAUnsubscribeSpotsReq(ctidTraderAccountId=account_id, symbolId=symbols)
        )

    def subscribe_live_trendbars(
        self, account_id: int, symbol_id: int, period: int
    ) -> Deferred[m.ProtoOASubscribeLiveTrendbarRes]:
        """Subscribe to live trendbars of one symbol and period (spots must be subscribed).

        :param period: a ``ProtoOATrendbarPeriod`` value, e.g. ``m.ProtoOATrendbarPeriod.M1``.
        :returns: a Deferred that fires with the ``ProtoOASubscribeLiveTrendbarRes``; it fails
            like :meth:`request`.
        """
        request = m.ProtoOASubscribeLiveTrendbarReq(
            ctidTraderAccountId=account_id,
            symbolId=symbol_id,
            period=cast(m.ProtoOATrendbarPeriod.ValueType, period),
        )
        result = m.ProtoOASubscribeLiveTrendbarRes(ctidTraderAccountId=account_id)
        record = self._record.trendbars
        return self._subscribe(
            request, result, lambda: record.setdefault(account_id, set()).add((symbol_id, period))
        )

    def unsubscribe_live_trendbars(
        self, account_id: int, symbol_id: int, period: int
    ) -> Deferred[m.ProtoOAUnsubscribeLiveTrendbarRes]:
        """Unsubscribe from live trendbars.

        :returns: a Deferred that fires with the ``ProtoOAUnsubscribeLiveTrendbarRes``; it fails
            like :meth:`request`.
        """
        self._record.trendbars.get(account_id, set()).discard((symbol_id, period))
        return self.request(
            m.ProtoOAUnsubscribeLiveTrendbarReq(
                ctidTraderAccountId=account_id,
                symbolId=symbol_id,
                period=cast(m.ProtoOATrendbarPeriod.ValueType, period),
            )
        )

    def subscribe_depth(
        self, account_id: int, symbol_ids: Iterable[int]
    ) -> Deferred[m.ProtoOASubscribeDepthQuotesRes]:
        """Subscribe to depth of market (spots must be subscribed).

        :returns: a Deferred that fires with the ``ProtoOASubscribeDepthQuotesRes``; it fails
            like :meth:`request`.
        """
        symbols = list(symbol_ids)
        request = m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=account_id, symbolId=symbols)
        result = m.ProtoOASubscribeDepthQuotesRes(ctidTraderAccountId=account_id)
        return self._subscribe(request, result, lambda: self._record.add_depth(account_id, symbols))

    def unsubscribe_depth(
        self, account_id: int, symbol_ids: Iterable[int]
    ) -> Deferred[m.ProtoOAUnsubscribeDepthQuotesRes]:
        """Unsubscribe from depth of market.

        :returns: a Deferred that fires with the ``ProtoOAUnsubscribeDepthQuotesRes``; it fails
            like :meth:`request`.
        """
        symbols = list(symbol_ids)
        self._record.remove_depth(account_id, symbols)
        return self.request(
            m.ProtoOAUnsubscribeDepthQuotesReq(ctidTraderAccountId=account_id, symbolId=symbols)
        )

    def _subscribe(
        self, request: Message, already: _M, remember: Callable[[], None]
    ) -> Deferred[_M]:
        async def run() -> _M:
            try:
                result = cast(_M, await self._submit_request(request, None, None))
            except OpenApiError as error:
                if error.code not in ALREADY_DONE:
                    raise
                result = already
            remember()
            return result

        return Deferred.fromCoroutine(run())

    # Tokens

    def refresh_token(
        self, refresh_token: str, *, access_token: str | None = None
    ) -> Deferred[m.ProtoOARefreshTokenRes]:
        """Exchange a refresh token for a new access token, then re-authorize accounts with it.

        The accounts re-authorized are those authorized with ``access_token`` (the old token)
        when given, otherwise every authorized account if they all share one token.  A refusal
        while re-authorizing an account is logged and leaves that account as it was.

        :returns: a Deferred that fires with the ``ProtoOARefreshTokenRes`` (holding the new
            access and refresh tokens) once the re-authorizations are done.  It fails like
            :meth:`request`, e.g. with :class:`~ctrader_twisted.errors.OpenApiError` when the
            refresh token is refused.
        """
        tokens = self._record.tokens
        if access_token is not None:
            held = self.accounts_authorized_with(access_token)
            affected = [account for account in tokens if account in held]
        else:
            affected = list(tokens) if len(set(tokens.values())) == 1 else []
        return Deferred.fromCoroutine(self._refresh(refresh_token, affected))

    async def _refresh(self, refresh_token: str, affected: list[int]) -> m.ProtoOARefreshTokenRes:
        result = await self.request(m.ProtoOARefreshTokenReq(refreshToken=refresh_token))
        for account in affected:
            try:
                await self.authorize_account(account, result.accessToken)
            except CTraderError as error:
                self._log.warn(
                    "re-authorizing account {account} after the token refresh failed: {error}",
                    account=account,
                    error=error,
                )
        return result
