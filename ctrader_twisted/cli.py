"""The ``ctrader-twisted`` command.

Subcommands: ``demo``, ``sandbox``, ``record``, ``auth``, ``token``, ``accounts``, ``symbols``,
``quotes``, ``bars``, ``ticks``, ``order``, ``positions`` and ``close``; see ``docs/cli.md``.

:func:`main` is the console-script entry point and the only place that runs the global reactor
(with :func:`twisted.internet.task.react`).  :func:`execute` runs one parsed command on a given
reactor and returns its exit code, so tests drive it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TextIO, TypeAlias, cast

from . import __version__
from ._cli_config import ENVIRONMENTS, resolve_settings
from ._cli_errors import CliError, ExitCode, describe_failure
from ._cli_output import Output, StdoutClosed, stdout_gone
from ._cli_parse import MAX_PRICE, MAX_UNITS, parse_decimal, parse_time
from ._cli_validate import validate_options
from ._models_units import EPOCH, Period, QuoteSide, TradeSide

if TYPE_CHECKING:  # Twisted and the client are imported when a command runs, not for --help
    from twisted.internet.defer import Deferred

    from ._cli_reactor import CliReactor
    from ._cli_session import Context

__all__ = ["build_parser", "execute", "main"]

_DEFAULT_TIMEOUT = 10.0
_DEFAULT_CONNECT_TIMEOUT = 15.0


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--env",
        choices=ENVIRONMENTS,
        help="server environment (default: $CTRADER_ENV, else 'env' in the config file's "
        "[default] section, else demo)",
    )
    group.add_argument("--host", help="server host (default: by environment)")
    group.add_argument("--port", type=int, help="server port (default: 5035)")
    group.add_argument("--ca-file", help="PEM file of the CA to trust instead of the system's")
    group.add_argument(
        "--account",
        type=int,
        help="account id (default: $CTRADER_ACCOUNT_ID, else 'account_id' in the config file, "
        "else the token's first account)",
    )
    group.add_argument(
        "--config",
        help="config file (default: $CTRADER_CONFIG, else ~/.config/ctrader-twisted/config.ini)",
    )
    group.add_argument(
        "--timeout", type=float, default=_DEFAULT_TIMEOUT, help="seconds per request (10)"
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=_DEFAULT_CONNECT_TIMEOUT,
        help="seconds to establish the session (15)",
    )
    output = parent.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="one JSON object per line")
    return parent


def _history_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("symbol", help="symbol name, e.g. EURUSD")
    parser.add_argument("--from", dest="start", default="1d", help="start (default: 1d ago)")
    parser.add_argument("--to", dest="end", default="now", help="end, exclusive (default: now)")
    parser.add_argument("--out", help="write CSV to this file instead of printing")
    parser.add_argument(
        "--limit", type=int, default=100, help="rows shown in the table (default: last 100)"
    )


_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_market(commands: _Commands, parent: argparse.ArgumentParser) -> None:
    commands.add_parser("accounts", parents=[parent], help="list the token's trading accounts")
    symbols = commands.add_parser("symbols", parents=[parent], help="list the account's symbols")
    symbols.add_argument("pattern", nargs="?", help="only names containing this")
    quotes = commands.add_parser("quotes", parents=[parent], help="stream live quotes")
    quotes.add_argument("symbols", nargs="+", metavar="SYMBOL")
    quotes.add_argument("--count", type=int, help="stop after this many quotes")
    quotes.add_argument("--duration", type=float, help="stop after this many seconds")
    bars = commands.add_parser("bars", parents=[parent], help="download trendbars")
    _history_options(bars)
    bars.add_argument(
        "--period", default="M1", help="M1 M2 M3 M4 M5 M10 M15 M30 H1 H4 H12 D1 W1 MN1"
    )
    ticks = commands.add_parser("ticks", parents=[parent], help="download ticks")
    _history_options(ticks)
    ticks.add_argument("--side", choices=("bid", "ask"), default="bid", help="quote side (bid)")


def _add_trading(commands: _Commands, parent: argparse.ArgumentParser) -> None:
    order = commands.add_parser("order", parents=[parent], help="place a market order")
    order.add_argument("side", choices=("buy", "sell"))
    order.add_argument("symbol")
    order.add_argument("volume", help="units of the base asset (with --lots: lots)")
    order.add_argument("--lots", action="store_true", help="VOLUME is in lots")
    order.add_argument("--sl", help="stop-loss price (sent relative to the current price)")
    order.add_argument("--tp", help="take-profit price (sent relative to the current price)")
    commands.add_parser("positions", parents=[parent], help="list open positions")
    close = commands.add_parser("close", parents=[parent], help="close a position")
    close.add_argument("position", type=int, metavar="POSITION")
    close.add_argument("--volume", help="units to close (default: all)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ctrader-twisted``."""
    parser = argparse.ArgumentParser(
        prog="ctrader-twisted", description="cTrader Open API tools (Twisted)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser("demo", help="run the whole product against a built-in sandbox")
    demo.add_argument("--quotes", type=float, default=3.0, help="seconds of live quotes (3)")
    demo.add_argument("--days", type=float, default=7.0, help="days of M1 bars to download (7)")
    sandbox = commands.add_parser(
        "sandbox", help="run a local sandbox server", add_help=False, prefix_chars="\0"
    )
    sandbox.add_argument("args", nargs=argparse.REMAINDER, help="sandbox options (see --help)")
    record = commands.add_parser(
        "record", help="record market data into a database", add_help=False, prefix_chars="\0"
    )
    record.add_argument("args", nargs=argparse.REMAINDER, help="recorder options (see --help)")
    _add_oauth(commands)
    parent = _connection_options()
    _add_market(commands, parent)
    _add_trading(commands, parent)
    return parser


def _add_oauth(commands: _Commands) -> None:
    from ._oauth_cli import add_auth_parser, add_token_parser

    add_auth_parser(commands)
    add_token_parser(commands)


def _now(reactor: CliReactor) -> datetime:
    return EPOCH + timedelta(seconds=reactor.seconds())


#: A command bound to its validated arguments, run once connected.
_Action = Callable[["Context"], Awaitable[int]]


async def _run_connected(reactor: CliReactor, options: argparse.Namespace, out: Output) -> int:
    from ._cli_session import Context, connect

    settings = resolve_settings(
        env=options.env,
        host=options.host,
        port=options.port,
        ca_file=options.ca_file,
        account=options.account,
        config=options.config,
    )
    action = _action(options, _now(reactor))
    client = await connect(
        reactor, settings, timeout=options.timeout, connect_timeout=options.connect_timeout
    )
    try:
        return await action(Context(reactor, client, settings, out, options.timeout))
    finally:
        await client.stopService()


def _action(options: argparse.Namespace, now: datetime) -> _Action:
    """Validate the command's own values before connecting (bad input: exit 2)."""
    from ._cli_market import run_symbols
    from ._cli_trading import run_accounts, run_close, run_positions

    command = options.command
    if command in ("bars", "ticks"):
        return _history_action(options, now)
    if command == "quotes":
        return _quotes_action(options)
    if command == "order":
        return _order_action(options)
    if command == "close":
        amount = (
            parse_decimal(options.volume, "--volume", MAX_UNITS)
            if options.volume is not None
            else None
        )
        return lambda ctx: run_close(ctx, options.position, amount)
    if command == "symbols":
        return lambda ctx: run_symbols(ctx, options.pattern)
    if command == "positions":
        return run_positions
    return run_accounts


def _history_action(options: argparse.Namespace, now: datetime) -> _Action:
    from ._cli_market import download_bars, download_ticks

    start, end = parse_time(options.start, now), parse_time(options.end, now)
    if end <= start:
        raise CliError("--from must be before --to")
    symbol, out_file, limit = options.symbol, options.out, options.limit
    try:
        if options.command == "bars":
            period = Period.parse(options.period)
            return lambda ctx: _ok(download_bars(ctx, symbol, period, start, end, out_file, limit))
        side = QuoteSide.parse(options.side)
    except ValueError as error:
        raise CliError(str(error)) from None
    return lambda ctx: _ok(download_ticks(ctx, symbol, side, start, end, out_file, limit))


async def _ok(count: Awaitable[int]) -> int:
    await count
    return int(ExitCode.OK)


def _quotes_action(options: argparse.Namespace) -> _Action:
    from ._cli_market import run_quotes

    return lambda ctx: run_quotes(ctx, options.symbols, options.count, options.duration)


def _order_action(options: argparse.Namespace) -> _Action:
    from ._cli_trading import run_order

    side = TradeSide.parse(options.side)
    amount = parse_decimal(options.volume, "volume", MAX_UNITS)
    sl = parse_decimal(options.sl, "--sl", MAX_PRICE) if options.sl is not None else None
    tp = parse_decimal(options.tp, "--tp", MAX_PRICE) if options.tp is not None else None
    return lambda ctx: run_order(
        ctx, side, options.symbol, amount, lots=options.lots, stop_loss=sl, take_profit=tp
    )


async def execute(reactor: CliReactor, options: argparse.Namespace, out: Output) -> int:
    """Run one parsed command; report any error in one line.

    :returns: the exit code (see :class:`~ctrader_twisted._cli_errors.ExitCode`).
    """
    try:
        validate_options(options)
        if options.command == "demo":
            from .demo import run_demo

            return await run_demo(reactor, out, quotes_seconds=options.quotes, days=options.days)
        return await _run_connected(reactor, options, out)
    except StdoutClosed:  # ``... | head``: the reader has all it wanted
        return int(ExitCode.STDOUT_CLOSED)
    except Exception as error:  # every failure becomes one line and an exit code
        code, message = describe_failure(error)
        out.error(message)
        return int(code)


def _sandbox(arguments: Sequence[str]) -> int:
    from .sandbox.tap import run_sandbox

    return run_sandbox(list(arguments))


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """Entry point of the ``ctrader-twisted`` console script.

    :returns: the exit code (also used by ``sys.exit`` in the console script); 141 when the
        reader of stdout closed it early (``ctrader-twisted bars ... --json | head -1``).
    """
    try:
        code = _main(argv, stdout)
    except BrokenPipeError:  # help or output of any subcommand, e.g. ``sandbox --help | head``
        code = int(ExitCode.STDOUT_CLOSED)
    if code == ExitCode.STDOUT_CLOSED and stdout is None:
        stdout_gone()
    return code


def _main(argv: Sequence[str] | None, stdout: TextIO | None) -> int:
    options = build_parser().parse_args(argv)
    handler = getattr(options, "handler", None)
    if handler is not None:  # auth / token run their own reactor
        return int(handler(options))
    if options.command == "sandbox":
        return _sandbox(options.args)
    if options.command == "record":
        from .recorder.tap import record_main

        return record_main(options.args)
    out = Output(
        json_mode=getattr(options, "json", False), stdout=stdout or sys.stdout, stderr=sys.stderr
    )
    return _react(options, out)


def _react(options: argparse.Namespace, out: Output) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    result: list[int] = []

    def finished(code: int) -> None:
        result.append(code)

    def interrupted() -> None:
        if not result:  # Ctrl-C: the normal way to end ``quotes``, an interruption otherwise
            ok = options.command == "quotes"
            result.append(int(ExitCode.OK if ok else ExitCode.INTERRUPTED))
            if not ok:
                out.interrupt()

    def run(reactor: object) -> Deferred[None]:
        cli_reactor = cast("CliReactor", reactor)
        cli_reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        return Deferred.fromCoroutine(execute(cli_reactor, options, out)).addCallback(finished)

    try:
        react(run)
    except SystemExit as exit_:
        if result:
            return result[0]
        return exit_.code if isinstance(exit_.code, int) else int(ExitCode.API_ERROR)
