"""Every ``ctrader-twisted`` subcommand against a sandbox over loopback TLS (in-process)."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import timedelta
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import TestCase

from ctrader_twisted import _cli_session
from ctrader_twisted._cli_output import Output
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted.cli import build_parser, execute
from ctrader_twisted.models import EPOCH
from ctrader_twisted.sandbox import RunningSandbox, SandboxConfig, start_sandbox

reactor: CliReactor = global_reactor  # type: ignore[assignment]


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


class CliAgainstSandboxTests(TestCase):
    timeout = 30

    async def _sandbox(self) -> RunningSandbox:
        config = SandboxConfig(always_open=True, tick_interval=0.05)
        running = await start_sandbox(reactor, config, port=0, state_dir=self.mktemp())
        self.addCleanup(running.stop)
        return running

    def setUp(self) -> None:
        home = Path(self.mktemp())
        home.mkdir()
        self.config = home / "config.ini"
        self.patch(os, "environ", {"CTRADER_CONFIG": str(self.config), "HOME": str(home)})

    async def run_cli(self, running: RunningSandbox | None, *args: str) -> Result:
        where = ["--env", "sandbox", "--host", "localhost"]
        if running is not None:
            where += ["--port", str(running.port), "--ca-file", str(running.ca_file)]
        options = build_parser().parse_args([args[0], *where, *args[1:]])
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(json_mode=options.json, stdout=stdout, stderr=stderr)
        code = await execute(reactor, options, out)
        return Result(code, stdout.getvalue(), stderr.getvalue())

    async def test_accounts(self) -> None:
        running = await self._sandbox()
        table = await self.run_cli(running, "accounts")
        self.assertEqual(table.code, 0, table.stderr)
        self.assertIn("5000001", table.stdout)
        self.assertIn("5000002", table.stdout)
        listed = await self.run_cli(running, "accounts", "--json")
        records = listed.records()
        self.assertEqual([r["account_id"] for r in records], [5000001, 5000002])
        self.assertEqual({r["type"] for r in records}, {"account"})
        self.assertEqual(records[0]["live"], False)

    async def test_symbols(self) -> None:
        running = await self._sandbox()
        result = await self.run_cli(running, "symbols", "eur", "--json")
        names = {r["name"] for r in result.records()}
        self.assertIn("EURUSD", names)
        self.assertNotIn("GBPUSD", names)
        table = await self.run_cli(running, "symbols", "--account", "5000002")
        self.assertIn("XAUUSD", table.stdout)
        self.assertIn("5000002", table.stdout)
        missing = await self.run_cli(running, "symbols", "ZZZ")
        self.assertEqual(missing.code, 5)
        self.assertEqual(missing.stderr, "error: no symbol matches 'ZZZ'\n")

    async def test_quotes(self) -> None:
        running = await self._sandbox()
        result = await self.run_cli(running, "quotes", "EURUSD", "GBPUSD", "--count", "4", "--json")
        self.assertEqual(result.code, 0, result.stderr)
        records = result.records()
        self.assertEqual(len(records), 4)
        self.assertTrue({r["symbol"] for r in records} <= {"EURUSD", "GBPUSD"})
        self.assertTrue(all(r["type"] == "quote" and r["time"] for r in records))
        people = await self.run_cli(running, "quotes", "EURUSD", "--duration", "0.3")
        self.assertEqual(people.code, 0)
        self.assertIn("EURUSD", people.stdout)
        unknown = await self.run_cli(running, "quotes", "NOPE")
        self.assertEqual(unknown.code, 5)
        self.assertIn("unknown symbol 'NOPE'", unknown.stderr)

    def _range(self, hours: int) -> tuple[str, str]:
        now = EPOCH + timedelta(seconds=reactor.seconds())
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
        end = start + timedelta(hours=hours)
        return start.isoformat(), end.isoformat()

    async def test_bars(self) -> None:
        running = await self._sandbox()
        start, end = self._range(5)
        args = ("--period", "M5", "--from", start, "--to", end)
        result = await self.run_cli(running, "bars", "EURUSD", *args, "--json")
        records = result.records()
        self.assertEqual(len(records), 60)
        self.assertEqual(records[0]["time"], start.replace("+00:00", "Z"))
        self.assertEqual(records[0]["period"], "M5")
        self.assertIsInstance(records[0]["open"], str)
        out_file = Path(self.mktemp())
        saved = await self.run_cli(running, "bars", "EURUSD", *args, "--out", str(out_file))
        self.assertEqual(saved.code, 0, saved.stderr)
        with out_file.open() as handle:
            rows = list(csv.reader(handle))
        self.assertEqual(rows[0], ["time", "open", "high", "low", "close", "volume"])
        self.assertEqual(len(rows), 61)
        self.assertIn(f"60 bars written to {out_file}", saved.stdout)
        table = await self.run_cli(running, "bars", "EURUSD", *args, "--limit", "3")
        self.assertIn("60 bars (showing the last 3", table.stdout)

    async def test_bars_table_after_the_progress_bar(self) -> None:
        """Not a terminal, stdout and stderr in one file (``> log 2>&1``): the progress bar's
        last line comes before the table, not after it."""
        running = await self._sandbox()
        start, end = self._range(5)
        where = ["--port", str(running.port), "--ca-file", str(running.ca_file)]
        what = ["--period", "M5", "--from", start, "--to", end, "--limit", "2"]
        argv = ["bars", "EURUSD", "--env", "sandbox", "--host", "localhost", *where, *what]
        options = build_parser().parse_args(argv)
        both = io.StringIO()
        code = await execute(reactor, options, Output(json_mode=False, stdout=both, stderr=both))
        self.assertEqual(code, 0, both.getvalue())
        text = both.getvalue()
        bar, table = text.find("EURUSD M5 bars"), text.find("60 bars (showing the last 2")
        self.assertNotEqual(bar, -1, text)
        self.assertNotEqual(table, -1, text)
        self.assertLess(bar, table, text)
        self.assertNotIn("EURUSD M5 bars", text[table:])

    async def test_ticks(self) -> None:
        running = await self._sandbox()
        start, _ = self._range(1)
        end = start.replace(":00:00+", ":00:03+")
        result = await self.run_cli(
            running, "ticks", "EURUSD", "--side", "ask", "--from", start, "--to", end, "--json"
        )
        records = result.records()
        self.assertEqual(len(records), 60)  # 3 s of ticks every 50 ms
        self.assertEqual({r["side"] for r in records}, {"ASK"})

    async def test_order_positions_close(self) -> None:
        running = await self._sandbox()
        order = await self.run_cli(running, "order", "buy", "EURUSD", "0.1", "--lots", "--json")
        self.assertEqual(order.code, 0, order.stderr)
        (fill,) = order.records()
        self.assertEqual((fill["type"], fill["side"], fill["units"]), ("fill", "BUY", "10000"))
        positions = await self.run_cli(running, "positions", "--json")
        ids = [r["position_id"] for r in positions.records()]
        self.assertIn(fill["position_id"], ids)
        closed = await self.run_cli(running, "close", str(fill["position_id"]), "--json")
        self.assertEqual(closed.code, 0, closed.stderr)
        (closing,) = closed.records()
        self.assertEqual((closing["side"], closing["closing"]), ("SELL", True))
        self.assertIsNotNone(closing["gross_profit"])
        after = await self.run_cli(running, "positions", "--json")
        self.assertNotIn(fill["position_id"], [r["position_id"] for r in after.records()])
        again = await self.run_cli(running, "close", str(fill["position_id"]))
        self.assertEqual(again.code, 5)

    async def test_order_with_protection(self) -> None:
        running = await self._sandbox()
        quotes = await self.run_cli(running, "quotes", "EURUSD", "--count", "1", "--json")
        ask = float(str(quotes.records()[0]["ask"]))
        sl, tp = f"{ask - 0.005:.5f}", f"{ask + 0.005:.5f}"
        order = await self.run_cli(
            running, "order", "buy", "EURUSD", "10000", "--sl", sl, "--tp", tp, "--json"
        )
        self.assertEqual(order.code, 0, order.stderr)
        (position,) = (await self.run_cli(running, "positions", "--json")).records()
        # The stops travel as distances from the fill, and the price may move between the
        # quote and the fill.  (trial's assertAlmostEqual ignores ``delta``: compare by hand.)
        self.assertLess(abs(float(str(position["stop_loss"])) - (ask - 0.005)), 0.002)
        self.assertLess(abs(float(str(position["take_profit"])) - (ask + 0.005)), 0.002)
        wrong = await self.run_cli(running, "order", "sell", "EURUSD", "10000", "--sl", sl)
        self.assertEqual(wrong.code, 2)
        self.assertIn("stop loss must be above the entry price", wrong.stderr)

    async def test_bad_volumes(self) -> None:
        running = await self._sandbox()
        tiny = await self.run_cli(running, "order", "buy", "EURUSD", "0.001")
        self.assertEqual(tiny.code, 2)
        self.assertIn("bad volume for EURUSD", tiny.stderr)
        one = await self.run_cli(running, "order", "buy", "EURUSD", "1")
        self.assertEqual(one.code, 2)
        self.assertEqual(
            one.stderr,
            "error: bad volume for EURUSD: 1 unit is below the minimum of 1000 units (0.01 lots)\n",
        )
        self.assertEqual((await self.run_cli(running, "order", "buy", "EURUSD", "-1")).code, 2)

    async def test_bad_credentials(self) -> None:
        running = await self._sandbox()
        self.config.write_text("[sandbox]\nclient_secret = wrong-secret\n")
        refused = await self.run_cli(running, "accounts")
        self.assertEqual(refused.code, 3)
        self.assertTrue(refused.stderr.startswith("error: authentication failed"))
        self.assertNotIn("wrong-secret", refused.stderr)
        self.config.write_text("[sandbox]\naccess_token = bad-token\n")
        token = await self.run_cli(running, "positions")
        self.assertEqual(token.code, 3)
        self.assertNotIn("bad-token", token.stderr)

    async def test_connection_refused(self) -> None:
        running = await self._sandbox()
        port = running.port
        await running.stop()
        self.patch(_cli_session, "CONNECT_ATTEMPTS", 1)
        options = ["--port", str(port), "--ca-file", str(running.ca_file)]
        result = await self.run_cli(None, "accounts", *options)
        self.assertEqual(result.code, 4)
        self.assertIn(f"cannot connect to localhost:{port}", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1)

    async def test_missing_ca_file(self) -> None:
        result = await self.run_cli(None, "accounts", "--ca-file", "/nonexistent/ca.pem")
        self.assertEqual(result.code, 4)
        self.assertIn("does not exist", result.stderr)

    async def test_bad_input_before_connecting(self) -> None:
        for args in (
            ("bars", "EURUSD", "--from", "yesterday"),
            ("bars", "EURUSD", "--period", "M7"),
            ("bars", "EURUSD", "--from", "now", "--to", "1d"),
            ("quotes", "EURUSD", "--count", "0"),
        ):
            result = await self.run_cli(None, *args)
            self.assertEqual(result.code, 2, args)
            self.assertTrue(result.stderr.startswith("error: "), result.stderr)
