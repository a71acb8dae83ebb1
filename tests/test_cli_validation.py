"""Bad numbers on the command line: one ``error:`` line and exit status 2, before anything starts.

In-process for every numeric option of every general subcommand (and ``auth``/``token``), and
in real processes for a representative set (the tracebacks the review saw came from there).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import _oauth_cli
from ctrader_twisted._cli_config import resolve_settings
from ctrader_twisted._cli_errors import CliError, ExitCode
from ctrader_twisted._cli_output import Output
from ctrader_twisted._cli_parse import MAX_PRICE, MAX_UNITS, parse_decimal, parse_time
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted._cli_validate import RULES, validate_options
from ctrader_twisted.cli import build_parser, execute

reactor: CliReactor = global_reactor  # type: ignore[assignment]
NOW = datetime(2024, 5, 10, 12, 0, tzinfo=timezone.utc)
CLI = [sys.executable, "-c", "import sys; from ctrader_twisted.cli import main; sys.exit(main())"]

#: Each general subcommand with the positional arguments it needs.
COMMANDS: dict[str, list[str]] = {
    "demo": [],
    "accounts": [],
    "symbols": [],
    "quotes": ["EURUSD"],
    "bars": ["EURUSD"],
    "ticks": ["EURUSD"],
    "order": ["buy", "EURUSD", "1000"],
    "positions": [],
    "close": ["7"],
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = parser._subparsers._group_actions  # type: ignore[union-attr]
    return dict(actions[0].choices)  # type: ignore[arg-type]


def numeric_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options (and positionals) of ``parser`` that argparse turns into numbers."""
    return {a.dest: a for a in parser._actions if a.type in (int, float)}


def bad_values(dest: str) -> list[str]:
    rule = RULES[dest]
    too_high = str(int(rule.high) + 1) if rule.high < 2**63 else str(2**64)
    values = ["-1", too_high]
    if isinstance(rule.low, int) and not rule.low_included:
        values.append(str(rule.low))
    if not rule.low_included or rule.low > 0:
        values.append("0")
    return values


class EveryNumericOptionTests(TestCase):
    """Walk the parser: every numeric option has a rule, and breaking it exits 2 at once."""

    timeout = 60

    def setUp(self) -> None:
        home = Path(self.mktemp())
        home.mkdir()
        # Nothing to connect to: a command that got past validation would fail with 4
        # (missing CA file), never 2.
        environ = {"HOME": str(home), "CTRADER_CONFIG": str(home / "none.ini")}
        self.patch(os, "environ", environ)

    def test_every_numeric_option_has_a_rule(self) -> None:
        commands = subcommands(build_parser())
        seen = set()
        for name in [*COMMANDS, "auth", "token"]:
            for dest, action in numeric_options(commands[name]).items():
                seen.add(dest)
                self.assertIn(dest, RULES, f"{name} {action.option_strings or dest}")
        self.assertEqual(seen, set(RULES))
        self.assertEqual(set(commands) - set(COMMANDS), {"auth", "token", "sandbox", "record"})

    async def run_cli(self, argv: list[str]) -> tuple[int, str, str]:
        options = build_parser().parse_args(argv)
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(json_mode=False, stdout=stdout, stderr=stderr)
        code = await execute(reactor, options, out)
        return code, stdout.getvalue(), stderr.getvalue()

    async def test_general_commands(self) -> None:
        commands = subcommands(build_parser())
        tried = 0
        for name, positionals in COMMANDS.items():
            where = [] if name == "demo" else ["--env", "sandbox", "--ca-file", "/nonexistent"]
            for dest, action in numeric_options(commands[name]).items():
                special = ["nan", "inf", "-inf"] if action.type is float else []
                for value in [*special, *bad_values(dest)]:
                    if action.option_strings:
                        option = f"{action.option_strings[0]}={value}"
                        argv = [name, *positionals, *where, option]
                    else:  # the positional POSITION of close
                        argv = [name, *where, "--", value]
                    code, out, err = await self.run_cli(argv)
                    self.assertEqual(code, ExitCode.USAGE, (argv, err))
                    self.assertEqual(out, "", argv)
                    self.assertEqual(len(err.splitlines()), 1, (argv, err))
                    self.assertTrue(err.startswith("error: "), (argv, err))
                    tried += 1
        self.assertGreater(tried, 60)

    async def test_negative_integers(self) -> None:
        for argv in (
            ["bars", "EURUSD", "--limit=-1"],
            ["quotes", "EURUSD", "--count=-3"],
            ["positions", "--port=-5"],
            ["positions", "--account=-5"],
        ):
            code, _, err = await self.run_cli([*argv, "--env", "sandbox"])
            self.assertEqual(code, ExitCode.USAGE, (argv, err))
            self.assertIn("must be at least", err)

    async def test_values_and_times(self) -> None:
        for argv, message in (
            (["order", "buy", "EURUSD", "1e30"], "volume must be at most"),
            (["order", "buy", "EURUSD", "1000", "--sl", "1e300"], "--sl must be at most"),
            (["order", "buy", "EURUSD", "1000", "--tp", "nan"], "--tp must be a number"),
            (["order", "sell", "EURUSD", "inf"], "volume must be a number"),
            (["close", "7", "--volume", "1e30"], "--volume must be at most"),
            (["close", "7", "--volume", ""], "--volume must be a number"),
            (["bars", "EURUSD", "--from", "99999999999d"], "too long"),
            (["bars", "EURUSD", "--from", "3000w"], "before 1970-01-01"),
            (["ticks", "EURUSD", "--from", "0001-01-01"], "before 1970-01-01"),
            (["ticks", "EURUSD", "--to", "9999-12-31T23:59-01:00"], "bad time"),
        ):
            code, _, err = await self.run_cli([*argv, "--env", "sandbox"])
            self.assertEqual(code, ExitCode.USAGE, (argv, err))
            self.assertIn(message, err, argv)
            self.assertEqual(len(err.splitlines()), 1, err)

    async def test_values_in_range_pass(self) -> None:
        """The limits are not too tight: good values get as far as connecting (exit 4)."""
        for argv in (
            ["quotes", "EURUSD", "--duration", "0.5", "--count", "1", "--timeout", "86400"],
            ["bars", "EURUSD", "--from", "1970-01-01", "--limit", "0", "--connect-timeout", "0.1"],
            ["close", "9223372036854775807", "--port", "65535", "--account", "1"],
        ):
            code, _, err = await self.run_cli([*argv, "--env", "sandbox", "--ca-file", "/no/ca"])
            self.assertEqual(code, ExitCode.CONNECTION, (argv, err))

    async def test_unusable_files(self) -> None:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        not_pem = folder / "ca.pem"
        not_pem.write_text("not a certificate\n")
        for argv, message in (
            (["accounts", "--config", str(folder)], f"cannot read config file {folder}: "),
            (["accounts", "--ca-file", str(folder)], f"cannot read CA file {folder}: "),
            (["accounts", "--ca-file", str(not_pem)], f"CA file {not_pem} holds no PEM"),
        ):
            code, _, err = await self.run_cli([*argv, "--env", "sandbox"])
            self.assertEqual(code, ExitCode.USAGE, (argv, err))
            self.assertTrue(err.startswith(f"error: {message}"), err)

    async def test_auth_and_token(self) -> None:
        top = argparse.ArgumentParser()
        sub = top.add_subparsers(dest="command")
        _oauth_cli.add_auth_parser(sub)
        _oauth_cli.add_token_parser(sub)
        credentials = ["--client-id=a", "--client-secret=b", "--token-file=/nonexistent/t.json"]
        for argv in (
            ["auth", "--no-browser", "--wait", "nan"],
            ["auth", "--no-browser", "--wait", "0"],
            ["auth", "--no-browser", "--timeout", "-1"],
            ["token", "show", "--timeout", "inf"],
            ["token", "refresh", "--timeout", "1e9"],
            ["auth", "--no-browser", "--redirect-uri", "http://127.0.0.1:99999/callback"],
            ["auth", "--no-browser", "--redirect-uri", "http://127.0.0.1:port/callback"],
        ):
            options = top.parse_args([*argv, *credentials])
            flow = _oauth_cli.auth_flow if argv[0] == "auth" else _oauth_cli.token_flow
            out, err = io.StringIO(), io.StringIO()
            code = await flow(reactor, options, out, err)  # type: ignore[arg-type]
            self.assertEqual(code, ExitCode.USAGE, (argv, err.getvalue()))
            self.assertEqual(out.getvalue(), "")
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())


class ParsingLimitsTests(SynchronousTestCase):
    def test_times(self) -> None:
        self.assertEqual(parse_time("1970-01-01", NOW), datetime(1970, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(parse_time("2800w", NOW), NOW - timedelta(weeks=2800))
        for bad in ("99999999999d", "9" * 40 + "s", "2900w", "1969-12-31T23:59Z", "0001-01-01"):
            with self.assertRaises(CliError, msg=bad):
                parse_time(bad, NOW)

    def test_decimals(self) -> None:
        self.assertEqual(parse_decimal(str(MAX_UNITS), "volume", MAX_UNITS), MAX_UNITS)
        for bad in ("1e30", "92233720368547758.08"):
            with self.assertRaises(CliError):
                parse_decimal(bad, "volume", MAX_UNITS)
        with self.assertRaises(CliError):
            parse_decimal("1e300", "--sl", MAX_PRICE)
        for bad in ("nan", "inf", "-0", "-1e-9"):
            with self.assertRaises(CliError, msg=bad):
                parse_decimal(bad, "--tp", MAX_PRICE)
        self.assertEqual(parse_decimal("1.5", "--tp", MAX_PRICE), Decimal("1.5"))

    def test_config_file_numbers(self) -> None:
        path = Path(self.mktemp())
        for text in ("[demo]\nport = 99999\n", "[demo]\naccount_id = 0\n", "[demo]\nport = -1\n"):
            path.write_text(text)
            with self.assertRaises(CliError) as caught:
                resolve_settings(config=str(path), environ={})
            self.assertEqual(caught.exception.code, ExitCode.USAGE)
        with self.assertRaises(CliError):
            resolve_settings(environ={"CTRADER_ACCOUNT_ID": "-3", "CTRADER_CONFIG": "/none"})

    def test_validate_ignores_unset_options(self) -> None:
        validate_options(argparse.Namespace(timeout=None, port=None, account=None, count=None))
        with self.assertRaises(CliError):
            validate_options(argparse.Namespace(timeout=float("nan")))
        validate_options(argparse.Namespace(json=True))  # booleans are not numbers here


class RealProcessTests(SynchronousTestCase):
    """The cases the review ran, as real ``ctrader-twisted`` processes (started together)."""

    def test_one_line_and_status_2(self) -> None:
        home = Path(self.mktemp()).absolute()
        home.mkdir()
        token_file = home / "token.json"
        token_file.write_bytes(b"\xff\xfe{\x00}")
        env = {
            **os.environ,
            "HOME": str(home),
            "CTRADER_CONFIG": str(home / "none.ini"),
            "XDG_CONFIG_HOME": str(home),
        }
        cases = [
            ["token", "show", f"--token-file={token_file}"],
            ["accounts", "--env", "sandbox", "--timeout", "nan"],
            ["order", "buy", "EURUSD", "1e30", "--env", "sandbox"],
            ["order", "buy", "EURUSD", "1000", "--sl", "1e300", "--env", "sandbox"],
            ["bars", "EURUSD", "--from", "99999999999d", "--env", "sandbox"],
            ["quotes", "EURUSD", "--duration", "nan", "--env", "sandbox"],
            ["positions", "--env", "sandbox", "--port", "99999"],
            ["auth", "--wait", "nan", "--no-browser", "--client-id=a", "--client-secret=b"],
        ]
        running = [
            (case, subprocess.Popen(  # noqa: S603 - our own console script
                [*CLI, *case], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=home, text=True,
            ))
            for case in cases
        ]  # fmt: skip
        errors = []
        for case, process in running:
            out, err = process.communicate(timeout=60)
            self.assertEqual(process.returncode, 2, (case, err))
            self.assertEqual(out, "", case)
            self.assertEqual(len(err.splitlines()), 1, (case, err))
            self.assertTrue(err.startswith("error: "), (case, err))
            errors.append(err)
        self.assertEqual(errors[0], f"error: {token_file} is not UTF-8 text\n")
        self.assertIn("--timeout must be more than 0", errors[1])
        self.assertIn("--port must be at least 1 and at most 65535, not 99999", errors[6])
