"""CLI pieces without a server: parsing, settings, exit codes, output."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted._cli_config import resolve_settings
from ctrader_twisted._cli_errors import CliError, ExitCode, describe_failure
from ctrader_twisted._cli_output import Column, Output
from ctrader_twisted._cli_parse import parse_decimal, parse_duration, parse_time
from ctrader_twisted._cli_trading import order_volume
from ctrader_twisted.cli import build_parser, main
from ctrader_twisted.errors import (
    AccountAuthError,
    ApplicationAuthError,
    ConnectionLost,
    OpenApiError,
    OrderError,
    RequestTimeout,
)
from ctrader_twisted.models import SymbolDetails, TradeSide, UnknownSymbol
from ctrader_twisted.tls import DEMO_HOST, LIVE_HOST

UTC = timezone.utc
NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


class ParseTests(SynchronousTestCase):
    def test_times(self) -> None:
        self.assertEqual(parse_time("now", NOW), NOW)
        self.assertEqual(parse_time("7d", NOW), NOW - timedelta(days=7))
        self.assertEqual(parse_time("-90m", NOW), NOW - timedelta(minutes=90))
        self.assertEqual(parse_time("2024-05-01", NOW), datetime(2024, 5, 1, tzinfo=UTC))
        self.assertEqual(
            parse_time("2024-05-01T12:30Z", NOW), datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
        )
        self.assertEqual(
            parse_time("2024-05-01T14:30+02:00", NOW), datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
        )
        for bad in ("yesterday", "7x", ""):
            with self.assertRaises(CliError):
                parse_time(bad, NOW)

    def test_durations_and_numbers(self) -> None:
        self.assertEqual(parse_duration("2w"), timedelta(weeks=2))
        self.assertEqual(parse_duration("1.5h"), timedelta(minutes=90))
        self.assertEqual(parse_decimal("0.01", "volume"), Decimal("0.01"))
        for bad in ("0", "-1", "abc"):
            with self.assertRaises(CliError):
                parse_decimal(bad, "volume")


class SettingsTests(SynchronousTestCase):
    def config(self, text: str) -> str:
        path = Path(self.mktemp())
        path.write_text(text)
        return str(path)

    def test_demo_from_environment(self) -> None:
        environ = {
            "CTRADER_CLIENT_ID": "id",
            "CTRADER_CLIENT_SECRET": "secret",
            "CTRADER_ACCESS_TOKEN": "token",
            "CTRADER_ACCOUNT_ID": "42",
            "CTRADER_CONFIG": "/nonexistent/config.ini",
        }
        settings = resolve_settings(environ=environ)
        self.assertEqual((settings.env, settings.host, settings.port), ("demo", DEMO_HOST, 5035))
        self.assertEqual((settings.client_id, settings.account_id), ("id", 42))
        self.assertIsNone(settings.ca_file)
        self.assertNotIn("secret", repr(settings))
        self.assertNotIn("token", repr(settings))

    def test_precedence(self) -> None:
        path = self.config(
            "[default]\nenv = live\nclient_id = file-id\n[live]\naccount_id = 7\nport = 6000\n"
        )
        environ = {"CTRADER_CLIENT_ID": "env-id"}
        settings = resolve_settings(config=path, environ=environ)
        self.assertEqual((settings.env, settings.host, settings.port), ("live", LIVE_HOST, 6000))
        self.assertEqual((settings.client_id, settings.account_id), ("env-id", 7))
        forced = resolve_settings(config=path, environ=environ, port=1, account=3, env="demo")
        self.assertEqual((forced.port, forced.account_id, forced.host), (1, 3, DEMO_HOST))

    def test_sandbox_defaults_ignore_real_credentials(self) -> None:
        environ = {"CTRADER_CLIENT_ID": "real", "CTRADER_CONFIG": "/nonexistent"}
        settings = resolve_settings(env="sandbox", environ=environ)
        self.assertEqual(settings.client_id, "sandbox-client-id")
        self.assertEqual(settings.host, "localhost")
        assert settings.ca_file is not None
        self.assertEqual(settings.ca_file.name, "sandbox-ca.pem")

    def test_errors(self) -> None:
        with self.assertRaises(CliError):
            resolve_settings(env="prod", environ={})
        with self.assertRaises(CliError):
            resolve_settings(config="/nonexistent/file.ini", environ={})
        with self.assertRaises(CliError):
            resolve_settings(config=self.config("[demo]\naccount_id = x\n"), environ={})
        empty = resolve_settings(environ={"CTRADER_CONFIG": "/nonexistent"})
        with self.assertRaises(CliError) as caught:
            empty.require_app_credentials()
        self.assertEqual(caught.exception.code, ExitCode.AUTH)


class ExitCodeTests(SynchronousTestCase):
    def test_mapping(self) -> None:
        cases = [
            (CliError("x", ExitCode.NOT_FOUND), ExitCode.NOT_FOUND),
            (UnknownSymbol("X"), ExitCode.NOT_FOUND),
            (ApplicationAuthError("CH_CLIENT_AUTH_FAILURE"), ExitCode.AUTH),
            (AccountAuthError("CH_ACCESS_TOKEN_INVALID"), ExitCode.AUTH),
            (OrderError("NOT_ENOUGH_MONEY"), ExitCode.ORDER_REJECTED),
            (OpenApiError("INCORRECT_BOUNDARIES"), ExitCode.API_ERROR),
            (RequestTimeout("ProtoOAVersionReq", 10, sent=True), ExitCode.CONNECTION),
            (ConnectionLost(None), ExitCode.CONNECTION),
            (ValueError("bad"), ExitCode.USAGE),
            (RuntimeError("boom"), ExitCode.API_ERROR),
        ]
        for error, code in cases:
            self.assertEqual(describe_failure(error)[0], code, error)
        self.assertEqual(
            describe_failure(ApplicationAuthError("CH_CLIENT_AUTH_FAILURE"))[1],
            "authentication failed: CH_CLIENT_AUTH_FAILURE",
        )
        self.assertEqual(describe_failure(RuntimeError("a\nb"))[1], "RuntimeError: a b")


class OrderVolumeTests(SynchronousTestCase):
    """Volume errors speak units and lots, never the protocol's hundredths of a unit."""

    EURUSD = SymbolDetails(
        symbol_id=1,
        name="EURUSD",
        digits=5,
        pip_position=4,
        lot_size=10_000_000,
        min_volume=100_000,
        max_volume=1_000_000_000,
        step_volume=100_000,
    )

    def message(self, amount: str, lots: bool = False) -> str:
        with self.assertRaises(CliError) as caught:
            order_volume(self.EURUSD, Decimal(amount), lots)
        self.assertEqual(caught.exception.code, ExitCode.USAGE)
        return str(caught.exception)

    def test_accepted(self) -> None:
        self.assertEqual(order_volume(self.EURUSD, Decimal("10000"), False), 1_000_000)
        self.assertEqual(order_volume(self.EURUSD, Decimal("0.1"), True), 1_000_000)

    def test_messages(self) -> None:
        self.assertEqual(
            self.message("1"),
            "bad volume for EURUSD: 1 unit is below the minimum of 1000 units (0.01 lots)",
        )
        self.assertEqual(
            self.message("0.001", lots=True),
            "bad volume for EURUSD: 0.001 lots (100 units) is below the minimum"
            " of 1000 units (0.01 lots)",
        )
        self.assertEqual(
            self.message("20000000"),
            "bad volume for EURUSD: 20000000 units is above the maximum"
            " of 10000000 units (100 lots)",
        )
        self.assertEqual(
            self.message("1500"),
            "bad volume for EURUSD: 1500 units is not a multiple of the step"
            " of 1000 units (0.01 lots)",
        )
        self.assertIn("0.015 lots (1500 units) is not a multiple", self.message("0.015", True))
        self.assertIn("0.001 units is not representable", self.message("0.001"))  # below 0.01
        bare = SymbolDetails(symbol_id=9, name="ODD", digits=2, pip_position=1, min_volume=200)
        with self.assertRaises(CliError) as caught:
            order_volume(bare, Decimal("1"), False)
        self.assertEqual(
            str(caught.exception), "bad volume for ODD: 1 unit is below the minimum of 2 units"
        )


class OutputTests(SynchronousTestCase):
    def test_json_lines(self) -> None:
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(json_mode=True, stdout=stdout, stderr=stderr)
        rows = [{"price": Decimal("1.10000"), "time": NOW, "side": TradeSide.BUY, "n": None}]
        out.table("t", [Column("price", "Price")], rows, kind="x")
        out.note("to stderr")
        out.line("ignored", {"a": Decimal("1E+1")})
        first, second = (json.loads(line) for line in stdout.getvalue().splitlines())
        self.assertEqual(
            first,
            {
                "type": "x",
                "price": "1.10000",
                "time": "2024-05-10T12:00:00Z",
                "side": "BUY",
                "n": None,
            },
        )
        self.assertEqual(second, {"a": "10"})
        self.assertIn("to stderr", stderr.getvalue())

    def test_table(self) -> None:
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(json_mode=False, stdout=stdout, stderr=stderr)
        out.table(
            "Title",
            [Column("a", "A"), Column("b", "B", numeric=True)],
            [{"a": True, "b": Decimal("2E+1")}],
        )
        out.error("bad thing")
        self.assertIn("Title", stdout.getvalue())
        self.assertIn("20", stdout.getvalue())
        self.assertIn("yes", stdout.getvalue())
        self.assertEqual(stderr.getvalue(), "error: bad thing\n")


class ParserTests(SynchronousTestCase):
    def test_every_subcommand_parses(self) -> None:
        parser = build_parser()
        for argv in (
            ["demo"],
            ["sandbox", "--port", "5036"],
            ["accounts", "--json"],
            ["symbols", "EUR"],
            ["quotes", "EURUSD", "GBPUSD", "--count", "3"],
            ["bars", "EURUSD", "--period", "H1", "--from", "7d", "--to", "now", "--out", "x.csv"],
            ["ticks", "EURUSD", "--side", "ask"],
            ["order", "buy", "EURUSD", "0.01", "--lots", "--sl", "1.0", "--tp", "1.2"],
            ["positions", "--env", "sandbox"],
            ["close", "12", "--volume", "1000"],
            ["token", "show"],
        ):
            options = parser.parse_args(argv)
            self.assertEqual(options.command, argv[0])
        self.assertEqual(parser.parse_args(["sandbox", "--port", "1"]).args, ["--port", "1"])

    def test_every_subcommand_in_the_docs_table(self) -> None:
        doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
        table = doc.split("| Command |", 1)[1].split("\n\n", 1)[0]
        documented = {line.split("`")[1].split()[0] for line in table.splitlines()[2:]}
        actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
        commands = set(actions[0].choices)  # type: ignore[arg-type]
        self.assertEqual(documented, commands)
        self.assertIn("[recorder.md](recorder.md)", table)

    def test_connection_help_names_the_config_file(self) -> None:
        parser = build_parser()
        actions = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        accounts = actions["accounts"]  # type: ignore[index]
        helps = {a.dest: a.help or "" for a in accounts._actions}
        for dest in ("env", "account", "config"):
            self.assertIn("config", helps[dest].replace("$CTRADER_CONFIG", ""), dest)

    def test_usage_errors_exit_2(self) -> None:
        for argv in (["nope"], ["order", "hold", "EURUSD", "1"], [], ["close", "x"]):
            with self.assertRaises(SystemExit) as caught:
                main(argv)
            self.assertEqual(caught.exception.code, 2)
