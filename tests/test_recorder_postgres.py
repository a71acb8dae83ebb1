"""The recorder's PostgreSQL store, against a real throwaway server (``tests/pgserver.py``).

The same storage behaviour ``test_recorder_storage`` checks on SQLite, plus what only a server
has (a session killed under the store), and the recorder end to end against the sandbox with
dropped client connections, a killed database session and a restart.  Skipped, with the reason,
when PostgreSQL or psycopg is not installed.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from decimal import Decimal
from typing import cast
from unittest import SkipTest, mock

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted.recorder._rows import BarRow, DepthRow, SpotRow
from ctrader_twisted.recorder._writer import BatchWriter
from ctrader_twisted.recorder.storage import Batch, MarketStore, StorageError, open_postgres
from tests import pgserver
from tests.pgserver import PostgresServer, shared_server
from tests.recorder_support import (
    World,
    assert_series_whole,
    capture_logs,
    logged,
    reactor,
    record_briefly,
)
from tests.test_recorder_storage import bar
from tests.test_recorder_tap import parse, temp_dir


class PostgresTestCase(TestCase):
    """Each test gets a new schema in the shared server's ``postgres`` database."""

    timeout = 60
    dbname = "postgres"

    def setUp(self) -> None:
        self.server: PostgresServer = shared_server()
        self.dsn = self.server.new_schema()

    async def open(self) -> MarketStore:
        store = await open_postgres(reactor, self.dsn)
        self.addCleanup(store.close)
        return store

    def query(self, sql: str, *params: object) -> Deferred[list[tuple[object, ...]]]:
        """Read the database directly (in a thread: psycopg blocks)."""
        return deferToThread(self.server.execute, self.dsn, sql, params)

    async def kill_sessions(self) -> int:
        """Kill the recorder's sessions (named by its default ``application_name``)."""
        return await deferToThread(self.server.terminate_sessions, self.dbname, "ctrader-recorder")


def batch_of(*rows: SpotRow | BarRow | DepthRow) -> Batch:
    batch = Batch()
    for row in rows:
        if isinstance(row, SpotRow):
            batch.spots.append(row)
        elif isinstance(row, BarRow):
            batch.bars[row.key] = row
        else:
            batch.depth.append(row)
    return batch


class PostgresStoreTests(PostgresTestCase):
    async def test_schema_is_created_once_and_reopens(self) -> None:
        store = await self.open()
        await store.close()
        store = await self.open()  # the schema exists already: nothing fails
        tables = await self.query(
            "SELECT table_name, table_type FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY table_name"
        )
        self.assertEqual(
            tables,
            [
                ("bars", "BASE TABLE"),
                ("bars_decimal", "VIEW"),
                ("depth", "VIEW"),  # over depth_changes (one row per depth event)
                ("depth_changes", "BASE TABLE"),
                ("spots", "BASE TABLE"),
                ("symbols", "BASE TABLE"),
            ],
        )
        keys = await self.query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = 'bars'::regclass AND i.indisprimary ORDER BY a.attnum"
        )
        self.assertEqual(keys, [("symbol_id",), ("period",), ("time_minutes",)])
        self.assertEqual(await store.counts(), {"spots": 0, "bars": 0, "depth": 0})

    async def test_writes_and_decimal_view(self) -> None:
        store = await self.open()
        batch = batch_of(
            SpotRow(1, 1000, 110000, None, 999),
            bar(10),
            DepthRow(1, 1000, 77, "bid", 109990, 100000),
            DepthRow(1, 1001, 77, "delete", None, None),
        )
        self.assertEqual(await store.write(batch), 4)
        await store.save_symbols({1: "EURUSD"})
        await store.save_symbols({1: "EURUSD", 2: "GBPUSD"})  # upserted, not duplicated
        self.assertEqual(await store.counts(), {"spots": 1, "bars": 1, "depth": 2})
        spots = await self.query("SELECT symbol_id, received_ms, server_ms, bid, ask FROM spots")
        self.assertEqual(spots, [(1, 1000, 999, 110000, None)])
        depth = await self.query("SELECT quote_id, side, price, size FROM depth ORDER BY id")
        self.assertEqual(depth, [(77, "bid", 109990, 100000), (77, "delete", None, None)])
        self.assertEqual(await self.query("SELECT count(*) FROM symbols"), [(2,)])
        view = await self.query("SELECT name, opened_utc, open, high, close FROM bars_decimal")
        self.assertEqual(
            view,
            [
                (
                    "EURUSD",
                    datetime(1970, 1, 1, 0, 10, tzinfo=timezone.utc),
                    Decimal("1.1"),
                    Decimal("1.1005"),
                    Decimal("1.1"),
                )
            ],
        )

    async def test_bars_are_upserted_once_per_key_in_order(self) -> None:
        store = await self.open()
        for version in (bar(10, 110001), bar(10, 110002, "history"), bar(11), bar(9)):
            await store.write(batch_of(version))
        await store.write(batch_of(bar(10, 110003, "history"), bar(12), bar(5, symbol=2)))
        bars = await store.bars(1, 1)
        self.assertEqual([b.time_minutes for b in bars], [9, 10, 11, 12])
        self.assertEqual((bars[1].close, bars[1].source), (110003, "history"))
        self.assertEqual(await store.last_bar_minute(1, 1), 12)
        self.assertEqual(await store.last_bar_minute(2, 1), 5)
        self.assertIsNone(await store.last_bar_minute(1, 9))
        self.assertEqual(await store.last_history_minute(1, 1), 10)
        self.assertIsNone(await store.last_history_minute(2, 1))
        self.assertEqual((await store.counts())["bars"], 5)

    async def test_big_prices_and_times_fit(self) -> None:
        store = await self.open()
        big = BarRow(2**40, 14, 2**33, 2**50, 2**50 + 5, 2**50 - 5, 2**50, 2**40, "live")
        await store.write(batch_of(big, SpotRow(2**40, 2**45, 2**50, 2**51, 2**46)))
        self.assertEqual(await store.bars(2**40, 14), [big])

    async def test_reopen_keeps_data(self) -> None:
        store = await open_postgres(reactor, self.dsn)
        await store.write(batch_of(bar(5)))
        await store.close()
        store = await self.open()
        self.assertEqual(await store.last_bar_minute(1, 1), 5)

    async def test_failed_batch_is_rolled_back_and_the_store_goes_on(self) -> None:
        store = await self.open()
        broken = BarRow(1, 1, 20, None, 1, 1, 1, 1, "live")  # type: ignore[arg-type]
        with self.assertRaises(StorageError):
            await store.write(batch_of(SpotRow(1, 1, 1, 1), bar(19), broken))
        self.assertEqual(await store.counts(), {"spots": 0, "bars": 0, "depth": 0})
        self.assertEqual(await store.write(batch_of(SpotRow(1, 2, 1, 1), bar(19))), 2)
        self.assertEqual(await store.counts(), {"spots": 1, "bars": 1, "depth": 0})

    async def test_killed_session_is_replaced(self) -> None:
        events = capture_logs(self)
        store = await self.open()
        await store.write(batch_of(bar(1)))
        self.assertGreaterEqual(await self.kill_sessions(), 1)
        with self.assertRaises(StorageError):
            await store.write(batch_of(bar(2)))
        await store.write(batch_of(bar(2)))
        self.assertEqual(await store.last_bar_minute(1, 1), 2)
        self.assertGreaterEqual(await self.kill_sessions(), 1)  # a new session, now idle
        with self.assertRaises(StorageError):
            await store.last_bar_minute(1, 1)
        self.assertEqual([b.time_minutes for b in await store.bars(1, 1)], [1, 2])
        # No "Rollback failed" tracebacks from adbapi: one warning per lost session.
        self.assertEqual(self.flushLoggedErrors(), [])
        lost = logged(events, LogLevel.warn, "PostgreSQL session lost")
        self.assertEqual(len(lost), 2)
        self.assertTrue(all("; the next operation reconnects" in line for line in lost))

    async def test_failed_statement_reports_its_own_error_quietly(self) -> None:
        store = await self.open()
        broken = BarRow(1, 1, 20, None, 1, 1, 1, 1, "live")  # type: ignore[arg-type]
        with self.assertRaises(StorageError) as caught:  # the real error, not the rollback's
            await store.write(batch_of(broken))
        self.assertIn("NotNullViolation", str(caught.exception))
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_unreachable_server_and_missing_database(self) -> None:
        closed_port = self.server.dsn("nowhere").replace(
            f"port={self.server.port}", "port=1 password=hunter2 connect_timeout=5"
        )
        with self.assertRaises(StorageError) as caught:
            await open_postgres(reactor, closed_port)
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertIn("127.0.0.1", str(caught.exception))
        with self.assertRaises(StorageError) as caught:
            await open_postgres(reactor, self.server.dsn("no_such_database"))
        self.assertIn("no_such_database", str(caught.exception))

    async def test_no_right_to_create_the_tables_is_permanent(self) -> None:
        schema = self.dsn.split("search_path=")[1].rstrip("'")
        role = f"reader_{schema}"
        await self.query(f"CREATE ROLE {role} LOGIN")
        await self.query(f"GRANT USAGE ON SCHEMA {schema} TO {role}")  # but not CREATE
        with self.assertRaises(StorageError) as caught:
            await open_postgres(reactor, self.dsn.replace("user=postgres", f"user={role}"))
        self.assertTrue(caught.exception.permanent)
        self.assertIn("InsufficientPrivilege", str(caught.exception))
        with self.assertRaises(StorageError) as caught:  # may be created later: retried
            await open_postgres(reactor, self.server.dsn("no_such_database"))
        self.assertFalse(caught.exception.permanent)

    async def test_closed_store_refuses(self) -> None:
        store = await self.open()
        await store.close()
        self.assertRaises(StorageError, store.write, Batch())

    async def test_password_is_never_shown(self) -> None:
        store = await open_postgres(reactor, f"{self.dsn} password=hunter2")  # trust: unused
        self.addCleanup(store.close)
        self.assertNotIn("hunter2", repr(store))
        self.assertIn(f":{self.server.port}/{self.dbname}", repr(store))
        await store.close()
        with self.assertRaises(StorageError) as caught:
            await store.bars(1, 1)
        self.assertNotIn("hunter2", str(caught.exception))


class PostgresBatchWriterTests(PostgresTestCase):
    async def test_batches_in_arrival_order(self) -> None:
        store = await self.open()
        clock = Clock()
        writer = BatchWriter(store, clock, max_rows=1000, max_delay=0.5)
        for n in range(2500):
            writer.add_spot(SpotRow(1 + n % 3, n, 110000 + n, 110002 + n, n))
            if n % 100 == 0:
                writer.add_bar(bar(n // 100))
                writer.add_bar(bar(n // 100, 110007, "history"))  # replaces the queued one
        writer.add_depth([DepthRow(1, 2500, 9, "ask", 110010, 5)])
        await writer.flush()
        writer.stop()
        self.assertEqual(writer.rows_written, 2500 + 25 + 1)
        self.assertEqual(writer.rows_pending, 0)
        self.assertEqual(writer.write_failures, 0)
        self.assertGreaterEqual(writer.batches_written, 2)
        order = await self.query("SELECT received_ms FROM spots ORDER BY id")
        self.assertEqual([row[0] for row in order], list(range(2500)))
        bars = await store.bars(1, 1)
        expected = [(t, 110007) for t in range(25)]
        self.assertEqual([(b.time_minutes, b.close) for b in bars], expected)
        self.assertEqual(await store.counts(), {"spots": 2500, "bars": 25, "depth": 1})


class PostgresRecorderTests(PostgresTestCase):
    timeout = 120

    async def test_drops_killed_session_and_restart_leave_no_gaps_or_duplicates(self) -> None:
        def opener() -> Deferred[MarketStore]:
            return open_postgres(reactor, self.dsn)

        world = World(self, opener)
        world.start_recorder()
        await world.run(3 * 60 + 20, drop_every=23)
        self.assertGreaterEqual(await self.kill_sessions(), 1)  # rows are pending: a write fails
        await world.run(2 * 60, drop_every=19)
        assert world.recorder is not None
        assert world.recorder.writer is not None
        self.assertGreaterEqual(world.recorder.writer.write_failures, 1)
        await world.stop_recorder()
        await world.run(2 * 60)  # the recorder is down for two minutes
        world.start_recorder()
        await world.run(40)
        self.assertGreaterEqual(await self.kill_sessions(), 1)
        await world.run(3 * 60, drop_every=17)
        assert world.recorder is not None
        assert world.recorder.writer is not None
        self.assertGreaterEqual(world.recorder.writer.write_failures, 1)
        self.assertGreater(world.recorder.backfills_done, 3)
        await world.stop_recorder()
        self.assertGreaterEqual(world.reconnects, 12)
        self.assertEqual(self.flushLoggedErrors(), [])  # failed writes: warnings, then retried

        store = await self.open()
        stored = await assert_series_whole(self, world, store, min_bars=14)
        self.assertTrue(all(b.source == "history" for b in stored[:-2]))  # every bar confirmed
        counts = await store.counts()
        self.assertGreater(counts["spots"], 300)
        duplicates = await self.query(
            "SELECT count(*) FROM (SELECT received_ms FROM spots"
            " GROUP BY received_ms, bid, ask HAVING count(*) > 1) d"
        )
        self.assertEqual(duplicates, [(0,)])

    async def test_database_not_there_yet_then_created(self) -> None:
        name = f"late_{self.server.port}"
        late = self.server.dsn(name)

        def opener() -> Deferred[MarketStore]:
            return open_postgres(reactor, late)

        world = World(self, opener)
        world.start_recorder()
        await world.run(12)  # three attempts fail: the database does not exist
        assert world.recorder is not None
        self.assertIsNone(world.recorder.store)
        await deferToThread(self.server.create_database, name)
        await world.run(3 * 60, drop_every=41)
        self.assertIsNotNone(world.recorder.store)
        await world.stop_recorder()
        store = await open_postgres(reactor, late)
        self.addCleanup(store.close)
        await assert_series_whole(self, world, store, min_bars=6)

    async def test_backfill_retried_after_storage_error(self) -> None:
        def opener() -> Deferred[MarketStore]:
            return open_postgres(reactor, self.dsn)

        world = World(self, opener)
        calls: list[float] = []
        original = MarketStore.last_history_minute

        def flaky(store: MarketStore, symbol_id: int, period: int) -> Deferred[int | None]:
            calls.append(world.clock.seconds())
            if len(calls) == 1:  # the series' cursor is read once, when it is first backfilled
                return fail(StorageError("simulated: the database went away"))
            return original(store, symbol_id, period)

        self.patch(MarketStore, "last_history_minute", flaky)
        world.start_recorder()
        await world.run(2 * 60 + 10)
        await world.stop_recorder()
        self.assertEqual(len(calls), 2)
        # retried (within five seconds, sooner when a live bar closes), not left to wait
        self.assertLessEqual(calls[1] - calls[0], 5.5)
        store = await self.open()
        await assert_series_whole(self, world, store, min_bars=6)


class PostgresTapTests(PostgresTestCase):
    """``ctrader-record --postgres``: the option, and a real run (embedded sandbox, TLS)."""

    def test_option_is_checked_without_showing_the_password(self) -> None:
        self.assertEqual(parse("--postgres", self.dsn)["postgres"], self.dsn)
        with self.assertRaises(usage.UsageError) as caught:
            parse("--postgres", "host=x password=hunter2 nonsense")
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertIn("--postgres", str(caught.exception))

    async def test_records_into_postgres_and_flushes_on_stop(self) -> None:
        directory = temp_dir(self)
        options = parse(
            "--postgres", self.dsn, "--sandbox-tick-interval", "0.02", "--status-interval", "0",
            "--sandbox-state-dir", str(directory / "sandbox"), "--history", "3",
        )  # fmt: skip
        recorder = await record_briefly(options)
        assert recorder.writer is not None
        self.assertEqual(recorder.writer.rows_pending, 0)  # everything was flushed at stop
        self.assertEqual(recorder.writer.write_failures, 0)
        self.assertEqual(await self.query("SELECT name FROM symbols"), [("EURUSD",)])
        spots = await self.query("SELECT count(*) FROM spots")
        self.assertGreaterEqual(cast(int, spots[0][0]), 20)
        bars = await self.query("SELECT count(*), count(DISTINCT time_minutes) FROM bars")
        self.assertGreaterEqual(cast(int, bars[0][0]), 3)
        self.assertEqual(bars[0][0], bars[0][1])


class FixtureSkipTests(SynchronousTestCase):
    """Without PostgreSQL or psycopg the tests above skip; they never fail for that."""

    def setUp(self) -> None:
        self.patch(pgserver, "_shared", None)

    def test_no_binaries(self) -> None:
        self.patch(pgserver, "find_bindir", lambda: None)
        with self.assertRaises(SkipTest) as caught:
            shared_server()
        self.assertIn("initdb", str(caught.exception))

    def test_no_psycopg(self) -> None:
        with mock.patch.dict(sys.modules, {"psycopg": None}), self.assertRaises(SkipTest) as caught:
            shared_server()
        self.assertIn("psycopg", str(caught.exception))
