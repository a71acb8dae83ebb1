"""Recorder options checked up front (issue 12, item 7): every number finite and in range, the
CA file present, a token file that does not decode reported as the token-file error.

Each bad value is one line on stderr and exit status 2, for ``ctrader-twisted record`` and for
``twistd -n ctrader-record`` alike (twistd would print its usage text and exit with 1).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.recorder import tap

#: (arguments, what the one error line must contain)
BAD_VALUES = [
    (["--history", "nan"], "--history must be at least 0 and at most 5270400 minutes, not nan"),
    (["--history", "inf"], "--history must be at least 0"),
    (["--history", "-100"], "not -100"),
    (["--history", "ten"], "--history must be a number, not 'ten'"),
    (["--status-interval", "-1"], "--status-interval must be at least 0"),
    (["--stop-timeout", "nan"], "--stop-timeout must be at least 0"),
    (["--sandbox-tick-interval", "0"], "--sandbox-tick-interval must be more than 0"),
    (["--sandbox-tick-interval", "inf"], "--sandbox-tick-interval must be more than 0"),
    (["--port", "99999"], "--port must be at least 1 and at most 65535, not 99999"),
    (["--port", "0"], "--port must be at least 1"),
    (["--port", "50.5"], "--port must be a whole number, not '50.5'"),
    (["--account", "-3"], "--account must be at least 1"),
    (["--ca-file", "/nonexistent/ca.pem"], "--ca-file /nonexistent/ca.pem is not a file"),
    (["--periods", "M7"], "--periods: unknown trendbar period 'M7'"),
]


def temp_dir(case: SynchronousTestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-options-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


class OptionValuesTests(SynchronousTestCase):
    def test_bad_values_are_usage_errors(self) -> None:
        for argv, message in BAD_VALUES:
            with self.subTest(argv=argv), self.assertRaises(usage.UsageError) as caught:
                tap.Options().parseOptions(argv)  # type: ignore[no-untyped-call]
            self.assertIn(message, str(caught.exception))

    def test_good_values_are_converted(self) -> None:
        options = tap.Options()
        options.parseOptions(  # type: ignore[no-untyped-call]
            ["--history", "0", "--port", "5035", "--sandbox-tick-interval", "0.05",
             "--status-interval", "0", "--stop-timeout", "2.5", "-a", "5000001"]
        )  # fmt: skip
        self.assertEqual(options["history"], 0.0)
        self.assertEqual((options["port"], options["account"]), (5035, 5000001))
        self.assertEqual(options["sandbox-tick-interval"], 0.05)
        self.assertEqual((options["status-interval"], options["stop-timeout"]), (0.0, 2.5))

    def test_under_twistd_a_bad_value_is_one_line_and_status_2(self) -> None:
        for argv, message in BAD_VALUES:
            with (
                self.subTest(argv=argv),
                mock.patch.object(sys, "stderr", new_callable=io.StringIO) as err,
                self.assertRaises(SystemExit) as exit_,
            ):
                ServerOptions().parseOptions(["-n", "ctrader-record", *argv])
            self.assertEqual(exit_.exception.code, 2)
            self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
            self.assertTrue(err.getvalue().startswith("ctrader-record: error: "))
            self.assertIn(message, err.getvalue())


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and entry points
        [sys.executable, "-c", *argv],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)


RECORD = "import sys; from ctrader_twisted.cli import main; sys.exit(main())"
TWISTD = "from twisted.scripts.twistd import run; run()"


class ProcessTests(SynchronousTestCase):
    """Real processes, started together: status 2 and one line on stderr."""

    def test_bad_values_and_undecodable_token_file(self) -> None:
        directory = temp_dir(self)
        token = directory / "token.json"
        token.write_bytes(b'\xff\xfe{"accessToken": "\xe9"}')  # not UTF-8
        demo = ["-e", "demo", "-a", "1", "--token-file", str(token)]
        credentials = {"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "secret"}
        cases = [
            ([RECORD, "record", "--history", "nan"], "error: --history must be", {}),
            ([RECORD, "record", "--port", "99999"], "error: --port must be", {}),
            ([RECORD, "record", "--sandbox-tick-interval", "0"], "error: --sandbox-tick", {}),
            ([RECORD, "record", "--ca-file", "/nonexistent"], "error: --ca-file", {}),
            ([RECORD, "record", *demo], f"error: {token} is not UTF-8", credentials),
            (
                [TWISTD, "-n", "--pidfile=", "ctrader-record", "--history", "-100"],
                "ctrader-record: error: --history must be",
                {},
            ),
            (
                [TWISTD, "-n", "--pidfile=", "ctrader-record", "--port", "99999"],
                "ctrader-record: error: --port must be",
                {},
            ),
            (
                [TWISTD, "-n", "--pidfile=", "ctrader-record", *demo],
                f"ctrader-record: error: {token} is not UTF-8",
                credentials,
            ),
        ]
        running = [(_start(argv, directory, env), argv, text) for argv, text, env in cases]
        for process, _, _ in running:
            self.addCleanup(_kill, process)
        for process, argv, text in running:
            try:
                out, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.fail(f"{argv[1:]} still running after 30 s")
            with self.subTest(argv=argv[1:]):
                self.assertEqual(process.returncode, 2, err + out[-2000:])
                self.assertEqual(err.count("\n"), 1, err)
                self.assertTrue(err.startswith(text), err)
                self.assertNotIn("Traceback", out + err)
