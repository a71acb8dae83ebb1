"""Recorder storage (real SQLite through adbapi) and the batch writer (Clock, fake store)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import cast

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.recorder._rows import (
    BarRow,
    DepthRow,
    SpotRow,
    bar_close_minute,
    bar_from_trendbar,
    period_from_name,
)
from ctrader_twisted.recorder._writer import BatchWriter
from ctrader_twisted.recorder.storage import Batch, MarketStore, StorageError, open_sqlite

reactor = cast(IReactorCore, _global_reactor)


def temp_db(case: SynchronousTestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory) / "data" / "market.sqlite3"


def bar(t: int, close: int = 110000, source: str = "live", symbol: int = 1) -> BarRow:
    return BarRow(symbol, 1, t, 110000, 110050, 109950, close, 7, source)  # type: ignore[arg-type]


class RowTests(SynchronousTestCase):
    def test_trendbar_decoding(self) -> None:
        tb = m.ProtoOATrendbar(
            low=109000, deltaOpen=10, deltaHigh=50, deltaClose=20, volume=9,
            utcTimestampInMinutes=28_000_000,
        )  # fmt: skip
        row = bar_from_trendbar(3, 5, tb, "history")
        self.assertEqual(
            row, BarRow(3, 5, 28_000_000, 109010, 109050, 109000, 109020, 9, "history")
        )

    def test_periods(self) -> None:
        self.assertEqual(period_from_name("m1"), 1)
        self.assertEqual(period_from_name("H1"), 9)
        self.assertRaises(ValueError, period_from_name, "M7")
        self.assertEqual(bar_close_minute(1, 100), 101)
        self.assertEqual(bar_close_minute(9, 120), 180)
        jan_31 = 1706659200 // 60  # 2024-01-31 00:00 UTC
        self.assertEqual(bar_close_minute(14, jan_31) * 60, 1706745600)  # 2024-02-01


class SQLiteStoreTests(TestCase):
    async def open(self) -> tuple[MarketStore, Path]:
        path = temp_db(self)
        store = await open_sqlite(reactor, path)
        self.addCleanup(store.close)
        return store, path

    async def test_schema_wal_and_writes(self) -> None:
        store, path = await self.open()
        batch = Batch()
        batch.spots.append(SpotRow(1, 1000, 110000, None, 999))
        batch.bars[bar(10).key] = bar(10)
        batch.depth.append(DepthRow(1, 1000, 77, "bid", 109990, 100000))
        batch.depth.append(DepthRow(1, 1001, 77, "delete", None, None))
        self.assertEqual(await store.write(batch), 4)
        await store.save_symbols({1: "EURUSD"})
        self.assertEqual(await store.counts(), {"spots": 1, "bars": 1, "depth": 2})
        with sqlite3.connect(path) as direct:
            self.assertEqual(direct.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            row = direct.execute("SELECT name, opened_utc, close FROM bars_decimal").fetchone()
        direct.close()
        self.assertEqual(row, ("EURUSD", "1970-01-01 00:10:00", 1.1))

    async def test_bars_are_upserted_once_per_key(self) -> None:
        store, _ = await self.open()
        for version in (bar(10, 110001), bar(10, 110002, "history"), bar(11), bar(9)):
            batch = Batch()
            batch.bars[version.key] = version
            await store.write(batch)
        bars = await store.bars(1, 1)
        self.assertEqual([b.time_minutes for b in bars], [9, 10, 11])
        self.assertEqual((bars[1].close, bars[1].source), (110002, "history"))
        self.assertEqual(await store.last_bar_minute(1, 1), 11)
        self.assertIsNone(await store.last_bar_minute(2, 1))
        # the backfill cursor after a restart: the newest bar that came from history
        self.assertEqual(await store.last_history_minute(1, 1), 10)
        self.assertIsNone(await store.last_history_minute(2, 1))

    async def test_reopen_keeps_data(self) -> None:
        path = temp_db(self)
        store = await open_sqlite(reactor, path)
        batch = Batch()
        batch.bars[bar(5).key] = bar(5)
        await store.write(batch)
        await store.close()
        store = await open_sqlite(reactor, path)
        self.addCleanup(store.close)
        self.assertEqual(await store.last_bar_minute(1, 1), 5)

    async def test_unopenable_file(self) -> None:
        path = temp_db(self)
        path.parent.mkdir(parents=True)
        path.mkdir()  # a directory where the file should be
        with self.assertRaises(StorageError):
            await open_sqlite(reactor, path)

    async def test_closed_store_refuses(self) -> None:
        store, _ = await self.open()
        await store.close()
        self.assertRaises(StorageError, store.write, Batch())


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple[Batch, Deferred[int]]] = []

    def write(self, batch: Batch) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.calls.append((batch, d))
        return d

    def finish(self, index: int = 0) -> Batch:
        batch, d = self.calls.pop(index)
        d.callback(len(batch))
        return batch


class BatchWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.writer = BatchWriter(self.store, self.clock, max_rows=3, max_delay=0.5)

    def spot(self, n: int) -> SpotRow:
        return SpotRow(1, n, 100 + n, None)

    def test_written_after_delay(self) -> None:
        self.writer.add_spot(self.spot(1))
        self.clock.advance(0.49)
        self.assertEqual(self.store.calls, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.store.calls), 1)
        self.clock.advance(0.25)
        self.store.finish()
        self.assertEqual(self.writer.rows_written, 1)
        self.assertAlmostEqual(self.writer.last_write_lag, 0.75)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_size_trigger_one_write_at_a_time_in_order(self) -> None:
        for n in range(3):
            self.writer.add_spot(self.spot(n))
        self.assertEqual(len(self.store.calls), 1)
        for n in range(3, 8):
            self.writer.add_spot(self.spot(n))
        self.assertEqual(len(self.store.calls), 1)
        batches = [self.store.finish() for _ in range(2)]  # capped at max_rows=3 each
        self.clock.advance(0.5)  # the last, partial batch waits at most max_delay
        batches.append(self.store.finish())
        self.assertEqual([len(b) for b in batches], [3, 3, 2])
        spots = [s.received_ms for b in batches for s in b.spots]
        self.assertEqual(spots, list(range(8)))
        self.assertEqual(self.writer.rows_pending, 0)

    def test_bars_deduplicated_within_batch(self) -> None:
        self.writer.add_bar(bar(1, 1))
        self.writer.add_bar(bar(1, 2))
        flushed = self.writer.flush()
        batch = self.store.finish()
        self.assertEqual(list(batch.bars.values()), [bar(1, 2)])
        self.successResultOf(flushed)

    def test_flush_waits_for_rows_queued_before_it(self) -> None:
        self.writer.add_spot(self.spot(1))
        self.clock.advance(0.5)  # batch 1 in flight
        self.writer.add_spot(self.spot(2))
        flushed = self.writer.flush()
        self.store.finish()
        self.assertNoResult(flushed)
        self.writer.add_spot(self.spot(3))  # after the flush: not waited for
        self.assertEqual(len(self.store.calls), 1)
        self.store.finish()
        self.successResultOf(flushed)
        self.clock.advance(0.5)
        self.assertEqual([s.received_ms for s in self.store.finish().spots], [3])

    def test_failed_write_is_retried_in_order(self) -> None:
        self.writer.add_spot(self.spot(1))
        flushed = self.writer.flush()
        _batch, d = self.store.calls.pop()
        self.writer.add_spot(self.spot(2))
        d.errback(sqlite3.OperationalError("database is locked"))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.writer.write_failures, 1)
        self.assertNoResult(flushed)
        self.clock.advance(1.0)
        retried = self.store.finish()
        self.assertEqual([s.received_ms for s in retried.spots], [1, 2])
        self.successResultOf(flushed)
        self.writer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_with_nothing_pending(self) -> None:
        self.successResultOf(self.writer.flush())
