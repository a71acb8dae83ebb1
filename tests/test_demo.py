"""``make demo``: the demo in-process, and the console script end to end in a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import TestCase

from ctrader_twisted._cli_output import Output
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted.demo import run_demo

reactor: CliReactor = global_reactor  # type: ignore[assignment]

STEPS = (
    "Sandbox listening on localhost:",
    "application authorized",
    "Trading accounts",
    "Authorized account 5000001",
    "EURUSD",
    "Live EURUSD quotes",
    "Order filled",
    "Open positions of account 5000001",
    "Position closed",
    "M1 bars",
    "Everything worked",
)


class DemoTests(TestCase):
    timeout = 60

    async def test_demo_in_process(self) -> None:
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(json_mode=False, stdout=stdout, stderr=stderr)
        code = await run_demo(reactor, out, quotes_seconds=0.6, days=0.5)
        self.assertEqual(code, 0, stderr.getvalue())
        text = stdout.getvalue()
        for step in STEPS:
            self.assertIn(step, text)
        self.assertIn("720 bars", text)  # half a day of M1 bars, markets always open
        self.assertIn("bid", text)

    def test_console_script_subprocess(self) -> None:
        code = "import sys; from ctrader_twisted.cli import main; sys.exit(main())"
        env = {**os.environ, "COLUMNS": "120"}
        finished = subprocess.run(  # noqa: S603 - fixed arguments, our own interpreter
            [sys.executable, "-c", code, "demo", "--quotes", "0.5", "--days", "0.25"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        self.assertEqual(finished.returncode, 0, finished.stderr)
        self.assertIn("Everything worked", finished.stdout)
        self.assertIn("Position closed", finished.stdout)
