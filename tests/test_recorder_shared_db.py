"""One database, several writers: what makes sharded recorders safe (issue 16, scale-out).

- Recorders starting at the same time create (and migrate) the schema one at a time
  (PostgreSQL: an advisory lock), so none of them fails on a half-created table.
- A bar is one row whoever writes it, and a live version (whose volume may lack ticks that did
  not move the price) never replaces one stored from history, in whatever order the shards'
  batches land.
- Batches written concurrently by several stores (the same bars in each, in different orders)
  all commit; every bar is there once.
"""

from __future__ import annotations

from twisted.internet.defer import DeferredList, gatherResults
from twisted.trial.unittest import TestCase

from ctrader_twisted.recorder._rows import BarRow
from ctrader_twisted.recorder.storage import Batch, MarketStore, open_postgres, open_sqlite
from tests.pgserver import shared_server
from tests.recorder_support import reactor
from tests.test_recorder_storage import temp_db


def bar(minute: int, source: str, close: int, symbol: int = 1) -> BarRow:
    return BarRow(symbol, 1, minute, 10, 20, 5, close, 9, source)  # type: ignore[arg-type]


def batch_of(*bars: BarRow) -> Batch:
    batch = Batch()
    for row in bars:
        batch.bars[row.key] = row
    return batch


class SQLiteSharedTests(TestCase):
    timeout = 60

    async def stores(self, count: int) -> list[MarketStore]:
        path = temp_db(self)
        stores = []
        for _ in range(count):
            store = await open_sqlite(reactor, path)
            self.addCleanup(store.close)
            stores.append(store)
        return stores

    async def test_live_never_replaces_history(self) -> None:
        first, second = await self.stores(2)
        await first.write(batch_of(bar(1, "history", 11), bar(2, "live", 12)))
        await second.write(batch_of(bar(1, "live", 99), bar(2, "history", 22)))
        await first.write(batch_of(bar(2, "live", 98), bar(3, "live", 13)))
        await second.write(batch_of(bar(3, "live", 23), bar(1, "history", 21)))
        rows = [(b.time_minutes, b.source, b.close) for b in await first.bars(1, 1)]
        # history replaces live and newer history; live replaces only live
        self.assertEqual(rows, [(1, "history", 21), (2, "history", 22), (3, "live", 23)])

    async def test_concurrent_writers_store_every_bar_once(self) -> None:
        stores = await self.stores(3)
        rounds = []
        for n, store in enumerate(stores):
            order = list(range(200)) if n % 2 == 0 else list(reversed(range(200)))
            rows = [
                bar(m, "history" if n == 1 else "live", 1000 + m, symbol=1 + m % 4) for m in order
            ]
            rounds.append(store.write(batch_of(*rows)))
        results = await DeferredList(rounds, consumeErrors=True)
        failed = [result for ok, result in results if not ok]
        # SQLite serializes writers (busy_timeout); none may fail.
        self.assertEqual(failed, [])
        total = 0
        for symbol in range(1, 5):
            rows = await stores[0].bars(symbol, 1)
            self.assertTrue(all(b.source == "history" for b in rows))
            total += len(rows)
        self.assertEqual(total, 200)


class PostgresSharedTests(SQLiteSharedTests):
    async def stores(self, count: int) -> list[MarketStore]:
        dsn = shared_server().new_schema()
        # All at once on an empty schema: the schema is created once, by one of them.
        stores: list[MarketStore] = await gatherResults(
            [open_postgres(reactor, dsn) for _ in range(count)]
        )
        for store in stores:
            self.addCleanup(store.close)
        return stores
