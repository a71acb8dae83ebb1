"""Batching rows into few, ordered, bounded database transactions.

Rows are queued in *chunks* of at most ``max_rows`` rows, in arrival order; each write takes
the oldest chunk, so a batch never grows past ``max_rows`` however long the previous write took
(a slow commit makes the queue longer, not the next transaction bigger).  The queue is bounded
for depth only: once ``max_pending`` rows wait, further depth changes are shed (counted and
logged); spots and bars are always queued, bars above all (they are what the backfill relies
on).  While the oldest queued row has waited ``behind_after`` seconds or more when a write
ends, a warning says how far behind the writer is (at most one every ``warn_interval``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ctrader_twisted.recorder._rows import BarRow, DepthChange, DepthRow, SpotRow
from ctrader_twisted.recorder.storage import Batch, StorageError

__all__ = ["BatchWriter", "BatchStore"]

DEFAULT_MAX_ROWS: Final = 1000
DEFAULT_MAX_DELAY: Final = 0.5
DEFAULT_MAX_PENDING: Final = 200_000
DEFAULT_BEHIND_AFTER: Final = 2.0
DEFAULT_WARN_INTERVAL: Final = 30.0
_RETRY_DELAY: Final = 1.0


class BatchStore(Protocol):
    """What :class:`BatchWriter` writes to (``MarketStore`` provides it)."""

    def write(self, batch: Batch) -> Deferred[int]:
        """Write one batch in one transaction; fire with the row count."""


@dataclass(slots=True)
class _Chunk:
    number: int
    first_at: float
    batch: Batch = field(default_factory=Batch)
    rows: int = 0  # len(batch), kept up to date by the writer


class BatchWriter:
    """Collect rows and write them in bounded batches, one transaction at a time, in order.

    A batch is written when it reaches ``max_rows`` rows or ``max_delay`` seconds after its first
    row, whichever comes first.  Only one write runs at a time; rows arriving meanwhile queue up
    in further batches of at most ``max_rows`` rows.  A failed write is retried (the batch is
    kept, ahead of the newer ones) after a second, until :meth:`abandon`.

    :param store: where batches go.
    :param clock: schedules the delayed flushes.
    :param max_rows: rows per batch at most (a depth change is one row).
    :param max_delay: seconds a row may wait before its batch is written (when the writer is
        idle).
    :param max_pending: rows queued at most before depth changes are shed; spots and bars are
        never shed (the queue may pass this bound by them, with a warning).
    :param behind_after: seconds the oldest queued row may wait before a warning says the writer
        falls behind.
    :param warn_interval: seconds between two such warnings (and between shed warnings).
    """

    _log = Logger()

    def __init__(
        self,
        store: BatchStore,
        clock: IReactorTime,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_pending: int = DEFAULT_MAX_PENDING,
        behind_after: float = DEFAULT_BEHIND_AFTER,
        warn_interval: float = DEFAULT_WARN_INTERVAL,
    ) -> None:
        if max_rows < 1 or max_pending < max_rows:
            raise ValueError("max_rows must be at least 1 and max_pending at least max_rows")
        self._store = store
        self._clock = clock
        self._max_rows = max_rows
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._behind_after = behind_after
        self._warn_interval = warn_interval
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0  # rows in self._chunks
        self._writing: _Chunk | None = None
        self._write_started_at = 0.0
        self._timer: IDelayedCall | None = None
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._numbered = 0  # number of the newest chunk
        self._done = 0  # every chunk up to this number is written
        self._abandoned = False
        self._behind_warned_at: float | None = None
        self._shed_warned_at: float | None = None
        self._shed_since_warning = 0
        self.rows_written = 0
        self.batches_written = 0
        self.write_failures = 0
        self.last_write_lag = 0.0
        #: Longest time one write took (seconds), and the most rows that were ever pending.
        self.max_write_seconds = 0.0
        self.max_rows_pending = 0
        #: Depth changes (rows) dropped because ``max_pending`` rows were already queued.
        self.depth_rows_shed = 0

    @property
    def rows_pending(self) -> int:
        """Rows queued or being written."""
        return self._queued + (self._writing.rows if self._writing is not None else 0)

    @property
    def oldest_wait(self) -> float:
        """Seconds the oldest row not yet written has waited (0 when none waits)."""
        first = self._writing or (self._chunks[0] if self._chunks else None)
        return 0.0 if first is None else self._clock.seconds() - first.first_at

    def add_spot(self, row: SpotRow) -> None:
        """Queue a spot row (never shed)."""
        chunk = self._open_chunk()
        if chunk is not None:
            chunk.batch.spots.append(row)
            chunk.rows += 1
            self._added(1)

    def add_bar(self, row: BarRow) -> None:
        """Queue a bar (replacing a version of the same bar in the newest batch; never shed).

        A live version does not replace a queued history version (nor, in the database, a
        stored one).
        """
        chunk = self._open_chunk()
        if chunk is not None:
            bars = chunk.batch.bars
            queued = bars.get(row.key)
            if queued is not None and queued.source == "history" and row.source == "live":
                return  # history is final: the database would not take this one either
            new = queued is None
            if not new:
                del bars[row.key]  # the newer version goes last, after what it follows
            bars[row.key] = row
            chunk.rows += 1 if new else 0
            self._added(1 if new else 0)

    def add_depth(self, rows: list[DepthRow]) -> None:
        """Queue depth rows (old form: one row per quote); shed when the queue is full."""
        if self._shed(len(rows)):
            return
        chunk = self._open_chunk()
        if chunk is not None:
            chunk.batch.depth.extend(rows)
            chunk.rows += len(rows)
            self._added(len(rows))

    def add_depth_change(self, change: DepthChange) -> None:
        """Queue one depth event's changes (one row); shed when the queue is full."""
        if self._shed(1):
            return
        chunk = self._open_chunk()
        if chunk is not None:
            chunk.batch.depth_changes.append(change)
            chunk.rows += 1
            self._added(1)

    def flush(self) -> Deferred[None]:
        """Write everything queued so far.

        :returns: a fresh Deferred that fires with ``None`` once every row queued before the
            call is in the database (it waits through retries; it does not fail but after
            :meth:`abandon`).
        """
        d: Deferred[None] = Deferred()
        if self._chunks:
            target = self._chunks[-1].number
        elif self._writing is not None:
            target = self._writing.number
        else:
            d.callback(None)
            return d
        self._waiters.append((target, d))
        self._start_write()
        return d

    def stop(self) -> None:
        """Cancel the delayed-flush timer (call after the final :meth:`flush`)."""
        self._cancel_timer()

    def abandon(self) -> int:
        """Give up: drop the queued rows and retry nothing any more (a stop that timed out).

        A write already running is left to finish (its rows count as written if it succeeds);
        waiting :meth:`flush` Deferreds fail with :class:`StorageError`.  Later rows are
        dropped.

        :returns: the number of rows not written: those queued, plus those of a write still
            running (whose outcome is not known yet).
        """
        lost = self.rows_pending
        self._abandoned = True
        self._cancel_timer()
        self._chunks.clear()
        self._queued = 0
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.errback(StorageError(f"gave up with {lost} row(s) not written"))
        return lost

    # Queueing

    def _open_chunk(self) -> _Chunk | None:
        """The chunk new rows go to (a new one when the newest is full); None once abandoned."""
        if self._abandoned:
            return None
        if not self._chunks or self._chunks[-1].rows >= self._max_rows:
            self._numbered += 1
            self._chunks.append(_Chunk(self._numbered, self._clock.seconds()))
        return self._chunks[-1]

    def _shed(self, rows: int) -> bool:
        if self.rows_pending < self._max_pending:
            return False
        self.depth_rows_shed += rows
        self._shed_since_warning += rows
        now = self._clock.seconds()
        if self._shed_warned_at is None or now - self._shed_warned_at >= self._warn_interval:
            self._shed_warned_at = now
            self._log.warn(
                "Database writes are {behind:.1f} s behind with {pending} rows pending: "
                "depth shed ({rows} depth row(s) dropped since the last warning, {total} in "
                "all); spots and bars are kept",
                behind=self.oldest_wait,
                pending=self.rows_pending,
                rows=self._shed_since_warning,
                total=self.depth_rows_shed,
            )
            self._shed_since_warning = 0
        return True

    def _added(self, rows: int) -> None:
        self._queued += rows
        pending = self.rows_pending
        if pending > self.max_rows_pending:
            self.max_rows_pending = pending
        if self._writing is not None:
            return
        if len(self._chunks) > 1 or self._chunks[0].rows >= self._max_rows:
            self._start_write()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._max_delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._start_write()

    # Writing

    def _start_write(self) -> None:
        if self._writing is not None or not self._chunks:
            return
        self._cancel_timer()
        chunk = self._writing = self._chunks.popleft()
        self._queued -= chunk.rows
        self._write_started_at = self._clock.seconds()
        d = self._store.write(chunk.batch)
        d.addCallbacks(self._written, self._failed, callbackArgs=(chunk,))

    def _written(self, count: int, chunk: _Chunk) -> None:
        self._writing = None
        now = self._clock.seconds()
        self.max_write_seconds = max(self.max_write_seconds, now - self._write_started_at)
        self._done = chunk.number
        self.rows_written += count
        self.batches_written += 1
        self.last_write_lag = now - chunk.first_at
        self._check_behind(now)
        self._after_write()

    def _check_behind(self, now: float) -> None:
        behind = self.oldest_wait
        if behind < self._behind_after:
            if self._behind_warned_at is not None and not self._chunks:
                self._behind_warned_at = None
                self._log.info("Database writes caught up")
            return
        if self._behind_warned_at is None or now - self._behind_warned_at >= self._warn_interval:
            self._behind_warned_at = now
            self._log.warn(
                "Database writes fall behind: {pending} rows pending, the oldest waiting "
                "{behind:.1f} s (last write took {took:.1f} s)",
                pending=self.rows_pending,
                behind=behind,
                took=now - self._write_started_at,
            )

    def _failed(self, failure: Failure) -> None:
        self.write_failures += 1
        chunk, self._writing = self._writing, None
        if self._abandoned:
            return
        if chunk is not None:
            self._requeue(chunk)
        if isinstance(failure.value, StorageError):  # the database's own error: one line
            self._log.warn(
                "Database write failed ({error}); {rows} row(s) kept, retrying in {delay} s",
                error=str(failure.value),
                rows=self.rows_pending,
                delay=_RETRY_DELAY,
            )
        else:
            self._log.failure(
                "Database write failed; retrying in {delay} s", failure, delay=_RETRY_DELAY
            )
        self._cancel_timer()
        self._timer = self._clock.callLater(_RETRY_DELAY, self._timer_fired)

    def _requeue(self, chunk: _Chunk) -> None:
        """Put a failed chunk back first, merged with the next one if both fit in one batch."""
        following = self._chunks[0] if self._chunks else None
        if following is not None and chunk.rows + following.rows <= self._max_rows:
            self._chunks.popleft()
            self._queued -= following.rows
            newer = following.batch
            chunk.batch.spots.extend(newer.spots)
            chunk.batch.depth.extend(newer.depth)
            chunk.batch.depth_changes.extend(newer.depth_changes)
            for key, row in newer.bars.items():
                chunk.batch.bars.pop(key, None)
                chunk.batch.bars[key] = row
            chunk.number = following.number
        chunk.rows = len(chunk.batch)
        self._queued += chunk.rows
        self._chunks.appendleft(chunk)

    def _after_write(self) -> None:
        ready = [d for target, d in self._waiters if target <= self._done]
        self._waiters = [(t, d) for t, d in self._waiters if t > self._done]
        if self._chunks and (
            len(self._chunks) > 1
            or self._chunks[0].rows >= self._max_rows
            or self._waiters
            or self._clock.seconds() - self._chunks[0].first_at >= self._max_delay
        ):
            self._start_write()
        elif self._chunks and self._timer is None:
            delay = self._max_delay - (self._clock.seconds() - self._chunks[0].first_at)
            self._timer = self._clock.callLater(max(delay, 0.0), self._timer_fired)
        for waiter in ready:
            waiter.callback(None)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
