"""``ctrader-twisted demo`` / ``make demo``: the whole product, offline, in well under a minute.

Starts the sandbox in-process on a free loopback port with a freshly generated CA (in a
temporary folder), connects a :class:`~ctrader_twisted.client.Client` over verified TLS and walks
through application auth, the account list and account auth, symbols, live EURUSD quotes, a
market buy and its fill, the position, closing it, and a week of M1 bars downloaded with a
progress bar; then prints a summary.  No credentials and no network are needed.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from . import messages as m
from ._cli_config import Settings
from ._cli_market import download_bars, run_quotes, run_symbols
from ._cli_output import Output
from ._cli_reactor import CliReactor
from ._cli_session import Context
from ._cli_trading import (
    FILL_COLUMNS,
    close_position,
    fill_row,
    place_order,
    run_accounts,
    run_positions,
)
from ._models_units import EPOCH, Period, TradeSide
from .client import Client
from .sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from .tls import tls_endpoint

__all__ = ["DEMO_SYMBOL", "run_demo"]

#: The symbol the demo quotes, trades and downloads.
DEMO_SYMBOL = "EURUSD"
_READY_TIMEOUT = 15.0


async def run_demo(
    reactor: CliReactor, out: Output, *, quotes_seconds: float = 3.0, days: float = 7.0
) -> int:
    """Run the demo on ``reactor``, writing to ``out``.

    :param quotes_seconds: how long to show live quotes.
    :param days: how many days of M1 bars to download.
    :returns: 0 when every step worked; a failing step raises (the CLI turns it into one
        error line and an exit code).
    """
    began = reactor.seconds()
    with tempfile.TemporaryDirectory(prefix="ctrader-demo-") as state:
        out.heading("Sandbox")
        config = SandboxConfig(always_open=True, tick_interval=0.25)
        running = await start_sandbox(reactor, config, port=0, state_dir=Path(state))
        out.note(
            f"Sandbox listening on {running.host}:{running.port} "
            f"(fresh CA {running.ca_file.name} in a temporary folder)"
        )
        try:
            return await _connected(reactor, out, running, began, quotes_seconds, days)
        finally:
            await running.stop()


async def _connected(
    reactor: CliReactor,
    out: Output,
    running: RunningSandbox,
    began: float,
    quotes_seconds: float,
    days: float,
) -> int:
    endpoint = tls_endpoint(reactor, running.host, running.port, ca_file=running.ca_file)
    client = Client(
        endpoint, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, reactor=reactor
    )
    settings = Settings(
        env="sandbox",
        host=running.host,
        port=running.port,
        ca_file=running.ca_file,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        access_token=DEFAULT_ACCESS_TOKEN,
    )
    client.startService()
    try:
        ready = client.when_ready()
        ready.addTimeout(_READY_TIMEOUT, reactor)
        await ready
        ctx = Context(reactor, client, settings, out, 10.0)
        bars = await _walkthrough(ctx, quotes_seconds, days)
    finally:
        await client.stopService()
    _summary(out, running, reactor.seconds() - began, bars)
    return 0


async def _walkthrough(ctx: Context, quotes_seconds: float, days: float) -> int:
    out = ctx.out
    out.heading("Application auth")
    version = await ctx.client.request(m.ProtoOAVersionReq())
    out.note(f"Verified TLS session, application authorized; server protocol {version.version}")
    out.heading("Accounts")
    await run_accounts(ctx)
    account = await ctx.account()
    out.note(f"Authorized account {account}")
    out.heading("Symbols")
    await run_symbols(ctx, None)
    out.heading(f"Live {DEMO_SYMBOL} quotes ({quotes_seconds:g} s)")
    await run_quotes(ctx, [DEMO_SYMBOL], None, quotes_seconds)
    out.heading(f"Market buy of 10,000 {DEMO_SYMBOL}")
    symbol, fill = await place_order(ctx, TradeSide.BUY, DEMO_SYMBOL, Decimal(10_000))
    out.table("Order filled", FILL_COLUMNS, [fill_row(symbol, fill)])
    out.heading("Open positions")
    await run_positions(ctx)
    out.heading(f"Closing position {fill.position_id}")
    symbol, closed = await close_position(ctx, fill.position_id)
    out.table("Position closed", FILL_COLUMNS, [fill_row(symbol, closed)])
    out.heading(f"{days:g} days of {DEMO_SYMBOL} M1 bars")
    end = EPOCH + timedelta(seconds=ctx.reactor.seconds())
    start = end - timedelta(days=days)
    return await download_bars(ctx, DEMO_SYMBOL, Period.M1, start, end, None, 5)


def _summary(out: Output, running: RunningSandbox, elapsed: float, bars: int) -> None:
    stats = running.factory.stats
    by_type = stats.requests_by_payload_type
    history = by_type.get(m.payload_type_of(m.ProtoOAGetTrendbarsReq), 0)
    out.heading("Summary")
    out.note(f"Everything worked, in {elapsed:.1f} s, without credentials or network.")
    out.note(
        f"  {stats.frames_received} frames to the sandbox, {stats.frames_sent} back "
        f"({stats.spot_events_sent} spot events, {stats.executions_sent} execution events)"
    )
    out.note(f"  {bars} M1 bars in {history} paged requests, within the 5/s historical limit")
