"""Depth stored as changes (one row per depth event), the book rebuilt from them, migration.

A recorded stream (depth events as the sandbox sends them: every quote of the previous book
deleted and a new book added, plus incremental events that change a quote in place or remove
one) is stored as changes; at every event time the book rebuilt by SQL (``MarketStore.depth_book``,
the query docs/recorder.md shows) must equal the book the old whole-book rows (one row per quote,
``depth_rows``) give.  Databases created by the previous schema (a ``depth`` table) are migrated
on start: their rows stay readable through the ``depth`` view and take part in the book.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.recorder._live import depth_change, depth_rows
from ctrader_twisted.recorder._rows import BarRow, DepthRow
from ctrader_twisted.recorder.storage import Batch, MarketStore, open_postgres, open_sqlite
from tests.pgserver import shared_server
from tests.recorder_support import reactor
from tests.test_recorder_storage import temp_db

SYMBOL = 1
Book = list[tuple[int, str, int, int]]

#: The schema the recorder created before depth was stored as changes (kept verbatim).
OLD_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS symbols (symbol_id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spots (id {serial}, symbol_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL, server_ms BIGINT, bid BIGINT, ask BIGINT)",
    "CREATE INDEX IF NOT EXISTS spots_by_symbol_time ON spots (symbol_id, received_ms)",
    "CREATE TABLE IF NOT EXISTS bars (symbol_id BIGINT NOT NULL, period INTEGER NOT NULL,"
    " time_minutes BIGINT NOT NULL, open BIGINT NOT NULL, high BIGINT NOT NULL,"
    " low BIGINT NOT NULL, close BIGINT NOT NULL, volume BIGINT NOT NULL,"
    " source TEXT NOT NULL, PRIMARY KEY (symbol_id, period, time_minutes))",
    "CREATE TABLE IF NOT EXISTS depth (id {serial}, symbol_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL, quote_id BIGINT NOT NULL, side TEXT NOT NULL,"
    " price BIGINT, size BIGINT)",
    "CREATE INDEX IF NOT EXISTS depth_by_symbol_time ON depth (symbol_id, received_ms)",
)
OLD_INSERT = (
    "INSERT INTO depth (symbol_id, received_ms, quote_id, side, price, size)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def recorded_stream(events: int = 60, start_ms: int = 1_000) -> Iterator[m.ProtoOADepthEvent]:
    """Depth events, one per 10 ms: whole-book replacements and incremental changes."""
    next_id = 0
    book: dict[int, tuple[str, int]] = {}
    for n in range(events):
        event = m.ProtoOADepthEvent(ctidTraderAccountId=9, symbolId=SYMBOL)
        if n % 3 == 0 or not book:  # the sandbox's way: the whole book anew
            event.deletedQuotes.extend(sorted(book))
            book.clear()
            for level in range(5):
                for side, price in (("bid", 110000 - n - level), ("ask", 110010 + n + level)):
                    next_id += 1
                    quote = event.newQuotes.add(id=next_id, size=(level + 1) * 100)
                    setattr(quote, side, price)
                    book[next_id] = (side, price)
        elif n % 3 == 1:  # one quote changed in place (same id, new size)
            quote_id = sorted(book)[n % len(book)]
            side, price = book[quote_id]
            quote = event.newQuotes.add(id=quote_id, size=7777 + n)
            setattr(quote, side, price)
        else:  # one quote removed, one added
            gone = sorted(book)[-1]
            event.deletedQuotes.append(gone)
            del book[gone]
            next_id += 1
            quote = event.newQuotes.add(id=next_id, size=5, bid=100000 + n)
            book[next_id] = ("bid", 100000 + n)
        event.ctidTraderAccountId = 9
        yield event


def old_book(rows: list[DepthRow], at_ms: int) -> Book:
    """The book the old rows give: applied in order, a delete row removing its quote."""
    book: dict[int, tuple[int, str, int, int]] = {}
    for row in rows:
        if row.received_ms > at_ms:
            break
        if row.side == "delete":
            book.pop(row.quote_id, None)
        else:
            book[row.quote_id] = (row.quote_id, row.side, row.price or 0, row.size or 0)
    return sorted(book.values(), key=lambda q: (q[1], q[2], q[0]))


def legacy_rows(event: m.ProtoOADepthEvent, received_ms: int) -> list[DepthRow]:
    """The old rows of one event, deletions first (the same book as the old code's order for
    these streams, which never delete and add one id in one event)."""
    rows = depth_rows(event, received_ms)
    return [r for r in rows if r.side == "delete"] + [r for r in rows if r.side != "delete"]


class DepthChangeTests(TestCase):
    timeout = 60

    async def open_new(self) -> MarketStore:
        store = await open_sqlite(reactor, temp_db(self))
        self.addCleanup(store.close)
        return store

    async def test_one_row_per_event_and_the_book_equals_the_old_rows(self) -> None:
        store = await self.open_new()
        old: list[DepthRow] = []
        times = []
        batch = Batch()
        for n, event in enumerate(recorded_stream()):
            received = 1_000 + 10 * n
            times.append(received)
            old.extend(legacy_rows(event, received))
            batch.depth_changes.append(depth_change(event, received))
        self.assertEqual(await store.write(batch), 60)  # one row per event
        self.assertGreater(len(old), 60 * 5)
        for at in [999, *times]:
            self.assertEqual(await store.depth_book(SYMBOL, at), old_book(old, at), at)
        # The ``depth`` view lists the same quotes, row for row, as the old table did.
        counts = await store.counts()
        self.assertEqual(counts["depth"], len(old))

    async def test_sandbox_depth_event_is_one_change(self) -> None:
        event = m.ProtoOADepthEvent(ctidTraderAccountId=9, symbolId=3, deletedQuotes=[4, 5])
        event.newQuotes.add(id=6, size=100, bid=11)
        event.newQuotes.add(id=7, size=200, ask=12)
        change = depth_change(event, 50)
        self.assertEqual(change.added, ((6, "bid", 11, 100), (7, "ask", 12, 200)))
        self.assertEqual(change.deleted, (4, 5))

    async def test_a_database_of_the_previous_schema_is_migrated(self) -> None:
        path = temp_db(self)
        path.parent.mkdir(parents=True)
        events = list(recorded_stream())
        old: list[DepthRow] = []
        with sqlite3.connect(path) as direct:
            for statement in OLD_SCHEMA:
                direct.execute(statement.format(serial="INTEGER PRIMARY KEY"))
            for n, event in enumerate(events[:30]):
                rows = legacy_rows(event, 1_000 + 10 * n)
                old.extend(rows)
                direct.executemany(
                    OLD_INSERT,
                    [
                        (r.symbol_id, r.received_ms, r.quote_id, r.side, r.price, r.size)
                        for r in rows
                    ],
                )
            direct.execute("INSERT INTO bars VALUES (1, 1, 100, 1, 2, 0, 1, 3, 'history')")
        direct.close()
        await self.check_migration(lambda: open_sqlite(reactor, path), events, old)

    async def check_migration(
        self,
        open_store: Callable[[], Deferred[MarketStore]],
        events: list[m.ProtoOADepthEvent],
        old: list[DepthRow],
    ) -> None:
        store = await open_store()
        batch = Batch()
        for n, event in enumerate(events[30:], start=30):
            received = 1_000 + 10 * n
            old.extend(legacy_rows(event, received))
            batch.depth_changes.append(depth_change(event, received))
        batch.bars[(1, 1, 101)] = BarRow(1, 1, 101, 1, 2, 0, 1, 4, "live")
        await store.write(batch)
        await store.close()
        store = await open_store()  # a second start: nothing to do
        self.addCleanup(store.close)
        for n in range(-1, len(events)):
            at = 1_000 + 10 * n
            self.assertEqual(await store.depth_book(SYMBOL, at), old_book(old, at), at)
        self.assertEqual([b.time_minutes for b in await store.bars(1, 1)], [100, 101])
        self.assertEqual(await store.last_history_minute(1, 1), 100)
        self.assertEqual((await store.counts())["depth"], len(old))


class PostgresDepthTests(DepthChangeTests):
    """The same against PostgreSQL (skipped without a server or psycopg)."""

    async def open_new(self) -> MarketStore:
        dsn = shared_server().new_schema()
        store = await open_postgres(reactor, dsn)
        self.addCleanup(store.close)
        return store

    async def test_a_database_of_the_previous_schema_is_migrated(self) -> None:
        server = shared_server()
        dsn = server.new_schema()
        events = list(recorded_stream())
        old: list[DepthRow] = []
        statements: list[tuple[str, tuple[object, ...]]] = [
            (s.format(serial="BIGSERIAL PRIMARY KEY"), ()) for s in OLD_SCHEMA
        ]
        for n, event in enumerate(events[:30]):
            for r in legacy_rows(event, 1_000 + 10 * n):
                old.append(r)
                statements.append(
                    (
                        OLD_INSERT.replace("?", "%s"),
                        (r.symbol_id, r.received_ms, r.quote_id, r.side, r.price, r.size),
                    )
                )
        statements.append(("INSERT INTO bars VALUES (1, 1, 100, 1, 2, 0, 1, 3, 'history')", ()))

        def create() -> None:
            for sql, params in statements:
                server.execute(dsn, sql, params)

        await deferToThread(create)
        await self.check_migration(lambda: open_postgres(reactor, dsn), events, old)
