"""The recorder and the sandbox it does not embed, and the stop of the one it embeds.

- ``record -e sandbox --port N`` and ``twistd ctrader-record --env sandbox --port N`` find the
  running sandbox's CA by themselves, as every other ``--env sandbox`` command does (issue 13,
  item 3: they retried for ever with ``certificate verify failed``).  A CA that is not there
  is one line and exit status 4, with a hint.
- Stopping the recorder with its embedded sandbox closes the client's connection cleanly
  (issue 13, item 12: the sandbox used to abort it while the client was closing it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast
from unittest import mock

from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted._cli_errors import ExitCode
from ctrader_twisted.recorder import tap
from tests.recorder_support import capture_logs, reactor, record_briefly


def temp_dir(case: SynchronousTestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-ca-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    return options


class MissingCaTests(SynchronousTestCase):
    def test_missing_sandbox_ca_is_a_start_error_with_a_hint(self) -> None:
        state = temp_dir(self) / "never-started"
        env = {"CTRADER_SANDBOX_STATE": str(state), "CTRADER_CONFIG": str(state / "none.ini")}
        with mock.patch.dict(os.environ, env), self.assertRaises(tap.StartError) as caught:
            tap.build_service(parse("--env", "sandbox", "--port", "5035"), cast(Any, reactor))
        self.assertEqual(caught.exception.code, ExitCode.CONNECTION)
        self.assertIn(f"CA file {state / 'sandbox-ca.pem'} does not exist", str(caught.exception))
        self.assertIn("is the sandbox running?", str(caught.exception))

    def test_ca_file_without_a_certificate_is_a_usage_error(self) -> None:
        empty = temp_dir(self) / "empty.pem"
        empty.write_text("no certificate here\n")
        options = parse("--env", "sandbox", "--port", "5035", "--ca-file", str(empty))
        with self.assertRaises(tap.StartError) as caught:
            tap.build_service(options, cast(Any, reactor))
        self.assertEqual(caught.exception.code, ExitCode.USAGE)
        self.assertIn(f"cannot use the CA file {empty}", str(caught.exception))


class EmbeddedSandboxStopTests(TestCase):
    timeout = 60

    async def test_stop_closes_the_connection_cleanly(self) -> None:
        directory = temp_dir(self)
        events = capture_logs(self)
        options = parse(
            "-d", str(directory / "market.sqlite3"), "--sandbox-tick-interval", "0.02",
            "--status-interval", "0", "--sandbox-state-dir", str(directory / "sandbox"),
            "--history", "3",
        )  # fmt: skip
        recorder = await record_briefly(options)
        self.assertGreaterEqual(recorder.events_received, 30)
        lines = [formatEvent(event) for event in events]
        self.assertTrue([line for line in lines if "closed cleanly" in line], lines)
        self.assertEqual([line for line in lines if "non-clean" in line], [])
        loud = [
            formatEvent(event)
            for event in events
            if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]
        self.assertEqual(loud, [])


def _start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and entry points
            [sys.executable, "-c", *argv],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


CLI = "import sys; from ctrader_twisted.cli import main; sys.exit(main())"
TWISTD = "from twisted.scripts.twistd import run; run()"


class RunningSandboxProcessTests(TestCase):
    """Real processes: a sandbox with its state folder in ``$CTRADER_SANDBOX_STATE``, two
    recorders connecting to it by port alone, one recorder with its own sandbox; all stopped
    with SIGTERM."""

    timeout = 90

    async def test_recorders_find_the_running_sandbox_and_stop_cleanly(self) -> None:
        directory = temp_dir(self)
        env = dict(
            os.environ,
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
            CTRADER_SANDBOX_STATE=str(directory / "state"),
            CTRADER_CONFIG=str(directory / "no-config.ini"),
        )
        sandbox_log = directory / "sandbox.log"
        sandbox = _start(
            [CLI, "sandbox", "--port", "0", "--tick-interval", "0.05", "--always-open"],
            directory,
            env,
            sandbox_log,
        )
        self.addCleanup(_kill, sandbox)
        port = await _wait_for(sandbox_log, rb"listening on 127\.0\.0\.1:(\d+)")
        common = ["--status-interval", "0", "--history", "3"]
        commands = {
            "record": [CLI, "record", "-e", "sandbox", "--port", port, *common],
            "twistd": [TWISTD, "-n", "--pidfile=", "ctrader-record", "--env", "sandbox",
                       "--port", port, *common],
            "embedded": [CLI, "record", "--sandbox-state-dir", str(directory / "own"),
                         "--sandbox-tick-interval", "0.05", *common],
        }  # fmt: skip
        running = {}
        for name, argv in commands.items():
            db = directory / f"{name}.sqlite3"
            log = directory / f"{name}.log"
            running[name] = (_start([*argv, "-d", str(db)], directory, env, log), db, log)
            self.addCleanup(_kill, running[name][0])
        for _, _, log in running.values():
            await _wait_for(log, rb"(Recording 1 symbol)")
        await deferLater(reactor, 2.0, lambda: None)  # a couple of seconds of spots
        for process, _, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for name, (process, db, log) in running.items():
            status = await _exited(process)
            text = log.read_text(errors="replace")
            with self.subTest(name):
                # twistd ends itself with the signal that stopped it, once it has shut down
                self.assertIn(status, (0, -signal.SIGTERM) if name == "twistd" else (0,), text)
                self.assertIn("Main loop terminated", text)
                self.assertNotIn("certificate verify failed", text)
                self.assertNotIn("Cannot connect", text)
                self.assertNotIn("non-clean", text)
                self.assertNotIn("Traceback", text)
                self.assertIn("Connection was closed cleanly", text)
                stopped = re.search(r"Recorder stopped; (\d+) rows written", text)
                self.assertIsNotNone(stopped, text[-3000:])
                with sqlite3.connect(db) as conn:
                    spots = conn.execute("SELECT COUNT(*) FROM spots").fetchone()[0]
                conn.close()
                self.assertGreater(spots, 0)


async def _wait_for(log: Path, pattern: bytes, limit: float = 30.0) -> str:
    """The first group of ``pattern`` once it appears in ``log`` (at most ``limit`` s)."""
    for _ in range(int(limit / 0.05)):
        found = re.search(pattern, log.read_bytes())
        if found:
            return found.group(1).decode()
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{pattern!r} not in {log}: {log.read_text(errors='replace')[-3000:]}")


async def _exited(process: subprocess.Popen[bytes], limit: float = 20.0) -> int:
    for _ in range(int(limit / 0.05)):
        status = process.poll()
        if status is not None:
            return status
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{process.args!r} did not exit within {limit} s")


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)
