"""Batching rows into few, ordered database transactions."""

from __future__ import annotations

from typing import Final, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ctrader_twisted.recorder._rows import BarRow, DepthRow, SpotRow
from ctrader_twisted.recorder.storage import Batch, StorageError

__all__ = ["BatchWriter", "BatchStore"]

DEFAULT_MAX_ROWS: Final = 1000
DEFAULT_MAX_DELAY: Final = 0.5
_RETRY_DELAY: Final = 1.0


class BatchStore(Protocol):
    """What :class:`BatchWriter` writes to (``MarketStore`` provides it)."""

    def write(self, batch: Batch) -> Deferred[int]:
        """Write one batch in one transaction; fire with the row count."""


class BatchWriter:
    """Collect rows and write them in batches, one transaction at a time, in arrival order.

    A batch is written when it reaches ``max_rows`` rows or ``max_delay`` seconds after its first
    row, whichever comes first.  Only one write runs at a time; rows arriving meanwhile form the
    next batch.  A failed write is retried (the batch is kept) after a second, until
    :meth:`abandon`.

    :param store: where batches go.
    :param clock: schedules the delayed flushes.
    """

    _log = Logger()

    def __init__(
        self,
        store: BatchStore,
        clock: IReactorTime,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_rows = max_rows
        self._max_delay = max_delay
        self._pending = Batch()
        self._first_pending_at: float | None = None
        self._writing: Batch | None = None
        self._timer: IDelayedCall | None = None
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._started = 0  # number of the last batch handed to the store
        self._done = 0  # number of the last batch the store confirmed
        self._abandoned = False
        self.rows_written = 0
        self.batches_written = 0
        self.write_failures = 0
        self.last_write_lag = 0.0

    @property
    def rows_pending(self) -> int:
        """Rows queued or being written."""
        return len(self._pending) + (len(self._writing) if self._writing is not None else 0)

    def add_spot(self, row: SpotRow) -> None:
        """Queue a spot row."""
        self._pending.spots.append(row)
        self._added()

    def add_bar(self, row: BarRow) -> None:
        """Queue a bar (replacing a queued version of the same bar)."""
        self._pending.bars[row.key] = row
        self._added()

    def add_depth(self, rows: list[DepthRow]) -> None:
        """Queue depth rows."""
        self._pending.depth.extend(rows)
        self._added()

    def flush(self) -> Deferred[None]:
        """Write everything queued so far.

        :returns: a fresh Deferred that fires with ``None`` once every row queued before the
            call is in the database (it waits through retries; it does not fail).
        """
        d: Deferred[None] = Deferred()
        if len(self._pending):
            target = self._started + 1
        elif self._writing is not None:
            target = self._started
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
        self._pending = Batch()
        self._first_pending_at = None
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.errback(StorageError(f"gave up with {lost} row(s) not written"))
        return lost

    def _added(self) -> None:
        if self._abandoned:
            self._pending = Batch()
            return
        if self._first_pending_at is None:
            self._first_pending_at = self._clock.seconds()
        if len(self._pending) >= self._max_rows:
            self._start_write()
        elif self._timer is None and self._writing is None:
            self._timer = self._clock.callLater(self._max_delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._start_write()

    def _start_write(self) -> None:
        if self._writing is not None or len(self._pending) == 0:
            return
        self._cancel_timer()
        batch, self._pending = self._pending, Batch()
        first_at, self._first_pending_at = self._first_pending_at, None
        self._writing = batch
        self._started += 1
        d = self._store.write(batch)
        d.addCallbacks(self._written, self._failed, callbackArgs=(first_at, self._started))

    def _written(self, count: int, first_at: float | None, number: int) -> None:
        self._writing = None
        self._done = number
        self.rows_written += count
        self.batches_written += 1
        if first_at is not None:
            self.last_write_lag = self._clock.seconds() - first_at
        self._after_write()

    def _failed(self, failure: Failure) -> None:
        self.write_failures += 1
        batch, self._writing = self._writing, None
        if self._abandoned:
            return
        if batch is not None:
            self._requeue(batch)
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

    def _requeue(self, batch: Batch) -> None:
        newer = self._pending
        batch.spots.extend(newer.spots)
        batch.depth.extend(newer.depth)
        batch.bars.update(newer.bars)
        self._pending = batch
        if self._first_pending_at is None:
            self._first_pending_at = self._clock.seconds()

    def _after_write(self) -> None:
        ready = [d for target, d in self._waiters if target <= self._done]
        self._waiters = [(t, d) for t, d in self._waiters if t > self._done]
        if len(self._pending) >= self._max_rows or (self._waiters and len(self._pending)):
            self._start_write()
        elif len(self._pending) and self._timer is None:
            self._timer = self._clock.callLater(self._max_delay, self._timer_fired)
        for waiter in ready:
            waiter.callback(None)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
