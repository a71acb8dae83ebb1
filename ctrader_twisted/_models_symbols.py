"""Symbols: light summaries, full trading details, and a per-account catalogue.

Owns :class:`SymbolCatalog`, which resolves names such as ``"EURUSD"`` to symbol ids and details
with ``ProtoOASymbolsListReq`` and ``ProtoOASymbolByIdReq``, and caches both per account.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, overload

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from . import messages as m
from ._models_units import (
    PriceLike,
    lots_to_volume,
    price_from_int,
    price_to_int,
    round_price,
    volume_to_lots,
)
from .errors import CTraderError

__all__ = [
    "RequestClient",
    "SymbolCatalog",
    "SymbolDetails",
    "SymbolSummary",
    "UnknownSymbol",
    "normalize_symbol_name",
    "symbol_details_from_proto",
    "symbol_summary_from_proto",
]


class RequestClient(Protocol):
    """What the models and history layers need from a client: typed requests.

    :class:`ctrader_twisted.Client` provides it (its ``request`` has one overload per request
    type); tests may pass any object with a matching ``request`` method.
    """

    @overload
    def request(
        self, message: m.ProtoOAGetTickDataReq, *, timeout: float | None = None
    ) -> Deferred[m.ProtoOAGetTickDataRes]: ...

    @overload
    def request(
        self, message: m.ProtoOAGetTrendbarsReq, *, timeout: float | None = None
    ) -> Deferred[m.ProtoOAGetTrendbarsRes]: ...

    @overload
    def request(
        self, message: m.ProtoOASymbolByIdReq, *, timeout: float | None = None
    ) -> Deferred[m.ProtoOASymbolByIdRes]: ...

    @overload
    def request(
        self, message: m.ProtoOASymbolsListReq, *, timeout: float | None = None
    ) -> Deferred[m.ProtoOASymbolsListRes]: ...


class UnknownSymbol(CTraderError, LookupError):
    """No symbol of the account has the given name or id.

    :ivar name: what was looked up.
    :ivar suggestions: close matches among the account's symbol names (maybe empty).
    """

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        text = f"unknown symbol {name!r}"
        if self.suggestions:
            text += f" (did you mean {', '.join(self.suggestions)}?)"
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


def normalize_symbol_name(name: str) -> str:
    """Canonical form used to match names: upper case without ``/``, ``_``, ``-``, ``.``, spaces.

    ``"eur/usd"`` and ``"EURUSD"`` both become ``"EURUSD"``.
    """
    return "".join(ch for ch in name.upper() if ch not in "/_-. ")


@dataclass(frozen=True, slots=True)
class SymbolSummary:
    """One entry of the light symbol list.

    :ivar symbol_id: the id to use in requests.
    :ivar name: the symbol name, e.g. ``"EURUSD"``.
    :ivar enabled: whether it can be traded.
    :ivar description: human description, or ``""``.
    :ivar base_asset_id: id of the base asset, if given.
    :ivar quote_asset_id: id of the quote asset, if given.
    :ivar category_id: id of the symbol category, if given.
    """

    symbol_id: int
    name: str
    enabled: bool = True
    description: str = ""
    base_asset_id: int | None = None
    quote_asset_id: int | None = None
    category_id: int | None = None


def _optional(message: Message, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


def symbol_summary_from_proto(symbol: m.ProtoOALightSymbol) -> SymbolSummary:
    """Convert one ``ProtoOALightSymbol``."""
    return SymbolSummary(
        symbol_id=int(symbol.symbolId),
        name=symbol.symbolName,
        enabled=symbol.enabled if symbol.HasField("enabled") else True,
        description=symbol.description,
        base_asset_id=_optional(symbol, "baseAssetId"),
        quote_asset_id=_optional(symbol, "quoteAssetId"),
        category_id=_optional(symbol, "symbolCategoryId"),
    )


@dataclass(frozen=True, slots=True)
class SymbolDetails:
    """Trading details of a symbol: its name plus precision and volume limits.

    Volumes (``lot_size``, ``min_volume``, ``max_volume``, ``step_volume``) are wire volumes in
    1/100 of a unit, as on the protocol.

    :ivar symbol_id: the id to use in requests.
    :ivar name: the symbol name.
    :ivar digits: decimal places of its prices.
    :ivar pip_position: the pip is ``10 ** -pip_position``.
    :ivar lot_size: wire volume of one lot, if given.
    :ivar min_volume: smallest order volume, if given.
    :ivar max_volume: largest order volume, if given.
    :ivar step_volume: order volume step, if given.
    :ivar description: human description, or ``""``.
    :ivar enabled: whether it can be traded.
    """

    symbol_id: int
    name: str
    digits: int
    pip_position: int
    lot_size: int | None = None
    min_volume: int | None = None
    max_volume: int | None = None
    step_volume: int | None = None
    description: str = ""
    enabled: bool = True

    @property
    def pip_size(self) -> Decimal:
        """Size of one pip (``Decimal("0.0001")`` for EURUSD)."""
        return Decimal(1).scaleb(-self.pip_position)

    def price(self, value: int) -> Decimal:
        """Price of a wire integer, shown with the symbol's digits."""
        return price_from_int(value, self.digits)

    def round_price(self, price: PriceLike) -> Decimal:
        """``price`` rounded to the symbol's digits."""
        return round_price(price, self.digits)

    def price_to_int(self, price: PriceLike) -> int:
        """Wire integer of ``price`` rounded to the symbol's digits."""
        return price_to_int(price, self.digits)

    def lots_to_volume(self, lots: PriceLike) -> int:
        """Wire volume of ``lots`` lots.

        :raises ValueError: if the lot size is unknown or the result is not a whole volume.
        """
        return lots_to_volume(lots, self._lot_size())

    def volume_to_lots(self, volume: int) -> Decimal:
        """Lots of a wire volume.

        :raises ValueError: if the lot size is unknown.
        """
        return volume_to_lots(volume, self._lot_size())

    def check_volume(self, volume: int) -> int:
        """Return ``volume`` if the symbol accepts it as an order volume.

        :raises ValueError: naming the broken limit (minimum, maximum or step).
        """
        if volume <= 0:
            raise ValueError("volume must be positive")
        if self.min_volume is not None and volume < self.min_volume:
            raise ValueError(f"volume {volume} is below the minimum {self.min_volume}")
        if self.max_volume is not None and volume > self.max_volume:
            raise ValueError(f"volume {volume} is above the maximum {self.max_volume}")
        if self.step_volume and volume % self.step_volume:
            raise ValueError(f"volume {volume} is not a multiple of the step {self.step_volume}")
        return volume

    def _lot_size(self) -> int:
        if not self.lot_size:
            raise ValueError(f"lot size of {self.name or self.symbol_id} is unknown")
        return self.lot_size


def symbol_details_from_proto(
    symbol: m.ProtoOASymbol, summary: SymbolSummary | None = None
) -> SymbolDetails:
    """Combine a ``ProtoOASymbol`` with its light-list entry (for the name)."""
    return SymbolDetails(
        symbol_id=int(symbol.symbolId),
        name=summary.name if summary is not None else "",
        digits=int(symbol.digits),
        pip_position=int(symbol.pipPosition),
        lot_size=_optional(symbol, "lotSize"),
        min_volume=_optional(symbol, "minVolume"),
        max_volume=_optional(symbol, "maxVolume"),
        step_volume=_optional(symbol, "stepVolume"),
        description=summary.description if summary is not None else "",
        enabled=summary.enabled if summary is not None else True,
    )


class _AccountSymbols:
    """What the catalogue knows about one account."""

    def __init__(self, summaries: Iterable[SymbolSummary]) -> None:
        self.summaries = tuple(summaries)
        self.by_id = {s.symbol_id: s for s in self.summaries}
        self.by_name: dict[str, SymbolSummary] = {}
        for summary in self.summaries:
            self.by_name.setdefault(normalize_symbol_name(summary.name), summary)
        self.details: dict[int, SymbolDetails] = {}

    def find(self, name: str) -> SymbolSummary:
        key = normalize_symbol_name(name)
        found = self.by_name.get(key)
        if found is None and key.isdigit():
            found = self.by_id.get(int(key))
        if found is None:
            close = difflib.get_close_matches(key, list(self.by_name), n=3, cutoff=0.6)
            raise UnknownSymbol(name, [self.by_name[c].name for c in close])
        return found


class SymbolCatalog:
    """Resolve symbol names to ids and trading details, caching per account.

    The light list (``ProtoOASymbolsListReq``) is fetched once per account, full details
    (``ProtoOASymbolByIdReq``) once per symbol, in batches::

        catalog = SymbolCatalog(client)
        eurusd = await catalog.resolve(account_id, "EURUSD")
        print(eurusd.symbol_id, eurusd.digits, eurusd.lot_size)

    Concurrent callers share the requests in flight.  Call :meth:`invalidate` after a
    ``ProtoOASymbolChangedEvent`` to refetch.

    :param client: anything with the client's ``request`` method (see :class:`RequestClient`).
    :param timeout: per-request timeout passed to ``client.request`` (``None``: its default).
    """

    def __init__(self, client: RequestClient, *, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._accounts: dict[int, _AccountSymbols] = {}
        self._loading: dict[int, list[Deferred[_AccountSymbols]]] = {}

    def symbols(self, account_id: int) -> Deferred[list[SymbolSummary]]:
        """The account's light symbol list, in server order.

        :returns: a Deferred firing with the list of :class:`SymbolSummary`; it fails with
            :class:`~ctrader_twisted.errors.OpenApiError` if the server refuses the request, or
            with the client's connection errors (``NotConnected``, ``ConnectionLost``,
            ``RequestTimeout``).
        """
        return self._account(account_id).addCallback(lambda known: list(known.summaries))

    def resolve(self, account_id: int, name: str | int) -> Deferred[SymbolDetails]:
        """Trading details of the symbol called ``name`` (or with id ``name``).

        Names match without regard to case or separators (``"eur/usd"`` finds ``EURUSD``).

        :returns: a Deferred firing with the :class:`SymbolDetails`; it fails with
            :class:`UnknownSymbol` (with suggestions) if the account has no such symbol, and
            otherwise as :meth:`symbols` does.
        """
        return Deferred.fromCoroutine(self._resolve(account_id, name))

    def details(self, account_id: int, symbol_ids: Sequence[int]) -> Deferred[list[SymbolDetails]]:
        """Trading details of several symbols by id, in the order given.

        Missing details are fetched with one ``ProtoOASymbolByIdReq``.

        :returns: a Deferred firing with one :class:`SymbolDetails` per id; it fails with
            :class:`UnknownSymbol` for an id the server does not know, and otherwise as
            :meth:`symbols` does.
        """
        return Deferred.fromCoroutine(self._details(account_id, symbol_ids))

    def cached(self, account_id: int, symbol_id: int) -> SymbolDetails | None:
        """Details already fetched for a symbol, without any request; ``None`` if not cached."""
        known = self._accounts.get(account_id)
        return None if known is None else known.details.get(symbol_id)

    def invalidate(self, account_id: int | None = None) -> None:
        """Forget what is cached for one account, or for all accounts."""
        if account_id is None:
            self._accounts.clear()
        else:
            self._accounts.pop(account_id, None)

    async def _resolve(self, account_id: int, name: str | int) -> SymbolDetails:
        known = await self._account(account_id)
        summary = known.by_id.get(name) if isinstance(name, int) else known.find(name)
        if summary is None:
            raise UnknownSymbol(str(name))
        (details,) = await self._details(account_id, [summary.symbol_id])
        return details

    async def _details(self, account_id: int, symbol_ids: Sequence[int]) -> list[SymbolDetails]:
        known = await self._account(account_id)
        missing = sorted({i for i in symbol_ids if i not in known.details})
        if missing:
            request = m.ProtoOASymbolByIdReq(ctidTraderAccountId=account_id, symbolId=missing)
            response = await self._client.request(request, timeout=self._timeout)
            for symbol in response.symbol:
                summary = known.by_id.get(int(symbol.symbolId))
                details = symbol_details_from_proto(symbol, summary)
                known.details[details.symbol_id] = details
        result = []
        for symbol_id in symbol_ids:
            if symbol_id not in known.details:
                raise UnknownSymbol(str(symbol_id))
            result.append(known.details[symbol_id])
        return result

    def _account(self, account_id: int) -> Deferred[_AccountSymbols]:
        known = self._accounts.get(account_id)
        if known is not None:
            return succeed(known)
        waiter: Deferred[_AccountSymbols] = Deferred()
        waiters = self._loading.get(account_id)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._loading[account_id] = [waiter]
        request = m.ProtoOASymbolsListReq(ctidTraderAccountId=account_id)
        loading = self._client.request(request, timeout=self._timeout)
        loading.addCallbacks(
            self._listed, self._failed, callbackArgs=(account_id,), errbackArgs=(account_id,)
        )
        return waiter

    def _listed(self, response: m.ProtoOASymbolsListRes, account_id: int) -> None:
        known = _AccountSymbols(symbol_summary_from_proto(s) for s in response.symbol)
        self._accounts[account_id] = known
        for waiter in self._loading.pop(account_id, []):
            waiter.callback(known)

    def _failed(self, failure: Failure, account_id: int) -> None:
        for waiter in self._loading.pop(account_id, []):
            waiter.errback(failure)
