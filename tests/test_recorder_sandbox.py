"""The recorder against the sandbox with dropped connections and a restart; then the database.

The world (one clock, the sandbox in memory, recorder processes) is in ``recorder_support``;
here the store is SQLite.  ``test_recorder_postgres`` runs the same against PostgreSQL.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ctrader_twisted.recorder.storage import MarketStore, open_sqlite
from tests.recorder_support import World, assert_series_whole, reactor


def temp_db(case: TestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-sandbox-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory) / "market.sqlite3"


class RecorderUnderFaultsTests(TestCase):
    timeout = 120

    async def test_drops_and_restart_leave_no_gaps_or_duplicates(self) -> None:
        db = temp_db(self)

        def opener() -> Deferred[MarketStore]:
            return open_sqlite(reactor, db)

        world = World(self, opener)
        world.start_recorder()
        await world.run(7 * 60, drop_every=23)
        await world.stop_recorder()
        await world.run(3 * 60)  # the recorder is down for three minutes
        world.start_recorder()
        await world.run(6 * 60, drop_every=17)
        assert world.recorder is not None
        self.assertGreater(world.recorder.backfills_done, 5)
        await world.stop_recorder()
        self.assertGreaterEqual(world.reconnects, 20)

        store = await open_sqlite(reactor, db)
        self.addCleanup(store.close)
        await assert_series_whole(self, world, store)
        counts = await store.counts()
        self.assertGreater(counts["spots"], 500)
