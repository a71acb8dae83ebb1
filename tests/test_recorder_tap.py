"""The recorder's twistd plugin, options, service wiring, live-bar closing, and a real run
against an embedded sandbox over loopback TLS."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import cast
from unittest import mock

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import reactor as _global_reactor
from twisted.internet.interfaces import IReactorSSL
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted._oauth_refresh import TokenRefresher
from ctrader_twisted.client import Client
from ctrader_twisted.recorder import tap
from ctrader_twisted.recorder._live import LiveBars
from ctrader_twisted.recorder._rows import BarRow
from ctrader_twisted.recorder.service import Recorder
from ctrader_twisted.tokens import Token, TokenStore
from tests.recorder_support import record_briefly

reactor = cast(IReactorSSL, _global_reactor)


def temp_dir(case: SynchronousTestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-tap-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["environment"], "sandbox")
        self.assertEqual(options["symbols"], ("EURUSD",))
        self.assertEqual(options["periods"], (1,))
        self.assertFalse(options["depth"])

    def test_lists_and_numbers(self) -> None:
        options = parse("-s", "EURUSD, GBPUSD,", "-p", "M1,H1", "--depth", "--history", "30")
        self.assertEqual(options["symbols"], ("EURUSD", "GBPUSD"))
        self.assertEqual(options["periods"], (1, 9))
        self.assertEqual(options["history"], 30.0)
        self.assertTrue(options["depth"])

    def test_bad_options(self) -> None:
        for argv in (["-e", "paper"], ["-p", "M7"], ["-e", "demo"], ["--history", "x"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_plugin_is_found(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("ctrader-record", makers)
        self.assertIsInstance(makers["ctrader-record"].options(), tap.Options)

    def test_demo_service_wiring(self) -> None:
        store = TokenStore(temp_dir(self) / "token.json")
        store.write(Token("access-token-123456", "refresh-token-123456", 9e9, 0))
        options = parse("-e", "demo", "-a", "42", "--token-file", str(store.path))
        env = {"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "secret"}
        with mock.patch.dict(os.environ, env):
            service = tap.build_service(options, reactor)
        kinds = [type(child) for child in cast(MultiService, service)]
        self.assertEqual(kinds, [Client, TokenRefresher, Recorder])
        self.assertFalse(IService(service).running)
        recorder = cast(list[Recorder], list(cast(MultiService, service)))[2]
        self.assertEqual(recorder.config.account_id, 42)
        self.assertNotIn("access-token-123456", repr(recorder.config))

    def test_demo_needs_credentials_and_token(self) -> None:
        options = parse("-e", "demo", "-a", "42", "--token-file", str(temp_dir(self) / "none"))
        with mock.patch.dict(os.environ, {"CTRADER_CLIENT_ID": "", "CTRADER_CLIENT_SECRET": ""}):
            self.assertRaises(usage.UsageError, tap.build_service, options, reactor)
        env = {"CTRADER_CLIENT_ID": "id", "CTRADER_CLIENT_SECRET": "secret"}
        with mock.patch.dict(os.environ, env):
            self.assertRaises(usage.UsageError, tap.build_service, options, reactor)


def trendbar(minute: int, low: int, volume: int, period: int = 1) -> m.ProtoOATrendbar:
    return m.ProtoOATrendbar(
        period=period, low=low, deltaOpen=1, deltaHigh=3, deltaClose=2, volume=volume,
        utcTimestampInMinutes=minute,
    )  # fmt: skip


class LiveBarsTests(SynchronousTestCase):
    def test_bar_closes_when_the_next_starts(self) -> None:
        closed: list[BarRow] = []
        firsts: list[tuple[int, int]] = []
        live = LiveBars(closed.append, lambda s, p: firsts.append((s, p)))
        live.feed(1, trendbar(100, 500, 1))
        live.feed(1, trendbar(100, 499, 2))
        self.assertEqual(closed, [])
        self.assertEqual(firsts, [(1, 1)])
        live.feed(1, trendbar(101, 510, 1))
        self.assertEqual([(b.time_minutes, b.low, b.volume) for b in closed], [(100, 499, 2)])
        live.feed(1, trendbar(100, 400, 9))  # late update of a closed bar: ignored
        self.assertEqual(len(closed), 1)
        self.assertEqual([b.time_minutes for b in live.forming()], [101])

    def test_reset_drops_the_bar_in_progress(self) -> None:
        closed: list[BarRow] = []
        firsts: list[tuple[int, int]] = []
        live = LiveBars(closed.append, lambda s, p: firsts.append((s, p)))
        live.feed(1, trendbar(100, 500, 1))
        live.reset()
        live.feed(1, trendbar(102, 500, 1))
        self.assertEqual(closed, [])  # the stale bar 100 is left to the backfill
        self.assertEqual(firsts, [(1, 1), (1, 1)])


class EmbeddedSandboxRunTests(TestCase):
    """``ctrader-record`` with its defaults: an embedded sandbox over real loopback TLS."""

    timeout = 60

    async def test_records_spots_and_flushes_on_stop(self) -> None:
        directory = temp_dir(self)
        db = directory / "market.sqlite3"
        options = parse(
            "-d", str(db), "--sandbox-tick-interval", "0.02", "--status-interval", "0",
            "--sandbox-state-dir", str(directory / "sandbox"), "--history", "3",
        )  # fmt: skip
        recorder = await record_briefly(options)
        self.assertGreaterEqual(recorder.events_received, 30)
        with sqlite3.connect(db) as conn:
            spots = conn.execute("SELECT COUNT(*) FROM spots").fetchone()[0]
            names = conn.execute("SELECT name FROM symbols").fetchall()
            bars = conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
        conn.close()
        assert recorder.writer is not None
        self.assertEqual(recorder.writer.rows_pending, 0)  # everything was flushed at stop
        self.assertGreaterEqual(spots, 20)
        self.assertEqual(names, [("EURUSD",)])
        self.assertGreaterEqual(bars, 1)
