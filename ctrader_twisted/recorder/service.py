"""The recorder service: subscribe, store, backfill after every reconnect and restart.

:class:`Recorder` is a :class:`~twisted.application.service.Service` that uses a running
``Client`` (started by the same parent service, see :mod:`ctrader_twisted.recorder.tap`).  On
start it opens the store, authorizes the account, resolves the symbol names, subscribes to spots
(with server timestamps), live trendbars of each period and optionally depth, and backfills each
bar series from its cursor (inclusive) up to now.  After every reconnect (``client.on_ready``) it
drops the bars in progress and backfills again, so each series has no gaps; bars are upserted on
(symbol, period, open time), so it has no duplicates either.  Only closed bars are stored: a live
bar is final once the next one starts, and each closed live bar is then confirmed from history
(its last live update may miss ticks that did not move the price).

Each series (symbol, period) has one backfill cursor: the open time of the newest bar a finished
history fetch returned.  Only history fetches move it, one complete window at a time, so a live
bar that closes (and is stored) before its series' turn in the backfill queue cannot make that
backfill start after bars it has not stored.  After a restart the cursor is the newest bar
stored from history (:meth:`~ctrader_twisted.recorder.storage.MarketStore.last_history_minute`);
a series without one starts ``history_minutes`` back.  Series are backfilled one at a time, in
queue order; one interrupted by a lost connection keeps its place at the front.

Start-up errors that can pass (a database server not up yet, an unreachable server, a lost
connection) are logged as warnings and retried every few seconds.  Permanent ones (a database
that cannot be opened for good, refused credentials, an unknown symbol: see
:func:`~ctrader_twisted.recorder._fatal.is_fatal`) end the start: the error is logged at
critical level, kept in :attr:`Recorder.fatal_error` and handed to the :meth:`Recorder.on_fatal`
callbacks (``twistd ctrader-record`` and ``ctrader-twisted record`` stop the process).  When the
database fails under a backfill, that series is backfilled again a few seconds later.

With a :class:`~ctrader_twisted.oauth.TokenRefresher`, the account is authorized through
:func:`~ctrader_twisted.oauth.keep_client_authorized`: an expired token is refreshed first, and
the account is authorized again after every refresh.

A status line is logged every ``status_interval`` seconds.  Stopping the service flushes every
queued row and closes the database; if the database keeps failing, it gives up after
``stop_timeout`` seconds and logs how many rows were not written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from difflib import get_close_matches
from typing import Final, Protocol, TypeVar

from google.protobuf.message import Message
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ctrader_twisted import messages as m
from ctrader_twisted._callbacks import remover
from ctrader_twisted._failure import failure_of
from ctrader_twisted._models_symbols import RequestClient, UnknownSymbol
from ctrader_twisted._oauth_accounts import AccountKeeper, keep_client_authorized
from ctrader_twisted._oauth_refresh import TokenRefresher
from ctrader_twisted.errors import ApplicationAuthError, CTraderError, OpenApiError
from ctrader_twisted.history import iter_trendbars
from ctrader_twisted.recorder._fatal import is_fatal
from ctrader_twisted.recorder._live import LiveBars, bar_row, depth_change, spot_row
from ctrader_twisted.recorder._rows import BarRow, bar_close_minute
from ctrader_twisted.recorder._writer import BatchWriter
from ctrader_twisted.recorder.storage import MarketStore, StorageError

__all__ = ["Recorder", "RecorderClient", "RecorderConfig"]

_SETUP_RETRY: Final = 5.0
_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


class RecorderClient(RequestClient, Protocol):
    """The parts of ``ctrader_twisted.Client`` the recorder uses."""

    reconnect_count: int

    def when_ready(self) -> Deferred[None]: ...
    def on_ready(self, callback: Callable[[], object]) -> Callable[[], None]: ...
    def on_fatal(
        self, callback: Callable[[ApplicationAuthError], object]
    ) -> Callable[[], None]: ...
    def on(
        self, message_type: type[_M], callback: Callable[[_M], object]
    ) -> Callable[[], None]: ...
    def authorize_account(
        self, account_id: int, access_token: str
    ) -> Deferred[m.ProtoOAAccountAuthRes]: ...
    def accounts_authorized_with(self, access_token: str) -> frozenset[int]: ...
    def subscribe_spots(
        self, account_id: int, symbol_ids: list[int], timestamps: bool = False
    ) -> Deferred[m.ProtoOASubscribeSpotsRes]: ...
    def subscribe_live_trendbars(
        self, account_id: int, symbol_id: int, period: int
    ) -> Deferred[m.ProtoOASubscribeLiveTrendbarRes]: ...
    def subscribe_depth(
        self, account_id: int, symbol_ids: list[int]
    ) -> Deferred[m.ProtoOASubscribeDepthQuotesRes]: ...


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    """What to record.

    :ivar account_id: the ``ctidTraderAccountId`` whose symbols are recorded.
    :ivar access_token: OAuth access token for that account (never shown); unused when the
        recorder has a token refresher (its valid token is used).
    :ivar symbols: symbol names (``"EURUSD"``) or numeric ids as text.
    :ivar periods: trendbar periods (``ProtoOATrendbarPeriod`` values); M1 by default.
    :ivar depth: also record depth of market.
    :ivar history_minutes: a series with no bar from history yet (a new database or symbol)
        is backfilled from this many minutes before now.
    :ivar status_interval: seconds between status lines.
    :ivar max_batch_rows: rows per batch (one transaction) at most; a batch is written as
        soon as it is full (rows that arrive while a write is running queue up in further
        batches).
    :ivar max_batch_delay: seconds a row may wait before its batch is written.
    :ivar max_pending_rows: rows queued at most before depth changes are shed (counted and
        logged); spots and bars are never shed.
    :ivar stop_timeout: seconds a stop waits for the database to take the queued rows; then it
        gives up, logs how many rows were not written, and completes.
    """

    account_id: int
    access_token: str = field(repr=False)
    symbols: tuple[str, ...]
    periods: tuple[int, ...] = (1,)
    depth: bool = False
    history_minutes: int = 60
    status_interval: float = 60.0
    max_batch_rows: int = 1000
    max_batch_delay: float = 0.5
    max_pending_rows: int = 200_000
    stop_timeout: float = 30.0


class Recorder(Service):
    """Record market data from ``client`` into the store opened by ``open_store``.

    :param client: a client service, started separately (before this service).
    :param open_store: opens the database; called once per start.
    :param config: what to record.
    :param clock: the clock for batching, status lines and bar closing.
    :param refresher: the token refresher of ``config.account_id``'s token, if any: the
        account is then authorized with its valid token, refreshed first when expired, and
        again after every refresh.

    :ivar fatal_error: the permanent error that ended the start, or ``None``.
    """

    _log = Logger()

    def __init__(
        self,
        client: RecorderClient,
        open_store: Callable[[], Deferred[MarketStore]],
        config: RecorderConfig,
        clock: IReactorTime,
        *,
        refresher: TokenRefresher | None = None,
    ) -> None:
        self._client = client
        self._refresher = refresher
        self._keeper: AccountKeeper | None = None
        self._fatal_callbacks: list[Callable[[BaseException], object]] = []
        self.fatal_error: BaseException | None = None
        self._open_store = open_store
        self.config = config
        self._clock = clock
        self.store: MarketStore | None = None
        self.writer: BatchWriter | None = None
        self.symbol_ids: dict[int, str] = {}
        self._live = LiveBars(self._bar_closed, self._first_live_bar)
        self._removers: list[Callable[[], None]] = []
        self._status = LoopingCall(self._log_status)
        self._status.clock = clock
        self._setup: Deferred[None] | None = None
        self._ready_for_backfill = False
        self._backfill_queue: list[tuple[int, int]] = []
        self._backfilling: Deferred[None] | None = None
        self._backfill_retries: dict[tuple[int, int], IDelayedCall] = {}
        self._steps_done: set[str] = set()
        # Backfill cursor per series: the open minute of the newest bar a finished history
        # fetch covered (every closed bar up to it is stored or queued); live bars never move
        # it.  Read from the store the first time a series is backfilled.
        self._cursors: dict[tuple[int, int], int | None] = {}
        # Per series, the oldest closed live bar not yet confirmed from history.
        self._unconfirmed: dict[tuple[int, int], int] = {}
        self.events_received = 0
        self.backfills_done = 0
        self._last_event_at: float | None = None
        self._feed_lag_ms: int | None = None

    def __repr__(self) -> str:
        return f"Recorder(account={self.config.account_id}, symbols={self.config.symbols!r})"

    # Service

    def on_fatal(self, callback: Callable[[BaseException], object]) -> Callable[[], None]:
        """Call ``callback(error)`` when a permanent error ends the start (at once if one did).

        :returns: a function that removes the callback.
        """
        self._fatal_callbacks.append(callback)
        if self.fatal_error is not None:
            callback(self.fatal_error)
        return remover(self._fatal_callbacks, callback)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.fatal_error = None
        if self._refresher is not None:
            self._keeper = keep_client_authorized(self._client, self._refresher)
        self._setup = Deferred.fromCoroutine(self._start())
        self._setup.addErrback(self._setup_failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _start(self) -> None:
        self.store = await self._open_store_retrying()
        self.writer = BatchWriter(
            self.store,
            self._clock,
            max_rows=self.config.max_batch_rows,
            max_delay=self.config.max_batch_delay,
            max_pending=max(self.config.max_pending_rows, self.config.max_batch_rows),
        )
        self._removers.append(self._client.on(m.ProtoOASpotEvent, self._on_spot))
        self._removers.append(self._client.on(m.ProtoOADepthEvent, self._on_depth))
        self._removers.append(self._client.on_ready(self._reconnected))
        # Credentials refused later (revoked while recording): the client stops for good.
        self._removers.append(self._client.on_fatal(self._client_fatal))
        if self.config.status_interval > 0:
            self._status.start(self.config.status_interval, now=False)
        while self.running:
            try:
                await self._client.when_ready()
                await self._subscribe()
            except CTraderError as error:
                if is_fatal(error):
                    raise
                self._log.warn(
                    "Recorder setup interrupted ({error}); retrying in {delay} s",
                    error=str(error),
                    delay=_SETUP_RETRY,
                )
                await deferLater(self._clock, _SETUP_RETRY)
                continue
            break
        if self.running:
            self._ready_for_backfill = True
            self._queue_backfill_all()

    async def _open_store_retrying(self) -> MarketStore:
        while True:
            try:
                return await self._open_store()
            except StorageError as error:
                if error.permanent:
                    raise
                self._log.warn(
                    "{error}; retrying in {delay} s", error=str(error), delay=_SETUP_RETRY
                )
            await deferLater(self._clock, _SETUP_RETRY)

    def _client_fatal(self, error: ApplicationAuthError) -> None:
        self._setup_failed(failure_of(error))

    def _setup_failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, CancelledError) or not self.running or self.fatal_error is not None:
            return
        assert error is not None
        self.fatal_error = error
        if isinstance(error, CTraderError):
            self._log.critical("The recorder cannot start: {error}", error=str(error))
        else:  # not one of ours: a bug, so keep the traceback
            self._log.failure("The recorder cannot start", failure, LogLevel.critical)
        for callback in list(self._fatal_callbacks):
            try:
                callback(error)
            except Exception:
                self._log.failure("on_fatal callback {callback!r} raised", callback=callback)

    async def _subscribe(self) -> None:
        account, client = self.config.account_id, self._client
        if "auth" not in self._steps_done:
            if self._keeper is not None:  # refreshes an expired token first
                await self._keeper.authorize(account)
            else:
                await client.authorize_account(account, self.config.access_token)
            self._steps_done.add("auth")
        if not self.symbol_ids:
            self.symbol_ids = await self._resolve_symbols()
            assert self.store is not None
            await self.store.save_symbols(self.symbol_ids)
        ids = sorted(self.symbol_ids)
        if "spots" not in self._steps_done:
            await _idempotent(client.subscribe_spots(account, ids, timestamps=True))
            self._steps_done.add("spots")
        for symbol_id in ids:
            for period in self.config.periods:
                step = f"bars:{symbol_id}:{period}"
                if step not in self._steps_done:
                    await _idempotent(client.subscribe_live_trendbars(account, symbol_id, period))
                    self._steps_done.add(step)
        if self.config.depth and "depth" not in self._steps_done:
            await _idempotent(client.subscribe_depth(account, ids))
            self._steps_done.add("depth")
        self._log.info(
            "Recording {count} symbol(s) of account {account}", count=len(ids), account=account
        )

    async def _resolve_symbols(self) -> dict[int, str]:
        request = m.ProtoOASymbolsListReq(ctidTraderAccountId=self.config.account_id)
        listing = await self._client.request(request)
        by_name = {s.symbolName.upper(): s.symbolId for s in listing.symbol}
        by_id = {s.symbolId: s.symbolName for s in listing.symbol}
        resolved: dict[int, str] = {}
        for wanted in self.config.symbols:
            if wanted.isdigit() and int(wanted) in by_id:
                resolved[int(wanted)] = by_id[int(wanted)]
            elif wanted.upper() in by_name:
                resolved[by_name[wanted.upper()]] = wanted.upper()
            else:
                close = get_close_matches(wanted.upper(), list(by_name), n=3)
                raise UnknownSymbol(wanted, close)
        return resolved

    async def _stop(self) -> None:
        deadline = self._clock.seconds() + self.config.stop_timeout
        if self._status.running:
            self._status.stop()
        for remove in self._removers:
            remove()
        self._removers.clear()
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self._setup is not None:
            self._setup.cancel()
        for retry in self._backfill_retries.values():
            retry.cancel()
        self._backfill_retries.clear()
        if self._backfilling is not None:
            # Ends soon: the loop stops after this series, and if the client is stopping too
            # its requests fail at once (the failure is logged and nothing is lost).
            await _at_most(self._backfilling, deadline - self._clock.seconds(), self._clock)
        if self.writer is not None:
            await self._final_flush(self.writer, deadline)
        if self.store is not None:
            await self.store.close()

    async def _final_flush(self, writer: BatchWriter, deadline: float) -> None:
        flushed = writer.flush()
        flushed.addErrback(lambda _: None)  # only fails once abandoned, below
        if await _at_most(flushed, deadline - self._clock.seconds(), self._clock):
            writer.stop()
            self._log.info("Recorder stopped; {rows} rows written", rows=writer.rows_written)
            return
        lost = writer.abandon()
        self._log.error(
            "Recorder stopped after {timeout} s without reaching the database: {lost} row(s) "
            "were not written ({rows} written)",
            timeout=self.config.stop_timeout,
            lost=lost,
            rows=writer.rows_written,
        )

    # Live data

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _on_spot(self, event: m.ProtoOASpotEvent) -> None:
        if event.ctidTraderAccountId != self.config.account_id or self.writer is None:
            return
        if event.symbolId not in self.symbol_ids:
            return
        now_ms = self._now_ms()
        self._touch(now_ms, event.timestamp if event.HasField("timestamp") else None)
        if event.HasField("bid") or event.HasField("ask"):
            self.writer.add_spot(spot_row(event, now_ms))
        for trendbar in event.trendbar:
            self._live.feed(event.symbolId, trendbar)

    def _on_depth(self, event: m.ProtoOADepthEvent) -> None:
        if event.ctidTraderAccountId != self.config.account_id or self.writer is None:
            return
        if event.symbolId in self.symbol_ids:
            now_ms = self._now_ms()
            self._touch(now_ms, None)
            self.writer.add_depth_change(depth_change(event, now_ms))

    def _touch(self, now_ms: int, server_ms: int | None) -> None:
        self.events_received += 1
        self._last_event_at = now_ms / 1000
        if server_ms is not None:
            self._feed_lag_ms = now_ms - server_ms

    def _bar_closed(self, row: BarRow) -> None:
        if self.writer is None:
            return
        self.writer.add_bar(row)
        key = (row.symbol_id, row.period)
        self._unconfirmed[key] = min(row.time_minutes, self._unconfirmed.get(key, row.time_minutes))
        if self._ready_for_backfill:
            # The last live update of a bar can miss ticks that did not move the price (its
            # volume then falls short); history has the final bar, so confirm it from there.
            self._queue_backfill(row.symbol_id, row.period)

    def _first_live_bar(self, symbol_id: int, period: int) -> None:
        if self._ready_for_backfill:
            self._queue_backfill(symbol_id, period)

    def _reconnected(self) -> None:
        self._live.reset()
        if self._ready_for_backfill:
            self._log.info("Reconnected; backfilling missed bars")
            self._queue_backfill_all()

    # Backfill

    def _queue_backfill_all(self) -> None:
        for symbol_id in sorted(self.symbol_ids):
            for period in self.config.periods:
                self._queue_backfill(symbol_id, period)

    def _queue_backfill(self, symbol_id: int, period: int) -> None:
        if (symbol_id, period) not in self._backfill_queue:
            self._backfill_queue.append((symbol_id, period))
        if self._backfilling is None:
            running = Deferred.fromCoroutine(self._run_backfills())
            running.addErrback(lambda f: self._log.failure("Backfilling failed", f))
            # It may have finished already (every await answered at once): then its ``finally``
            # ran before this assignment, and keeping it would block every later backfill.
            self._backfilling = None if running.called else running

    async def _run_backfills(self) -> None:
        try:
            while self._backfill_queue and self.running:
                symbol_id, period = self._backfill_queue.pop(0)
                try:
                    count = await self._backfill(symbol_id, period)
                except StorageError as error:
                    self._log.warn(
                        "Backfill of {symbol} failed ({error}); retrying in {delay} s",
                        symbol=self.symbol_ids.get(symbol_id, symbol_id),
                        error=str(error),
                        delay=_SETUP_RETRY,
                    )
                    self._retry_backfill_later(symbol_id, period)
                    continue
                except OpenApiError as error:  # refused for this series: the others go on
                    self._log.warn(
                        "Backfill of {symbol} refused ({error}); retrying in {delay} s",
                        symbol=self.symbol_ids.get(symbol_id, symbol_id),
                        error=str(error),
                        delay=_SETUP_RETRY,
                    )
                    self._retry_backfill_later(symbol_id, period)
                    continue
                except CTraderError as error:
                    # The connection is gone (or not answering): this series goes back to the
                    # front and the rest keep their places, so that a connection dropped
                    # every few seconds still gets every series backfilled in turn.  The
                    # queue runs again after the reconnect (or on the next closed bar).
                    self._log.warn(
                        "Backfill of {symbol} interrupted ({error}); it resumes after reconnect",
                        symbol=self.symbol_ids.get(symbol_id, symbol_id),
                        error=str(error),
                    )
                    self._backfill_queue.insert(0, (symbol_id, period))
                    break
                self.backfills_done += 1
                self._log.debug("Backfilled {count} bar(s)", count=count)
        finally:
            self._backfilling = None

    def _retry_backfill_later(self, symbol_id: int, period: int) -> None:
        key = (symbol_id, period)
        if key not in self._backfill_retries:
            self._backfill_retries[key] = self._clock.callLater(
                _SETUP_RETRY, self._retry_backfill, key
            )

    def _retry_backfill(self, key: tuple[int, int]) -> None:
        del self._backfill_retries[key]
        if self.running:
            self._queue_backfill(*key)

    async def _backfill(self, symbol_id: int, period: int) -> int:
        """Fetch closed bars from the series' cursor (inclusive) up to now.

        The cursor moves only over what a history fetch returned, one window at a time (a
        window is complete when it arrives), never because of a live bar: a live bar that closes
        before its series' turn cannot make the fetch start after bars it has not stored yet.
        """
        assert self.store is not None
        assert self.writer is not None
        key = (symbol_id, period)
        if key not in self._cursors:
            self._cursors[key] = await self.store.last_history_minute(symbol_id, period)
        now = self._clock.seconds()
        cursor = self._cursors[key]
        start_minute = (
            cursor if cursor is not None else int(now // 60) - self.config.history_minutes
        )
        unconfirmed = self._unconfirmed.pop(key, None)
        if unconfirmed is not None:
            start_minute = min(start_minute, unconfirmed)
        start = datetime.fromtimestamp(start_minute * 60, tz=timezone.utc)
        end = datetime.fromtimestamp(now, tz=timezone.utc)
        count = 0
        try:
            async for batch in iter_trendbars(
                self._client, self.config.account_id, symbol_id, period, start, end
            ):
                for bar in batch:
                    row = bar_row(symbol_id, bar, "history")
                    if bar_close_minute(period, row.time_minutes) * 60 <= now:
                        self.writer.add_bar(row)
                        self._advance(key, row.time_minutes)
                        count += 1
        except BaseException:
            if unconfirmed is not None:  # still to confirm by the next backfill
                self._unconfirmed[key] = min(unconfirmed, self._unconfirmed.get(key, unconfirmed))
            raise
        if self._cursors[key] is None:  # the whole range had no closed bar: it is complete
            self._cursors[key] = start_minute
        return count

    def _advance(self, key: tuple[int, int], minute: int) -> None:
        cursor = self._cursors.get(key)
        if cursor is None or minute > cursor:
            self._cursors[key] = minute

    # Status

    def _log_status(self) -> None:
        writer = self.writer
        now = self._clock.seconds()
        idle = None if self._last_event_at is None else now - self._last_event_at
        self._log.info(
            "Recorder status: {events} events received, {written} rows written, {pending} "
            "pending, write lag {write_lag:.3f} s, longest write {longest:.3f} s, {shed} depth "
            "rows shed, feed lag {feed_lag} ms, {reconnects} "
            "reconnects, last event {idle} s ago",
            events=self.events_received,
            written=writer.rows_written if writer else 0,
            pending=writer.rows_pending if writer else 0,
            write_lag=writer.last_write_lag if writer else 0.0,
            longest=writer.max_write_seconds if writer else 0.0,
            shed=writer.depth_rows_shed if writer else 0,
            feed_lag=self._feed_lag_ms if self._feed_lag_ms is not None else "n/a",
            reconnects=self._client.reconnect_count,
            idle="n/a" if idle is None else f"{idle:.1f}",
        )


def _at_most(d: Deferred[_T], seconds: float, clock: IReactorTime) -> Deferred[bool]:
    """Wait for ``d`` (without consuming or cancelling its result) at most ``seconds``.

    :returns: a Deferred that fires with ``True`` when ``d`` has fired, ``False`` on timeout.
    """
    if d.called:
        return succeed(True)
    done: Deferred[bool] = Deferred()

    def timed_out() -> None:
        if not done.called:
            done.callback(False)

    timer = clock.callLater(max(seconds, 0.0), timed_out)

    def fired(result: _T | Failure) -> _T | Failure:
        if not done.called:
            timer.cancel()
            done.callback(True)
        return result

    d.addBoth(fired)
    return done


async def _idempotent(d: Deferred[_T]) -> None:
    """Await a subscription; an ``ALREADY_SUBSCRIBED`` answer counts as success."""
    try:
        await d
    except OpenApiError as error:
        if error.code != "ALREADY_SUBSCRIBED":
            raise
