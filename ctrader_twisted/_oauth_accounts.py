"""Keeping a client's accounts authorized across token refreshes (re-exported by
:mod:`ctrader_twisted.oauth`).

When an access token is refreshed, the server ends every account session authorized with the
old token (``ProtoOAAccountsTokenInvalidatedEvent``, reason "token refreshed") and the client
stops restoring those accounts.  A refresh on the socket (:func:`socket_refresh`) re-authorizes
them itself; after a refresh over HTTP (``OAuthClient.refresh``) nothing does, unless an
:class:`AccountKeeper` is attached to the :class:`TokenRefresher`::

    refresher = TokenRefresher(reactor, oauth.refresh, token, store=store)
    keeper = keep_client_authorized(client, refresher)
    await keeper.authorize(account_id)      # refreshes first if the token has expired

The keeper then authorizes its accounts again with every new access token, whichever arrives
first: the refreshed token or the server's invalidation event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from ctrader_twisted import messages as m
from ctrader_twisted._oauth_refresh import TokenRefresher
from ctrader_twisted.errors import AccountAuthError, CTraderError
from ctrader_twisted.tokens import Token

__all__ = ["AccountKeeper", "KeptClient", "keep_client_authorized"]

_M = TypeVar("_M", bound=Message)


class KeptClient(Protocol):
    """The part of ``ctrader_twisted.Client`` an :class:`AccountKeeper` uses."""

    def authorize_account(
        self, account_id: int, access_token: str
    ) -> Deferred[m.ProtoOAAccountAuthRes]:
        """Authorize an account now and on every reconnect."""

    def accounts_authorized_with(self, access_token: str) -> frozenset[int]:
        """The accounts the client holds with ``access_token``."""

    def on(self, message_type: type[_M], callback: Callable[[_M], object]) -> Callable[[], None]:
        """Call ``callback`` for every received message of ``message_type``."""


def keep_client_authorized(client: KeptClient, refresher: TokenRefresher) -> AccountKeeper:
    """Keep ``client``'s accounts authorized with ``refresher``'s current access token.

    :returns: the :class:`AccountKeeper`; authorize accounts with its
        :meth:`~AccountKeeper.authorize`.
    """
    return AccountKeeper(client, refresher)


class AccountKeeper:
    """Authorizes accounts with a :class:`TokenRefresher`'s token, and again after each refresh.

    The kept accounts are those authorized through :meth:`authorize`, plus every account the
    client holds with the refresher's access token when a refresh starts (so accounts
    authorized directly with ``client.authorize_account(id, refresher.token.access_token)``
    are kept too).  After each refresh, kept accounts the client does not already hold with
    the new token are authorized with it; when the server drops a kept account because its
    token was invalidated, it is authorized again with the refresher's current token.  The
    client records the new token, so reconnects restore the accounts (and their
    subscriptions) with it.  Refusals are logged, never raised.

    :param client: the ``Client`` (anything with the :class:`KeptClient` methods).
    :param refresher: the refresher whose token the accounts use.
    """

    _log = Logger()

    def __init__(self, client: KeptClient, refresher: TokenRefresher) -> None:
        self._client = client
        self._refresher = refresher
        self._accounts: set[int] = set()
        self._work: set[Deferred[None]] = set()
        self._removers = [
            refresher.on_refreshing(self._adopt),
            refresher.on_refreshed(self._refreshed),
            client.on(m.ProtoOAAccountsTokenInvalidatedEvent, self._invalidated),
        ]

    def __repr__(self) -> str:
        return f"AccountKeeper(accounts={sorted(self._accounts)})"

    @property
    def accounts(self) -> frozenset[int]:
        """The accounts kept authorized."""
        return frozenset(self._accounts)

    def authorize(self, account_id: int) -> Deferred[m.ProtoOAAccountAuthRes]:
        """Authorize ``account_id`` with a valid token and keep it authorized.

        An expired token is refreshed first (:meth:`TokenRefresher.valid_token`), so the
        server never sees it.  If a refresh invalidates the token while the request is on its
        way, it is sent once more with the new token.

        :returns: a Deferred that fires with the ``ProtoOAAccountAuthRes``.  It fails like
            ``Client.authorize_account`` (the account is then not kept), or with the refresh
            error when an expired token cannot be refreshed.
        """
        return Deferred.fromCoroutine(self._authorize(account_id))

    async def _authorize(self, account: int) -> m.ProtoOAAccountAuthRes:
        token = await self._refresher.valid_token()
        self._accounts.add(account)
        try:
            try:
                return await self._client.authorize_account(account, token.access_token)
            except AccountAuthError:
                newer = await self._refresher.valid_token()
                if newer.access_token == token.access_token:
                    raise
                return await self._client.authorize_account(account, newer.access_token)
        except BaseException:
            self._accounts.discard(account)
            raise

    def forget(self, account_id: int) -> None:
        """Stop keeping ``account_id`` (call it when logging the account out)."""
        self._accounts.discard(account_id)

    def stop(self) -> None:
        """Stop listening to the refresher and the client (safe to call more than once)."""
        for remove in self._removers:
            remove()

    def settled(self) -> Deferred[None]:
        """A Deferred that fires (never fails) once every re-authorization started so far
        has finished."""
        return gatherResults(list(self._work)).addCallback(lambda _: None)

    def _adopt(self, old: Token) -> None:
        self._accounts.update(self._client.accounts_authorized_with(old.access_token))

    def _refreshed(self, token: Token) -> None:
        self._start(token.access_token, self._accounts)

    def _invalidated(self, event: m.ProtoOAAccountsTokenInvalidatedEvent) -> None:
        if self._refresher.refreshing:
            return  # the refresh's own re-authorization covers these accounts
        dropped = [a for a in event.ctidTraderAccountIds if a in self._accounts]
        self._start(self._refresher.token.access_token, dropped)

    def _start(self, access_token: str, accounts: Iterable[int]) -> None:
        held = self._client.accounts_authorized_with(access_token)
        missing = sorted(set(accounts) - held)
        if not missing:
            return
        work = Deferred.fromCoroutine(self._reauthorize(missing, access_token))
        work.addErrback(self._crashed)
        self._work.add(work)
        work.addBoth(lambda _: self._work.discard(work))

    async def _reauthorize(self, accounts: list[int], access_token: str) -> None:
        sent = [(a, self._client.authorize_account(a, access_token)) for a in accounts]
        done = 0
        for account, deferred in sent:
            try:
                await deferred
                done += 1
            except CTraderError as error:
                self._log.warn(
                    "Authorizing account {account} with the current access token failed: {error}",
                    account=account,
                    error=str(error),
                )
        self._log.info(
            "Authorized {done} of {count} account(s) with the current access token",
            done=done,
            count=len(accounts),
        )

    def _crashed(self, failure: Failure) -> None:
        self._log.failure("Re-authorizing accounts failed", failure)
