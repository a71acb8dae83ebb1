"""What docs/cli.md and docs/oauth.md promise, checked against the commands.

Exit statuses (an unknown account is 5, an unusable token file 2), time formats written and
accepted, the ``ticks`` table on an 80-column terminal, the limits of numeric options, and where
``TokenFileError`` lives.
"""

from __future__ import annotations

import io
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted._cli_errors import ExitCode, describe_failure
from ctrader_twisted._cli_output import Output, json_value
from ctrader_twisted._cli_parse import parse_time
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted._cli_validate import RULES
from ctrader_twisted.cli import build_parser, execute
from ctrader_twisted.errors import AccountAuthError
from ctrader_twisted.models import EPOCH
from ctrader_twisted.sandbox import RunningSandbox, SandboxConfig, start_sandbox

reactor: CliReactor = global_reactor  # type: ignore[assignment]
DOCS = Path(__file__).resolve().parent.parent / "docs"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Terminal(io.StringIO):
    """What Rich sees as a terminal (its width comes from ``$COLUMNS``)."""

    def isatty(self) -> bool:
        return True


class AgainstSandboxTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        home = Path(self.mktemp()).absolute()
        home.mkdir()
        self.home = home
        self.environ = {"HOME": str(home), "CTRADER_CONFIG": str(home / "none.ini")}
        self.patch(os, "environ", self.environ)

    async def sandbox(self) -> RunningSandbox:
        config = SandboxConfig(always_open=True, tick_interval=0.05)
        running = await start_sandbox(reactor, config, port=0, state_dir=self.mktemp())
        self.addCleanup(running.stop)
        return running

    async def run_cli(
        self, running: RunningSandbox | None, *args: str, stdout: io.StringIO | None = None
    ) -> tuple[int, str, str]:
        where = ["--env", "sandbox", "--host", "localhost"]
        if running is not None:
            where += ["--port", str(running.port), "--ca-file", str(running.ca_file)]
        options = build_parser().parse_args([args[0], *where, *args[1:]])
        stdout = io.StringIO() if stdout is None else stdout
        stderr = io.StringIO()
        out = Output(json_mode=options.json, stdout=stdout, stderr=stderr)
        code = await execute(reactor, options, out)
        return code, stdout.getvalue(), stderr.getvalue()

    async def test_unknown_account_is_not_found(self) -> None:
        """docs/cli.md: 5 is "Not found: unknown symbol, position or account"."""
        running = await self.sandbox()
        for command in (["positions"], ["symbols"], ["order", "buy", "EURUSD", "1000"]):
            code, _, err = await self.run_cli(running, *command, "--account", "123")
            self.assertEqual(code, ExitCode.NOT_FOUND, err)
            self.assertTrue(err.startswith("error: account 123 not found"), err)
            self.assertNotIn("authentication failed", err)
        code, _, _ = await self.run_cli(running, "positions", "--account", "5000002")
        self.assertEqual(code, ExitCode.OK)

    async def test_unusable_token_file_is_a_usage_error(self) -> None:
        """docs/cli.md: 2 covers an unreadable token file (it was silently ignored, then 3)."""
        token_file = self.home / "token.json"
        token_file.write_bytes(b"\xff\xfe not a token")
        self.environ.update(CTRADER_TOKEN_FILE=str(token_file), CTRADER_CLIENT_ID="id")
        options = build_parser().parse_args(["positions", "--env", "demo"])
        stderr = io.StringIO()
        code = await execute(
            reactor, options, Output(json_mode=False, stdout=io.StringIO(), stderr=stderr)
        )
        self.assertEqual(code, ExitCode.USAGE)
        self.assertEqual(
            stderr.getvalue(),
            f"error: cannot use the token file: {token_file} is not UTF-8 text\n",
        )

    async def test_ticks_table_on_an_80_column_terminal(self) -> None:
        running = await self.sandbox()
        self.environ["COLUMNS"] = "80"
        start = (EPOCH + timedelta(seconds=reactor.seconds())).replace(microsecond=0)
        start -= timedelta(days=1)
        end = start + timedelta(seconds=3)
        terminal = _Terminal()
        code, text, err = await self.run_cli(
            running, "ticks", "EURUSD", "--from", start.isoformat(), "--to", end.isoformat(),
            "--limit", "5", stdout=terminal,
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        lines = ANSI.sub("", text).splitlines()
        self.assertEqual(lines[0], "60 ticks (showing the last 5; use --out or --json for all)")
        self.assertLessEqual(max(len(line) for line in lines), 80, text)
        self.assertEqual(len(lines), 1 + 3 + 5 + 1)  # caption, header, rows, bottom rule
        shown = lines[4].split("│")[1].strip()  # a time as tables show it ...
        self.assertRegex(shown, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
        self.assertGreaterEqual(parse_time(shown, start), start)  # ... is accepted back

    async def test_json_times_are_accepted_back(self) -> None:
        running = await self.sandbox()
        code, text, err = await self.run_cli(running, "quotes", "EURUSD", "--count", "1", "--json")
        self.assertEqual(code, 0, err)
        stamp = json.loads(text)["time"]
        self.assertRegex(stamp, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
        self.assertEqual(json_value(parse_time(stamp, EPOCH)), stamp)


class FormatTests(SynchronousTestCase):
    def test_times(self) -> None:
        utc = timezone.utc
        whole = datetime(2024, 5, 1, 12, 30, tzinfo=utc)
        self.assertEqual(json_value(whole), "2024-05-01T12:30:00Z")
        self.assertEqual(
            json_value(datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=utc)),
            "2024-05-01T12:30:00.250Z",
        )
        for text in ("2024-05-01T12:30:00.250Z", "2024-05-01 12:30:00.250", "2024-05-01T12:30Z"):
            self.assertEqual(parse_time(text, EPOCH).date().isoformat(), "2024-05-01")

    def test_account_not_found_code(self) -> None:
        code, text = describe_failure(AccountAuthError("CH_CTID_TRADER_ACCOUNT_NOT_FOUND"))
        self.assertEqual(code, ExitCode.NOT_FOUND)
        self.assertEqual(text, "not found: CH_CTID_TRADER_ACCOUNT_NOT_FOUND")
        self.assertEqual(describe_failure(AccountAuthError("CH_ACCESS_TOKEN_INVALID"))[0], 3)


class DocsTests(SynchronousTestCase):
    def test_every_exit_code_is_documented(self) -> None:
        table = (DOCS / "cli.md").read_text().split("## Exit codes", 1)[1].split("\n\n", 2)[1]
        documented = {int(line.split("|")[1]) for line in table.splitlines()[2:]}
        self.assertEqual(documented, {int(code) for code in ExitCode})

    def test_every_option_limit_is_documented(self) -> None:
        text = " ".join((DOCS / "cli.md").read_text().split())
        for rule in RULES.values():
            self.assertIn(f"`{rule.label}`: {rule.describe()}", text)

    def test_token_file_error_is_where_the_docs_say(self) -> None:
        from ctrader_twisted import oauth, tokens

        self.assertIs(oauth.TokenFileError, tokens.TokenFileError)
        self.assertIn("TokenFileError", oauth.__all__)
        text = (DOCS / "oauth.md").read_text()
        self.assertIn("`ctrader_twisted.tokens.TokenFileError`", text)
