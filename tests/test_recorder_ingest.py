"""The batch writer under a slow database (Clock, a fake store whose writes take seconds).

Issue 16: batches had no size cap, so one slow commit made the next batch bigger (write stalls
of several seconds, pending rows peaking at 33k-123k).  Now every batch holds at most
``max_rows`` rows, the queue is bounded for depth (shed, counted and logged), spots and bars are
never dropped, and a warning says when the writer falls behind.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.recorder._rows import BarRow, DepthChange, SpotRow
from ctrader_twisted.recorder._writer import BatchWriter
from ctrader_twisted.recorder.storage import Batch, StorageError
from tests.recorder_support import capture_logs, logged


class SlowStore:
    """Each write takes ``seconds`` of the clock (plus ``per_row`` per row) and then succeeds."""

    def __init__(self, clock: Clock, seconds: float, per_row: float = 0.0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.per_row = per_row
        self.batches: list[Batch] = []
        self.running = 0

    def write(self, batch: Batch) -> Deferred[int]:
        assert self.running == 0, "one write at a time"
        self.running += 1
        d: Deferred[int] = Deferred()

        def done() -> None:
            self.running -= 1
            self.batches.append(batch)
            d.callback(len(batch))

        self.clock.callLater(self.seconds + self.per_row * len(batch), done)
        return d


def drain(clock: Clock, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        clock.advance(0.1)


def change(n: int) -> DepthChange:
    return DepthChange(1, n, ((n, "bid", 110000, 100),), (n - 1,))


def bar(minute: int, source: str = "live", close: int = 1) -> BarRow:
    return BarRow(1, 1, minute, 1, 2, 0, close, 3, source)  # type: ignore[arg-type]


class BoundedBatchTests(SynchronousTestCase):
    def feed(self, clock: Clock, writer: BatchWriter, seconds: float, per_second: int) -> None:
        """Per 10 ms: spots and depth changes at ``per_second`` each, and a bar per second."""
        steps = int(seconds * 100)
        for step in range(steps):
            for _ in range(per_second // 100):
                writer.add_spot(SpotRow(1, round(clock.seconds() * 1000), 1, 2))
                writer.add_depth_change(change(step))
            if step % 100 == 0:
                writer.add_bar(bar(step // 100))
            clock.advance(0.01)

    def test_a_stall_never_makes_a_batch_bigger_than_the_cap(self) -> None:
        clock = Clock()
        store = SlowStore(clock, 0.05, per_row=0.0001)
        writer = BatchWriter(store, clock, max_rows=500, max_pending=10**6)
        self.feed(clock, writer, 2.0, 1000)
        store.seconds = 4.0  # one stall of four seconds
        self.feed(clock, writer, 1.0, 1000)
        store.seconds = 0.05
        self.feed(clock, writer, 5.0, 1000)
        drain(clock, 30)
        self.assertEqual(writer.rows_pending, 0)
        sizes = [len(b) for b in store.batches]
        self.assertLessEqual(max(sizes), 500)
        # Every row, once and in order, with nothing shed.
        spots = [s.received_ms for b in store.batches for s in b.spots]
        self.assertEqual(spots, sorted(spots))
        self.assertEqual(len(spots), 8 * 1000)
        self.assertEqual(sum(len(b.depth_changes) for b in store.batches), 8 * 1000)
        self.assertEqual(writer.depth_rows_shed, 0)
        # Writes after the stall stay short (capped batches): the longest is the stall itself.
        self.assertGreaterEqual(writer.max_write_seconds, 4.0)
        self.assertLess(writer.max_write_seconds, 4.0 + 500 * 0.0001 + 0.02)

    def test_depth_shed_when_the_queue_is_full_but_never_spots_or_bars(self) -> None:
        clock = Clock()
        store = SlowStore(clock, 0.05)
        events = capture_logs(self)
        writer = BatchWriter(store, clock, max_rows=100, max_pending=1000, warn_interval=30)
        store.seconds = 10.0
        self.feed(clock, writer, 5.0, 1000)  # 10,000 rows of input while a write hangs
        self.assertGreater(writer.depth_rows_shed, 0)
        store.seconds = 0.01
        drain(clock, 60)
        self.assertEqual(writer.rows_pending, 0)
        spots = sum(len(b.spots) for b in store.batches)
        bars = sum(len(b.bars) for b in store.batches)
        depth = sum(len(b.depth_changes) for b in store.batches)
        self.assertEqual((spots, bars), (5000, 5))  # all of them
        self.assertEqual(depth + writer.depth_rows_shed, 5000)  # the rest is counted
        warnings = logged(events, LogLevel.warn, "depth shed")
        self.assertEqual(len(warnings), 1, warnings)  # one per warn_interval, not per row
        self.assertIn("spots and bars are kept", warnings[0])

    def test_falling_behind_is_logged_once_per_interval_and_catching_up(self) -> None:
        clock = Clock()
        store = SlowStore(clock, 3.0)
        events = capture_logs(self)
        writer = BatchWriter(store, clock, max_rows=100, behind_after=2.0, warn_interval=30)
        self.feed(clock, writer, 12.0, 200)
        behind = logged(events, LogLevel.warn, "fall behind")
        self.assertEqual(len(behind), 1, behind)
        self.assertRegex(behind[0], r"\d+ rows pending, the oldest waiting \d+\.\d s")
        store.seconds = 0.01
        drain(clock, 120)
        self.assertEqual(writer.rows_pending, 0)
        self.assertEqual(len(logged(events, LogLevel.info, "caught up")), 1)

    def test_history_bar_not_replaced_by_a_later_live_version_in_the_queue(self) -> None:
        clock = Clock()
        store = SlowStore(clock, 0.0)
        writer = BatchWriter(store, clock, max_rows=10)
        writer.add_bar(bar(5, "history", close=7))
        writer.add_bar(bar(5, "live", close=8))
        writer.add_bar(bar(6, "live", close=1))
        writer.add_bar(bar(6, "history", close=2))
        writer.flush()
        clock.advance(0)
        rows = [(b.time_minutes, b.source, b.close) for b in store.batches[0].bars.values()]
        self.assertEqual(rows, [(5, "history", 7), (6, "history", 2)])

    def test_a_failed_batch_stays_first_and_capped(self) -> None:
        clock = Clock()
        calls: list[tuple[Batch, Deferred[int]]] = []

        class Failing:
            def write(self, batch: Batch) -> Deferred[int]:
                d: Deferred[int] = Deferred()
                calls.append((batch, d))
                return d

        writer = BatchWriter(Failing(), clock, max_rows=4)
        for n in range(10):
            writer.add_spot(SpotRow(1, n, 1, 2))
        _, d = calls.pop()
        capture_logs(self)
        d.errback(StorageError("down"))
        clock.advance(1.0)
        retried, d = calls.pop()
        self.assertEqual([s.received_ms for s in retried.spots], [0, 1, 2, 3])
        d.callback(4)
        following, d = calls.pop()
        self.assertEqual([s.received_ms for s in following.spots], [4, 5, 6, 7])
