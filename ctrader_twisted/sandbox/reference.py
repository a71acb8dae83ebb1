"""Reference-data requests: assets, asset classes, categories, symbols, conversion chains,
dynamic leverage and the trader record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .. import messages as m
from .catalogue import (
    ASSET_CLASSES,
    ASSETS,
    CATEGORIES,
    SYMBOLS,
    SymbolSpec,
    asset_message,
    dynamic_leverage,
    light_symbol,
    symbol_message,
)

if TYPE_CHECKING:
    from .session import Handler, Session

__all__ = ["HANDLERS", "conversion_chain"]


def _assets(session: Session, req: m.ProtoOAAssetListReq, cmid: str | None) -> None:
    res = m.ProtoOAAssetListRes(ctidTraderAccountId=req.ctidTraderAccountId)
    res.asset.extend(asset_message(asset_id) for asset_id in ASSETS)
    session.reply(res, cmid)


def _asset_classes(session: Session, req: m.ProtoOAAssetClassListReq, cmid: str | None) -> None:
    res = m.ProtoOAAssetClassListRes(ctidTraderAccountId=req.ctidTraderAccountId)
    for class_id, name in ASSET_CLASSES.items():
        res.assetClass.add(id=class_id, name=name, sortingNumber=float(class_id))
    session.reply(res, cmid)


def _categories(session: Session, req: m.ProtoOASymbolCategoryListReq, cmid: str | None) -> None:
    res = m.ProtoOASymbolCategoryListRes(ctidTraderAccountId=req.ctidTraderAccountId)
    for category_id, (class_id, name) in CATEGORIES.items():
        res.symbolCategory.add(
            id=category_id, assetClassId=class_id, name=name, sortingNumber=float(category_id)
        )
    session.reply(res, cmid)


def _symbols(session: Session, req: m.ProtoOASymbolsListReq, cmid: str | None) -> None:
    res = m.ProtoOASymbolsListRes(ctidTraderAccountId=req.ctidTraderAccountId)
    res.symbol.extend(light_symbol(spec) for spec in SYMBOLS.values())
    session.reply(res, cmid)


def _symbol_by_id(session: Session, req: m.ProtoOASymbolByIdReq, cmid: str | None) -> None:
    account_id = req.ctidTraderAccountId
    missing = [sid for sid in req.symbolId if sid not in SYMBOLS]
    if missing or not req.symbolId:
        text = f"Symbol not found: {missing[0] if missing else 'no symbolId given'}"
        session.error("SYMBOL_NOT_FOUND", text, cmid, account_id=account_id)
        return
    res = m.ProtoOASymbolByIdRes(ctidTraderAccountId=account_id)
    res.symbol.extend(symbol_message(SYMBOLS[sid]) for sid in req.symbolId)
    session.reply(res, cmid)


def conversion_chain(first: int, last: int) -> list[SymbolSpec] | None:
    """Symbols converting asset ``first`` into ``last``: one direct symbol, or two through
    USD; ``[]`` when the assets are equal and ``None`` when no chain exists."""
    if first == last:
        return []
    direct = _pair(first, last)
    if direct is not None:
        return [direct]
    usd = 1
    one, two = _pair(first, usd), _pair(usd, last)
    if one is not None and two is not None:
        return [one, two]
    return None


def _pair(a: int, b: int) -> SymbolSpec | None:
    for spec in SYMBOLS.values():
        if {spec.base_asset, spec.quote_asset} == {a, b}:
            return spec
    return None


def _conversion(session: Session, req: m.ProtoOASymbolsForConversionReq, cmid: str | None) -> None:
    account_id = req.ctidTraderAccountId
    if req.firstAssetId not in ASSETS or req.lastAssetId not in ASSETS:
        session.error("ENTITY_NOT_FOUND", "Asset not found", cmid, account_id=account_id)
        return
    chain = conversion_chain(req.firstAssetId, req.lastAssetId)
    if chain is None:
        text = "No conversion chain between these assets"
        session.error("SYMBOL_NOT_FOUND", text, cmid, account_id=account_id)
        return
    res = m.ProtoOASymbolsForConversionRes(ctidTraderAccountId=account_id)
    res.symbol.extend(light_symbol(spec) for spec in chain)
    session.reply(res, cmid)


def _leverage(session: Session, req: m.ProtoOAGetDynamicLeverageByIDReq, cmid: str | None) -> None:
    account_id = req.ctidTraderAccountId
    leverage = dynamic_leverage(req.leverageId)
    if leverage is None:
        text = f"Dynamic leverage {req.leverageId} not found"
        session.error("ENTITY_NOT_FOUND", text, cmid, account_id=account_id)
        return
    res = m.ProtoOAGetDynamicLeverageByIDRes(ctidTraderAccountId=account_id, leverage=leverage)
    session.reply(res, cmid)


def _trader(session: Session, req: m.ProtoOATraderReq, cmid: str | None) -> None:
    account = session.factory.broker.account(req.ctidTraderAccountId)
    trader = session.factory.broker.trader_message(account)
    session.reply(m.ProtoOATraderRes(ctidTraderAccountId=account.account_id, trader=trader), cmid)


HANDLERS: Final[dict[type, Handler]] = {
    m.ProtoOAAssetListReq: _assets,
    m.ProtoOAAssetClassListReq: _asset_classes,
    m.ProtoOASymbolCategoryListReq: _categories,
    m.ProtoOASymbolsListReq: _symbols,
    m.ProtoOASymbolByIdReq: _symbol_by_id,
    m.ProtoOASymbolsForConversionReq: _conversion,
    m.ProtoOAGetDynamicLeverageByIDReq: _leverage,
    m.ProtoOATraderReq: _trader,
}
