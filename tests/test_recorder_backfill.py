"""Backfill with many series: a live bar that closes before its series' backfill must not
make that backfill skip bars (issue 12, item 1).

The recorder backfills its series one at a time (5 history requests a second), so with 16
symbols and two periods a round takes several seconds.  Started a few seconds before a minute
(and five-minute) boundary, the live bars of every symbol close while most series still wait
for their turn.  Each series has its own cursor that only history fetches move, so every series
must still be complete: from ``history_minutes`` back (a fresh database) or from the bars stored
before a restart, up to the last closed bar, exactly once, with the sandbox's OHLC and volume.

Everything runs on one ``Clock`` through iosim (see ``recorder_support``), so the race is
reproduced exactly, every time.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ctrader_twisted.recorder._rows import PERIOD_MINUTES, bar_close_minute
from ctrader_twisted.recorder.storage import MarketStore, open_sqlite
from ctrader_twisted.sandbox.catalogue import SYMBOLS
from tests.recorder_support import START, World, ohlcv, reactor

M1, M5 = 1, 5
ALL_SYMBOLS = tuple(spec.name for spec in SYMBOLS.values())
#: A five-minute boundary after ``START``; recorders start three seconds before one.
BOUNDARY = (int(START) // 300 + 1) * 300


def temp_db(case: TestCase) -> Path:
    directory = tempfile.mkdtemp(prefix="ctrader-recorder-backfill-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory) / "market.sqlite3"


async def incomplete_series(
    world: World,
    store: MarketStore,
    periods: tuple[int, ...],
    reach: int,
) -> dict[str, str]:
    """Every series that is not whole, with what is wrong with it.

    A whole series starts no later than one period after ``reach`` (a minute), and from
    there to the last bar that closed a minute before now holds exactly the sandbox's bars
    (same open times, OHLC and volume), each once, in order, and nothing else.
    """
    end = world.clock.seconds()
    first_minutes = {(symbol_id, period): reach for symbol_id in SYMBOLS for period in periods}
    expected = await world.sandbox_series(first_minutes, end)
    problems: dict[str, str] = {}
    for (symbol_id, period), history in sorted(expected.items()):
        name = f"{SYMBOLS[symbol_id].name}/{period}"
        stored = await store.bars(symbol_id, period)
        times = [bar.time_minutes for bar in stored]
        if not stored:
            problems[name] = "no bars"
            continue
        if times != sorted(set(times)):
            problems[name] = "out of order or repeated"
            continue
        if times[0] > reach + PERIOD_MINUTES[period]:  # a minute late if fetched after it
            problems[name] = f"starts {times[0] - reach} minute(s) after the history start"
            continue
        closed = [
            bar
            for bar in history
            if bar.time_minutes >= times[0]
            and bar_close_minute(period, bar.time_minutes) * 60 <= end - 60
        ]
        newest = closed[-1].time_minutes if closed else times[0]
        got = {bar.time_minutes: ohlcv(bar) for bar in stored if bar.time_minutes <= newest}
        want = {bar.time_minutes: ohlcv(bar) for bar in closed}
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        differ = sorted(t for t in set(want) & set(got) if want[t] != got[t])
        if missing or extra or differ:
            problems[name] = f"missing {missing}, unexpected {extra}, different {differ}"
    return problems


class OvertakingLiveBarsTests(TestCase):
    timeout = 120

    def open_world(self) -> tuple[World, Path]:
        db = temp_db(self)

        def opener() -> Deferred[MarketStore]:
            return open_sqlite(reactor, db)

        return World(self, opener), db

    async def test_fresh_database_gets_the_history_of_every_series(self) -> None:
        world, db = self.open_world()
        world.clock.advance(BOUNDARY - 3 - world.clock.seconds())
        reach = int(world.clock.seconds() // 60) - 20
        world.start_recorder(symbols=ALL_SYMBOLS, periods=(M1, M5), history_minutes=20)
        await world.run(75)
        await world.stop_recorder()

        store = await open_sqlite(reactor, db)
        self.addCleanup(store.close)
        self.assertEqual(await incomplete_series(world, store, (M1, M5), reach), {})

    maxDiff = None

    async def test_restart_before_a_boundary_leaves_no_gap(self) -> None:
        world, db = self.open_world()
        reach = int(world.clock.seconds() // 60) - 10
        world.start_recorder(symbols=ALL_SYMBOLS, periods=(M1, M5), history_minutes=10)
        await world.run(60)
        await world.stop_recorder()
        # Down for a few minutes, back three seconds before a five-minute boundary.
        await world.run(BOUNDARY + 5 * 60 - 3 - world.clock.seconds())
        world.start_recorder(symbols=ALL_SYMBOLS, periods=(M1, M5), history_minutes=10)
        await world.run(75)
        await world.stop_recorder()

        store = await open_sqlite(reactor, db)
        self.addCleanup(store.close)
        self.assertEqual(await incomplete_series(world, store, (M1, M5), reach), {})

    async def test_connection_dropped_every_few_seconds_still_backfills_every_series(
        self,
    ) -> None:
        # Each connection lives for fewer history requests than there are series: the queue
        # must carry on where the last connection stopped instead of starting over.
        world, db = self.open_world()
        reach = int(world.clock.seconds() // 60) - 10
        world.start_recorder(symbols=ALL_SYMBOLS, periods=(M1, M5), history_minutes=10)
        await world.run(150, drop_every=2)
        await world.stop_recorder()
        self.assertGreaterEqual(world.reconnects, 20)

        store = await open_sqlite(reactor, db)
        self.addCleanup(store.close)
        self.assertEqual(await incomplete_series(world, store, (M1, M5), reach), {})
