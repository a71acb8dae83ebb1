"""What a client re-applies on every new connection, and the sequence that re-applies it.

:class:`RestoreSet` records the accounts authorized so far (with their access tokens) and every
live subscription.  :func:`restore_accounts` replays them on one session in the required order:
all account authorizations, then spot subscriptions, then live trendbars and depth (which need
spots).  Requests inside one phase go out together; the rate limiter paces them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, cast

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import messages as m
from .errors import AccountAuthError, OpenApiError

__all__ = ["ALREADY_DONE", "RestoreSet", "restore_accounts", "restore_subscriptions"]

#: Error codes that mean the server is already in the state we asked for.
ALREADY_DONE: Final = frozenset(
    {"ALREADY_LOGGED_IN", "ALREADY_SUBSCRIBED", "CH_CLIENT_ALREADY_AUTHENTICATED"}
)

Send = Callable[[Message], "Deferred[Message]"]

_log = Logger(namespace="ctrader_twisted.client")


class RestoreSet:
    """Accounts and subscriptions to re-apply after a reconnect.

    Subscriptions are kept per account even while the account is not authorized (for example
    after its token was invalidated); they come back when the account is authorized again.
    """

    def __init__(self) -> None:
        #: account id -> access token, for every account authorized so far.
        self.tokens: dict[int, str] = {}
        #: account id -> {symbol id: with spot timestamps}.
        self.spots: dict[int, dict[int, bool]] = {}
        #: account id -> {(symbol id, period)}.
        self.trendbars: dict[int, set[tuple[int, int]]] = {}
        #: account id -> {symbol id}.
        self.depth: dict[int, set[int]] = {}

    def has_subscriptions(self, account: int) -> bool:
        """Whether ``account`` has any recorded subscription."""
        return bool(
            self.spots.get(account) or self.trendbars.get(account) or self.depth.get(account)
        )

    def add_spots(self, account: int, symbols: Iterable[int], timestamps: bool) -> None:
        self.spots.setdefault(account, {}).update(dict.fromkeys(symbols, timestamps))

    def remove_spots(self, account: int, symbols: Iterable[int]) -> None:
        """Forget spot subscriptions, and the live trendbars and depth that need them."""
        gone = set(symbols)
        table = self.spots.get(account, {})
        for symbol in gone:
            table.pop(symbol, None)
        self.remove_depth(account, gone)
        bars = self.trendbars.get(account)
        if bars:
            bars.difference_update([entry for entry in bars if entry[0] in gone])

    def add_depth(self, account: int, symbols: Iterable[int]) -> None:
        self.depth.setdefault(account, set()).update(symbols)

    def remove_depth(self, account: int, symbols: Iterable[int]) -> None:
        self.depth.get(account, set()).difference_update(symbols)

    def spot_requests(self, account: int) -> list[Message]:
        """One subscribe request per timestamp setting, symbols in a stable order."""
        table = self.spots.get(account, {})
        requests: list[Message] = []
        for flag in (False, True):
            symbols = sorted(s for s, stamped in table.items() if stamped is flag)
            if symbols:
                requests.append(
                    m.ProtoOASubscribeSpotsReq(
                        ctidTraderAccountId=account,
                        symbolId=symbols,
                        subscribeToSpotTimestamp=flag,
                    )
                )
        return requests

    def follow_up_requests(self, account: int) -> list[Message]:
        """Live trendbar and depth subscribe requests (they need spots first)."""
        requests: list[Message] = [
            m.ProtoOASubscribeLiveTrendbarReq(
                ctidTraderAccountId=account,
                symbolId=symbol,
                period=cast(m.ProtoOATrendbarPeriod.ValueType, period),
            )
            for symbol, period in sorted(self.trendbars.get(account, set()))
        ]
        depth = sorted(self.depth.get(account, set()))
        if depth:
            requests.append(
                m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=account, symbolId=depth)
            )
        return requests


async def settle_all(deferreds: list[Deferred[Message]]) -> list[Message | Exception]:
    """Wait for every Deferred (already running); return each result or exception in order."""
    results: list[Message | Exception] = []
    for deferred in deferreds:
        try:
            results.append(await deferred)
        except Exception as error:
            results.append(error)
    return results


def _check(result: Message | Exception, what: str) -> bool:
    """True for success; ``False`` for a server refusal to log and skip; raise otherwise."""
    if isinstance(result, Message):
        return True
    if isinstance(result, OpenApiError):
        if result.code in ALREADY_DONE:
            return True
        _log.warn("restoring {what} was refused: {error}", what=what, error=str(result))
        return False
    raise result


async def restore_accounts(send: Send, record: RestoreSet, accounts: Mapping[int, str]) -> None:
    """Authorize ``accounts`` then restore their subscriptions, phase by phase, via ``send``.

    An account whose token is refused (:class:`~ctrader_twisted.errors.AccountAuthError`) is
    dropped from ``record.tokens``; other refusals are logged and skipped for this session.

    :raises Exception: the first local failure (timeout, connection lost): the caller should
        drop the connection and let the reconnect start over.
    """
    accounts = dict(accounts)
    requests = [
        send(m.ProtoOAAccountAuthReq(ctidTraderAccountId=account, accessToken=token))
        for account, token in accounts.items()
    ]
    authorized: list[int] = []
    for (account, token), result in zip(accounts.items(), await settle_all(requests), strict=True):
        if isinstance(result, AccountAuthError):
            _log.warn(
                "account {account} was refused and will not be restored: {error}",
                account=account,
                error=str(result),
            )
            if record.tokens.get(account) == token:
                del record.tokens[account]
            continue
        if _check(result, f"account {account}"):
            authorized.append(account)
    await restore_subscriptions(send, record, authorized)


async def restore_subscriptions(send: Send, record: RestoreSet, accounts: Iterable[int]) -> None:
    """Subscribe ``accounts`` (already authorized) to their recorded spots, then the rest.

    :raises Exception: the first local failure, as for :func:`restore_accounts`.
    """
    authorized = list(accounts)
    for phase in (record.spot_requests, record.follow_up_requests):
        batch = [(account, request) for account in authorized for request in phase(account)]
        results = await settle_all([send(request) for _, request in batch])
        for (account, request), result in zip(batch, results, strict=True):
            _check(result, f"{type(request).__name__} for account {account}")
