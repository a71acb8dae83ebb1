"""Account and trading commands: ``accounts``, ``positions``, ``order`` and ``close``."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import NoReturn

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from . import messages as m
from ._cli_errors import CliError, ExitCode
from ._cli_output import Column, Row
from ._cli_session import Context
from ._cli_validate import INT64_MAX
from ._models_symbols import SymbolDetails
from ._models_trading import (
    Fill,
    Position,
    account_details_from_proto,
    account_from_proto,
    fill_from_deal,
    position_from_proto,
)
from ._models_units import (
    QuoteSide,
    TradeSide,
    lots_to_volume,
    plain,
    price_from_int,
    relative_protection,
    units_to_volume,
    volume_to_units,
)

__all__ = [
    "close_position",
    "place_order",
    "run_accounts",
    "run_close",
    "run_order",
    "run_positions",
]

#: Seconds to wait for a fill or a first quote after the request was answered.
EVENT_WAIT = 10.0

ACCOUNT_COLUMNS = (
    Column("account_id", "Account", numeric=True),
    Column("live", "Live"),
    Column("login", "Login", numeric=True),
    Column("broker", "Broker"),
    Column("balance", "Balance", numeric=True),
    Column("currency", "Currency"),
    Column("leverage", "Leverage", numeric=True),
)
POSITION_COLUMNS = (
    Column("position_id", "Position", numeric=True),
    Column("symbol", "Symbol"),
    Column("side", "Side"),
    Column("units", "Units", numeric=True),
    Column("lots", "Lots", numeric=True),
    Column("entry_price", "Entry", numeric=True),
    Column("stop_loss", "SL", numeric=True),
    Column("take_profit", "TP", numeric=True),
    Column("swap", "Swap", numeric=True),
    Column("commission", "Commission", numeric=True),
    Column("open_time", "Opened (UTC)"),
)
FILL_COLUMNS = (
    Column("order_id", "Order", numeric=True),
    Column("position_id", "Position", numeric=True),
    Column("symbol", "Symbol"),
    Column("side", "Side"),
    Column("units", "Units", numeric=True),
    Column("price", "Price", numeric=True),
    Column("gross_profit", "Gross P/L", numeric=True),
    Column("time", "Time (UTC)"),
)


async def run_accounts(ctx: Context) -> int:
    """List the token's accounts with balance, currency and leverage."""
    rows: list[Row] = []
    for proto in await ctx.list_accounts():
        account = account_from_proto(proto)
        await ctx.client.authorize_account(account.account_id, ctx.settings.access_token)
        trader = await ctx.client.request(
            m.ProtoOATraderReq(ctidTraderAccountId=account.account_id), timeout=ctx.timeout
        )
        details = account_details_from_proto(trader.trader)
        assets = await ctx.client.request(
            m.ProtoOAAssetListReq(ctidTraderAccountId=account.account_id), timeout=ctx.timeout
        )
        names = {int(a.assetId): a.name for a in assets.asset}
        rows.append(
            {
                "account_id": account.account_id,
                "live": account.is_live,
                "login": account.trader_login,
                "broker": account.broker or details.broker,
                "balance": details.balance,
                "currency": names.get(details.deposit_asset_id, str(details.deposit_asset_id)),
                "leverage": details.leverage,
            }
        )
    ctx.out.table("Trading accounts", ACCOUNT_COLUMNS, rows, kind="account")
    return 0


def position_row(symbol: SymbolDetails | None, position: Position) -> Row:
    """One position as output data."""
    lots = None
    if symbol is not None and symbol.lot_size:
        lots = symbol.volume_to_lots(position.volume)
    return {
        "position_id": position.position_id,
        "symbol": symbol.name if symbol is not None else str(position.symbol_id),
        "symbol_id": position.symbol_id,
        "side": position.side,
        "units": plain(position.units),
        "lots": lots,
        "entry_price": position.entry_price,
        "stop_loss": position.stop_loss,
        "take_profit": position.take_profit,
        "swap": position.swap,
        "commission": position.commission,
        "open_time": position.open_time,
    }


async def open_positions(ctx: Context, account: int) -> list[tuple[SymbolDetails, Position]]:
    """The account's open positions with their symbols' details."""
    reconcile = await ctx.client.request(
        m.ProtoOAReconcileReq(ctidTraderAccountId=account), timeout=ctx.timeout
    )
    raw = list(reconcile.position)
    ids = sorted({int(p.tradeData.symbolId) for p in raw})
    symbols = {d.symbol_id: d for d in await ctx.catalog.details(account, ids)}
    result = []
    for proto in raw:
        symbol = symbols[int(proto.tradeData.symbolId)]
        result.append((symbol, position_from_proto(proto, digits=symbol.digits)))
    return result


async def run_positions(ctx: Context) -> int:
    """List the account's open positions."""
    account = await ctx.account()
    rows = [position_row(s, p) for s, p in await open_positions(ctx, account)]
    ctx.out.table(f"Open positions of account {account}", POSITION_COLUMNS, rows, kind="position")
    return 0


_Wanted = Callable[[m.ProtoOAExecutionEvent], bool]


class _Executions:
    """Collect execution events of one account so a fill is not missed while awaiting."""

    def __init__(self, ctx: Context, account: int) -> None:
        self._ctx = ctx
        self._account = account
        self._events: list[m.ProtoOAExecutionEvent] = []
        self._waiters: list[tuple[_Wanted, Deferred[m.ProtoOAExecutionEvent]]] = []
        self.remove = ctx.client.on(m.ProtoOAExecutionEvent, self._received)

    def _received(self, event: m.ProtoOAExecutionEvent) -> None:
        if event.ctidTraderAccountId != self._account:
            return
        self._events.append(event)
        for entry in list(self._waiters):
            if not entry[1].called and entry[0](event):
                self._waiters.remove(entry)
                entry[1].callback(event)

    def wait_for(self, wanted: _Wanted, what: str) -> Deferred[m.ProtoOAExecutionEvent]:
        for event in self._events:
            if wanted(event):
                return Deferred.fromCoroutine(_now(event))
        waiter: Deferred[m.ProtoOAExecutionEvent] = Deferred()
        self._waiters.append((wanted, waiter))
        waiter.addTimeout(EVENT_WAIT, self._ctx.reactor)
        waiter.addErrback(_timed_out, what)
        return waiter


async def _now(event: m.ProtoOAExecutionEvent) -> m.ProtoOAExecutionEvent:
    return event


def _timed_out(failure: Failure, what: str) -> NoReturn:
    raise CliError(f"no {what} within {EVENT_WAIT:g} s", ExitCode.CONNECTION)


def fill_row(symbol: SymbolDetails, fill: Fill) -> Row:
    """One fill as output data."""
    return {
        "type": "fill",
        "order_id": fill.order_id,
        "position_id": fill.position_id,
        "deal_id": fill.deal_id,
        "symbol": symbol.name,
        "side": fill.side,
        "units": plain(volume_to_units(fill.filled_volume)),
        "price": fill.price,
        "gross_profit": fill.gross_profit,
        "closing": fill.closing,
        "time": fill.time,
    }


async def _reference_price(
    ctx: Context, account: int, symbol: SymbolDetails, side: QuoteSide
) -> Decimal:
    """The current bid or ask, from a short spot subscription."""
    first: Deferred[int] = Deferred()

    def on_spot(event: m.ProtoOASpotEvent) -> None:
        if event.symbolId == symbol.symbol_id and event.ctidTraderAccountId == account:
            if first.called:
                return
            if side is QuoteSide.ASK and event.HasField("ask"):
                first.callback(int(event.ask))
            elif side is QuoteSide.BID and event.HasField("bid"):
                first.callback(int(event.bid))

    remove = ctx.client.on(m.ProtoOASpotEvent, on_spot)
    try:
        await ctx.client.subscribe_spots(account, [symbol.symbol_id])
        first.addTimeout(EVENT_WAIT, ctx.reactor)
        price = await first.addErrback(_timed_out, "quote")
        await ctx.client.unsubscribe_spots(account, [symbol.symbol_id])
    finally:
        remove()
    return price_from_int(price, symbol.digits)


def order_volume(symbol: SymbolDetails, amount: Decimal, lots: bool) -> int:
    """Wire volume of ``amount`` units (or lots), checked against the symbol's limits.

    :raises CliError: (usage) naming the broken limit in units and lots, never in the
        protocol's hundredths of a unit.
    """
    try:
        volume = lots_to_volume(amount, symbol.lot_size or 0) if lots else units_to_volume(amount)
    except ValueError as error:
        raise CliError(f"bad volume for {symbol.name}: {error}") from None
    problem = _volume_problem(symbol, volume, lots)
    if problem:
        raise CliError(f"bad volume for {symbol.name}: {problem}")
    return volume


def _volume_problem(symbol: SymbolDetails, volume: int, lots: bool) -> str:
    """What is wrong with ``volume`` for ``symbol`` (empty when nothing); the asked amount
    is named as the user gave it (units, or lots with ``lots``)."""
    if volume <= 0:
        return "the volume must be positive"
    if volume > INT64_MAX:
        return "the volume is too large"
    asked = _amount(symbol, volume, lots_first=True) if lots else _units(volume)
    if symbol.min_volume is not None and volume < symbol.min_volume:
        return f"{asked} is below the minimum of {_amount(symbol, symbol.min_volume)}"
    if symbol.max_volume is not None and volume > symbol.max_volume:
        return f"{asked} is above the maximum of {_amount(symbol, symbol.max_volume)}"
    if symbol.step_volume and volume % symbol.step_volume:
        return f"{asked} is not a multiple of the step of {_amount(symbol, symbol.step_volume)}"
    return ""


def _amount(symbol: SymbolDetails, volume: int, *, lots_first: bool = False) -> str:
    """A wire volume for people: ``1000 units (0.01 lots)``, or ``0.01 lots (1000 units)``
    with ``lots_first``; lots only when the symbol's lot size is known."""
    unit_text = _units(volume)
    if not symbol.lot_size:
        return unit_text
    lots = symbol.volume_to_lots(volume)
    lot_text = f"{lots} lot" if lots == 1 else f"{lots} lots"
    return f"{lot_text} ({unit_text})" if lots_first else f"{unit_text} ({lot_text})"


def _units(volume: int) -> str:
    units = plain(volume_to_units(volume))
    return f"{units} unit" if units == 1 else f"{units} units"


async def run_order(
    ctx: Context,
    side: TradeSide,
    name: str,
    amount: Decimal,
    *,
    lots: bool,
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
) -> int:
    """Place a market order and print its fill."""
    symbol, fill = await place_order(
        ctx, side, name, amount, lots=lots, stop_loss=stop_loss, take_profit=take_profit
    )
    ctx.out.table("Order filled", FILL_COLUMNS, [fill_row(symbol, fill)], kind="fill")
    return 0


async def place_order(
    ctx: Context,
    side: TradeSide,
    name: str,
    amount: Decimal,
    *,
    lots: bool = False,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
) -> tuple[SymbolDetails, Fill]:
    """Place a market order; return its symbol and fill."""
    account = await ctx.account()
    symbol = await ctx.catalog.resolve(account, name)
    volume = order_volume(symbol, amount, lots)
    request = m.ProtoOANewOrderReq(
        ctidTraderAccountId=account,
        symbolId=symbol.symbol_id,
        orderType=m.ProtoOAOrderType.MARKET,
        tradeSide=m.ProtoOATradeSide.ValueType(int(side)),
        volume=volume,
        label="ctrader-twisted",
    )
    if stop_loss is not None or take_profit is not None:
        quote_side = QuoteSide.ASK if side is TradeSide.BUY else QuoteSide.BID
        entry = await _reference_price(ctx, account, symbol, quote_side)
        try:
            levels = relative_protection(side, entry, stop_loss, take_profit, digits=symbol.digits)
        except ValueError as error:
            raise CliError(f"{error} (current price {entry})") from None
        if levels.stop_loss is not None:
            request.relativeStopLoss = levels.stop_loss
        if levels.take_profit is not None:
            request.relativeTakeProfit = levels.take_profit
    return symbol, await _execute(ctx, account, request, "order fill")


async def _execute(
    ctx: Context,
    account: int,
    request: m.ProtoOANewOrderReq | m.ProtoOAClosePositionReq,
    what: str,
) -> Fill:
    executions = _Executions(ctx, account)
    try:
        answer = await ctx.client.request(request, timeout=ctx.timeout)
        order_id = int(answer.order.orderId)

        def filled(event: m.ProtoOAExecutionEvent) -> bool:
            return (
                event.executionType == m.ProtoOAExecutionType.ORDER_FILLED
                and int(event.order.orderId) == order_id
            )

        event = answer if filled(answer) else await executions.wait_for(filled, what)
    finally:
        executions.remove()
    return fill_from_deal(event.deal)


async def run_close(ctx: Context, position_id: int, amount: Decimal | None) -> int:
    """Close a position (or ``amount`` units of it) and print the closing fill."""
    symbol, fill = await close_position(ctx, position_id, amount)
    ctx.out.table("Position closed", FILL_COLUMNS, [fill_row(symbol, fill)], kind="fill")
    return 0


async def close_position(
    ctx: Context, position_id: int, amount: Decimal | None = None
) -> tuple[SymbolDetails, Fill]:
    """Close a position (or ``amount`` units of it); return its symbol and the closing fill."""
    account = await ctx.account()
    found = {p.position_id: (s, p) for s, p in await open_positions(ctx, account)}
    if position_id not in found:
        raise CliError(f"no open position {position_id} on account {account}", ExitCode.NOT_FOUND)
    symbol, position = found[position_id]
    volume = position.volume if amount is None else units_to_volume(amount)
    if volume > position.volume:
        raise CliError(f"position {position_id} holds only {plain(position.units)} units")
    request = m.ProtoOAClosePositionReq(
        ctidTraderAccountId=account, positionId=position_id, volume=volume
    )
    return symbol, await _execute(ctx, account, request, "closing fill")
