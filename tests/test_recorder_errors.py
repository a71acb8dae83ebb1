"""The recorder's start-up errors (fatal or retried), its bounded stop, and the ``--env`` alias.

Permanent errors end the start with a critical log line, ``Recorder.fatal_error`` and the
``on_fatal`` callbacks, which the entry points turn into one stderr line and an exit status
(checked here in-process and, once each, as real ``ctrader-twisted record`` and ``twistd``
processes).  Transient ones are retried with a warning per failed attempt.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast
from unittest import mock

import trustme
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IReactorCore, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted._cli_errors import ExitCode
from ctrader_twisted._models_symbols import UnknownSymbol
from ctrader_twisted._oauth_errors import OAuthConnectionError, OAuthError, OAuthHTTPError
from ctrader_twisted.cli import main as cli_main
from ctrader_twisted.client import Client
from ctrader_twisted.errors import (
    AccountAuthError,
    ApplicationAuthError,
    NotConnected,
    OpenApiError,
    RequestTimeout,
)
from ctrader_twisted.recorder import tap
from ctrader_twisted.recorder._fatal import exit_status, is_fatal
from ctrader_twisted.recorder._rows import SpotRow
from ctrader_twisted.recorder._writer import BatchWriter
from ctrader_twisted.recorder.service import Recorder, RecorderConfig
from ctrader_twisted.recorder.storage import MarketStore, StorageError, open_sqlite
from tests.recorder_support import World, capture_logs, logged, reactor
from tests.test_recorder_storage import FakeStore
from tests.test_recorder_tap import parse


def temp_dir(case: SynchronousTestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-errors-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


def ca_file(case: SynchronousTestCase) -> str:
    """A CA certificate (PEM) to trust: enough to build a TLS endpoint."""
    path = temp_dir(case) / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def unusable_path(case: SynchronousTestCase) -> Path:
    """A database path below a regular file: no directory can be created there."""
    blocker = temp_dir(case) / "a-file"
    blocker.write_text("not a directory")
    return blocker / "sub" / "market.sqlite3"


def sqlite_world(case: TestCase, path: Path | None = None) -> World:
    db = path or temp_dir(case) / "market.sqlite3"
    return World(case, lambda: open_sqlite(reactor, db))


class ClassificationTests(SynchronousTestCase):
    def test_fatal_or_retried(self) -> None:
        fatal = [
            StorageError("x", permanent=True),
            ApplicationAuthError("CH_CLIENT_AUTH_FAILURE", "no"),
            AccountAuthError("CH_ACCESS_TOKEN_INVALID", "no"),
            UnknownSymbol("EURUSX"),
            OAuthError("ACCESS_DENIED", "used refresh token"),
            OAuthHTTPError(400, "HTTP_400"),
            ZeroDivisionError(),
        ]
        retried = [
            StorageError("x"),
            NotConnected("down"),
            RequestTimeout("ProtoOAVersionReq", 5.0, sent=True),
            OpenApiError("REQUEST_FREQUENCY_EXCEEDED", "slow down"),
            OAuthConnectionError("CONNECTION_FAILED", "down"),
            OAuthHTTPError(503, "HTTP_503"),
        ]
        self.assertEqual([e for e in fatal if not is_fatal(e)], [])
        self.assertEqual([e for e in retried if is_fatal(e)], [])

    def test_exit_statuses_and_messages(self) -> None:
        self.assertEqual(
            exit_status(StorageError("cannot open sqlite:/x:\n  nope", permanent=True)),
            (ExitCode.USAGE, "cannot open sqlite:/x: nope"),
        )
        code, text = exit_status(ApplicationAuthError("CH_CLIENT_AUTH_FAILURE", "bad secret"))
        self.assertEqual(code, ExitCode.AUTH)
        self.assertIn("CH_CLIENT_AUTH_FAILURE", text)
        self.assertEqual(exit_status(UnknownSymbol("EURUSX", ["EURUSD"]))[0], ExitCode.NOT_FOUND)
        self.assertEqual(exit_status(OAuthError("ACCESS_DENIED", "no"))[0], ExitCode.AUTH)


class FatalStartTests(TestCase):
    """Each permanent error: fatal_error, one critical line, on_fatal, nothing retried."""

    timeout = 60

    def fatal_world(self, world: World, **config: Any) -> tuple[Recorder, list[BaseException]]:
        errors: list[BaseException] = []
        recorder = world.start_recorder(**config)
        recorder.on_fatal(errors.append)
        return recorder, errors

    async def settle(self, world: World, errors: list[BaseException]) -> None:
        for _ in range(40):  # at most 20 s of clock time
            if errors:
                return
            await world.step(0.5)

    def assert_fatal_once(self, events: list[Any], errors: list[BaseException], text: str) -> None:
        self.assertEqual(len(errors), 1)
        lines = logged(events, LogLevel.critical, "The recorder cannot start")
        self.assertEqual(len(lines), 1)
        self.assertIn(text, lines[0])

    async def test_unusable_sqlite_path(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self, unusable_path(self))
        recorder, errors = self.fatal_world(world)
        self.assertEqual(len(errors), 1)  # at once: nothing to wait for
        self.assertIsInstance(recorder.fatal_error, StorageError)
        self.assert_fatal_once(events, errors, "cannot create")
        self.assertEqual(exit_status(errors[0])[0], ExitCode.USAGE)
        await world.run(30)
        self.assertEqual(len(errors), 1)  # no retry
        self.assertEqual(logged(events, LogLevel.warn, "retrying"), [])
        await world.stop_recorder()

    async def test_directory_in_place_of_the_file(self) -> None:
        path = temp_dir(self) / "market.sqlite3"
        path.mkdir()
        events = capture_logs(self)
        world = sqlite_world(self, path)
        _recorder, errors = self.fatal_world(world)
        await self.settle(world, errors)
        self.assert_fatal_once(events, errors, "unable to open database file")
        await world.stop_recorder()

    async def test_bad_application_credentials(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self)
        _recorder, errors = self.fatal_world(world, client_secret="wrong-secret")
        await self.settle(world, errors)
        self.assert_fatal_once(events, errors, "CH_CLIENT_AUTH_FAILURE")
        self.assertIsInstance(errors[0], ApplicationAuthError)
        self.assertEqual(exit_status(errors[0])[0], ExitCode.AUTH)
        self.assertNotIn("wrong-secret", str(events))
        await world.stop_recorder()

    async def test_credentials_revoked_while_recording(self) -> None:
        """The application's secret stops working after a good start: the client gives up
        (CH_CLIENT_AUTH_FAILURE is final) and the recorder reports it instead of idling."""
        events = capture_logs(self)
        world = sqlite_world(self)
        recorder, errors = self.fatal_world(world)
        await world.run(5)
        self.assertEqual(errors, [])
        world.factory.config = dataclasses.replace(world.factory.config, client_secret="rotated")
        world.factory.drop_all()
        await self.settle(world, errors)
        self.assert_fatal_once(events, errors, "CH_CLIENT_AUTH_FAILURE")
        self.assertIsInstance(recorder.fatal_error, ApplicationAuthError)
        self.assertEqual(exit_status(errors[0])[0], ExitCode.AUTH)
        await world.stop_recorder()

    async def test_refused_account_token(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self)
        _recorder, errors = self.fatal_world(world, access_token="not-a-valid-token")
        await self.settle(world, errors)
        self.assert_fatal_once(events, errors, "CH_ACCESS_TOKEN_INVALID")
        self.assertEqual(exit_status(errors[0])[0], ExitCode.AUTH)
        await world.stop_recorder()

    async def test_unknown_symbol(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self)
        _recorder, errors = self.fatal_world(world, symbols=("EURUSD", "EURUSX"))
        await self.settle(world, errors)
        self.assert_fatal_once(events, errors, "unknown symbol 'EURUSX' (did you mean EURUSD?)")
        self.assertEqual(exit_status(errors[0])[0], ExitCode.NOT_FOUND)
        await world.stop_recorder()

    def test_late_on_fatal_callback_hears_at_once(self) -> None:
        client = Client(FailingEndpoint(0), client_id="id", client_secret="s", reactor=Clock())
        config = RecorderConfig(account_id=1, access_token="t", symbols=("EURUSD",))
        recorder = Recorder(
            client, lambda: fail(StorageError("no", permanent=True)), config, Clock()
        )
        recorder.startService()
        errors: list[BaseException] = []
        recorder.on_fatal(errors.append)()  # called at once, then removed
        self.assertEqual(len(errors), 1)
        self.successResultOf(recorder.stopService())


class FailingEndpoint:
    """Refuses the first ``failures`` connections, then hands them to ``inner``."""

    def __init__(self, failures: int, inner: IStreamClientEndpoint | None = None) -> None:
        self.failures = failures
        self.inner = inner
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        if self.attempts <= self.failures or self.inner is None:
            return fail(ConnectionRefusedError("127.0.0.1:5035"))
        return self.inner.connect(factory)


class TransientStartTests(TestCase):
    """What can pass is retried, with a warning for every failed attempt."""

    timeout = 60

    async def test_database_not_ready_then_ready(self) -> None:
        db = temp_dir(self) / "market.sqlite3"
        attempts: list[float] = []
        events = capture_logs(self)

        def opener() -> Deferred[MarketStore]:
            attempts.append(world.clock.seconds())
            if len(attempts) <= 2:
                return fail(StorageError("cannot open postgresql://db/market: not up yet"))
            return open_sqlite(reactor, db)

        world = World(self, opener)
        recorder = world.start_recorder()
        await world.run(30)
        self.assertEqual(len(attempts), 3)
        self.assertEqual(len(logged(events, LogLevel.warn, "not up yet; retrying in 5.0 s")), 2)
        self.assertIsNone(recorder.fatal_error)
        self.assertGreater(recorder.events_received, 10)
        await world.stop_recorder()

    async def test_unreachable_server_warns_per_attempt(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self)
        flaky = FailingEndpoint(4, world.endpoint)  # type: ignore[arg-type]
        warned = tap._WarningEndpoint(flaky, "127.0.0.1:5035")  # type: ignore[arg-type]
        recorder = world.start_recorder(endpoint=warned)
        await world.run(30)
        self.assertEqual(flaky.attempts, 5)
        lines = logged(events, LogLevel.warn, "Cannot connect to 127.0.0.1:5035")
        self.assertEqual(len(lines), 4)
        self.assertIn("failed attempt 4, retrying", lines[-1])
        self.assertIsNone(recorder.fatal_error)
        self.assertGreater(recorder.events_received, 10)
        await world.stop_recorder()


class StopTimeoutTests(TestCase):
    timeout = 60

    async def test_stop_gives_up_on_a_database_that_stays_down(self) -> None:
        events = capture_logs(self)
        world = sqlite_world(self)
        recorder = world.start_recorder(stop_timeout=10.0)
        await world.run(20)
        writes: list[int] = []

        def down(store: MarketStore, batch: Any) -> Deferred[int]:
            writes.append(len(batch))
            return fail(StorageError("sqlite:market.sqlite3: OperationalError: disk I/O error"))

        self.patch(MarketStore, "write", down)
        await world.run(8)
        writer = recorder.writer
        assert writer is not None
        pending = writer.rows_pending
        self.assertGreater(pending, 0)
        self.assertGreaterEqual(len(writes), 2)
        warnings = logged(events, LogLevel.warn, "Database write failed (sqlite:market.sqlite3")
        self.assertGreaterEqual(len(warnings), 2)
        self.assertEqual(self.flushLoggedErrors(), [])  # warnings, not tracebacks

        started = world.clock.seconds()
        await world.stop_recorder()
        elapsed = world.clock.seconds() - started
        self.assertGreaterEqual(elapsed, 10.0)
        self.assertLessEqual(elapsed, 11.0)
        (line,) = logged(events, LogLevel.error, "without reaching the database")
        self.assertIn(f"{pending} row(s) were not written", line)
        self.assertEqual(writer.rows_pending, 0)
        tries = len(writes)
        await world.run(5)
        self.assertEqual(len(writes), tries)  # nothing retried after giving up

    async def test_stop_is_prompt_when_the_database_works(self) -> None:
        world = sqlite_world(self)
        recorder = world.start_recorder(stop_timeout=10.0)
        await world.run(20)
        started = world.clock.seconds()
        await world.stop_recorder()
        self.assertLess(world.clock.seconds() - started, 2.0)
        assert recorder.writer is not None
        self.assertEqual(recorder.writer.rows_pending, 0)


class AbandonTests(SynchronousTestCase):
    def test_abandon_drops_rows_and_stops_retrying(self) -> None:
        clock, store = Clock(), FakeStore()
        writer = BatchWriter(store, clock, max_rows=10, max_delay=0.5)
        writer.add_spot(SpotRow(1, 1, 1, 1))
        flushed = writer.flush()
        writer.add_spot(SpotRow(1, 2, 1, 1))
        self.assertEqual(writer.abandon(), 2)  # one being written, one queued
        self.failureResultOf(flushed, StorageError)
        _batch, d = store.calls.pop()
        d.errback(StorageError("down"))
        writer.add_spot(SpotRow(1, 3, 1, 1))
        clock.advance(5)
        self.assertEqual((store.calls, writer.rows_pending), ([], 0))
        self.assertEqual(clock.getDelayedCalls(), [])


class EnvOptionTests(SynchronousTestCase):
    def test_env_is_an_alias_of_environment(self) -> None:
        for argv in (["--env", "demo"], ["--environment", "demo"], ["-e", "demo"], ["--env=demo"]):
            self.assertEqual(parse(*argv, "-a", "1")["environment"], "demo", argv)
        self.assertEqual(parse()["environment"], "sandbox")
        with self.assertRaises(usage.UsageError) as caught:
            parse("--env", "paper")
        self.assertIn("--env must be one of sandbox, demo, live", str(caught.exception))

    def test_stop_timeout_option(self) -> None:
        self.assertEqual(parse()["stop-timeout"], 30.0)
        self.assertEqual(parse("--stop-timeout", "2.5")["stop-timeout"], 2.5)
        for bad in ("-1", "soon"):
            self.assertRaises(usage.UsageError, parse, "--stop-timeout", bad)

    def test_twistd_plugin_takes_env_and_stop_timeout(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        options = makers["ctrader-record"].options()
        ca = ca_file(self)
        options.parseOptions(
            ["--env", "sandbox", "--stop-timeout", "5", "--port", "1", "--ca-file", ca]
        )
        service = tap.build_service(options, reactor)  # type: ignore[arg-type]
        recorder = tap.recorder_of(service)
        self.assertEqual(recorder.config.stop_timeout, 5.0)

    def test_twistd_start_error_is_one_line_and_its_status(self) -> None:
        missing = str(temp_dir(self) / "none.json")
        options = parse("--env", "demo", "-a", "1", "--token-file", missing)
        env = {"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "secret"}
        stderr = mock.patch.object(sys, "stderr", new_callable=io.StringIO)
        with (
            mock.patch.dict(os.environ, env),
            stderr as err,
            self.assertRaises(SystemExit) as exit_,
        ):
            tap.makeService(options)
        self.assertEqual(exit_.exception.code, 3)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn(f"ctrader-record: error: no token in {missing}", err.getvalue())

    def test_cli_exit_statuses_before_running(self) -> None:
        err = mock.patch.object(sys, "stderr", new_callable=io.StringIO)
        with err as stderr:
            self.assertEqual(cli_main(["record", "--env", "paper"]), 2)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("--env must be one of", stderr.getvalue())
        env = {"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "secret"}
        missing = str(temp_dir(self) / "none.json")
        with mock.patch.dict(os.environ, env), err as stderr:
            self.assertEqual(
                tap.record_main(["--env", "live", "-a", "1", "--token-file", missing]), 3
            )
        self.assertEqual(
            stderr.getvalue(), f"error: no token in {missing}; run 'ctrader-twisted auth' first\n"
        )
        corrupt = temp_dir(self) / "token.json"
        corrupt.write_text("{not json")
        with mock.patch.dict(os.environ, env), err as stderr:
            argv = ["--env", "demo", "-a", "1", "--token-file", str(corrupt)]
            self.assertEqual(tap.record_main(argv), 2)
        self.assertIn("is not valid JSON", stderr.getvalue())


class StopOnFatalTests(SynchronousTestCase):
    """The entry points' wiring: report the status and message, then stop the reactor."""

    def test_reports_and_stops(self) -> None:
        options = parse(
            "-d", str(unusable_path(self)), "--port", "1", "--ca-file", ca_file(self),
            "--status-interval", "0",
        )  # fmt: skip
        service = tap.build_service(options, reactor)  # type: ignore[arg-type]
        fake = FakeReactor()
        reports: list[tuple[ExitCode, str]] = []
        tap.stop_on_fatal(service, cast(IReactorCore, fake), lambda c, t: reports.append((c, t)))
        recorder = tap.recorder_of(service)
        recorder.startService()  # the client is not started: only the store is tried
        self.assertEqual(len(reports), 1)
        code, message = reports[0]
        self.assertEqual(code, ExitCode.USAGE)
        self.assertIn("cannot open sqlite:", message)
        self.assertIn("market.sqlite3", message)
        self.assertEqual(fake.stops, 1)
        self.successResultOf(recorder.stopService())


class FakeReactor:
    running = True

    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1

    def callWhenRunning(self, call: Any) -> None:
        call()


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run(  # noqa: S603 - our own interpreter and entry points
        [sys.executable, "-c", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


class ProcessExitTests(SynchronousTestCase):
    """Real processes: one stderr line and status 2 for ``record``, status 2 for ``twistd``."""

    def test_record_prints_one_line_and_exits_2(self) -> None:
        directory = temp_dir(self)
        db = unusable_path(self)
        result = _run(
            [
                "import sys; from ctrader_twisted.cli import main; sys.exit(main())",
                "record", "-d", str(db), "--sandbox-state-dir", str(directory / "sandbox"),
            ],
            directory,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertTrue(result.stderr.startswith(f"error: cannot open sqlite:{db}: "))
        self.assertIn("critical] The recorder cannot start", result.stdout)

    def test_twistd_logs_stops_and_exits_2(self) -> None:
        directory = temp_dir(self)
        db = unusable_path(self)
        result = _run(
            [
                "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "ctrader-record", "-d", str(db),
                "--sandbox-state-dir", str(directory / "sandbox"),
            ],
            directory,
        )  # fmt: skip
        self.assertEqual(result.returncode, 2, result.stdout[-2000:])
        self.assertIn("#critical] The recorder cannot start: cannot open sqlite:", result.stdout)
        self.assertIn("Main loop terminated", result.stdout)
