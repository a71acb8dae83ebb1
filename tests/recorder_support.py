"""Shared by the recorder's end-to-end tests: the sandbox in memory, a world to step, checks.

Client, sandbox and recorder share one ``Clock`` and talk through iosim, so 20 minutes of
market time take about a second; the store runs in its real worker thread (the real reactor
delivers its results between clock steps).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from twisted.application.service import MultiService
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorCore, IStreamClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted._oauth_refresh import TokenRefresher
from ctrader_twisted.client import Client
from ctrader_twisted.history import fetch_trendbars
from ctrader_twisted.recorder._live import bar_row
from ctrader_twisted.recorder._rows import BarRow
from ctrader_twisted.recorder.service import Recorder, RecorderConfig
from ctrader_twisted.recorder.storage import MarketStore
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SandboxConfig,
    SandboxFactory,
)

from .fakeserver import memory_link

reactor = cast(IReactorCore, _global_reactor)
START = 1_700_000_000.0  # a Tuesday: FX markets are open
ACCOUNT = 5000001
EURUSD = 1
M1 = 1
_T = TypeVar("_T")


class SandboxEndpoint:
    """Connect clients to a sandbox factory in memory (iosim)."""

    def __init__(self, factory: SandboxFactory) -> None:
        self.factory = factory
        self.pumps: list[iosim.IOPump] = []

    def connect(self, client_factory: IProtocolFactory) -> Deferred[Any]:
        client = client_factory.buildProtocol(None)
        self.pumps.append(memory_link(client, self.factory.buildProtocol(None)))
        return succeed(client)

    def flush(self) -> None:
        for _ in range(50):
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            self.pumps = [p for p in self.pumps if not _closed(p)]
            if not moved:
                return


class World:
    """One clock, one sandbox, and recorder processes that come and go.

    :param open_store: opens the recorder's database (called on every recorder start).
    """

    def __init__(self, case: TestCase, open_store: Callable[[], Deferred[MarketStore]]) -> None:
        self.case = case
        self.open_store = open_store
        self.clock = Clock()
        self.clock.advance(START)
        config = SandboxConfig(seed=3, tick_interval=1.0, always_open=True, idle_timeout=0)
        self.factory = SandboxFactory(config, self.clock)
        self.endpoint = SandboxEndpoint(self.factory)
        self.top: MultiService | None = None
        self.recorder: Recorder | None = None
        self.refresher: TokenRefresher | None = None
        self.reconnects = 0
        self.db_busy = 0
        original = MarketStore._run

        def tracked(store: MarketStore, work: Callable[[Any], _T]) -> Deferred[_T]:
            self.db_busy += 1
            d = original(store, work)

            def done(result: object) -> object:
                self.db_busy -= 1
                return result

            return d.addBoth(done)  # type: ignore[return-value]

        case.patch(MarketStore, "_run", tracked)

    def start_recorder(
        self,
        *,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        endpoint: IStreamClientEndpoint | None = None,
        refresher: Callable[[Client], TokenRefresher] | None = None,
        **config: Any,
    ) -> Recorder:
        """Start a client and a recorder (and a token refresher, if given a maker for one).

        :param config: ``RecorderConfig`` fields that differ from the world's defaults.
        """
        client = Client(
            endpoint or self.endpoint,  # type: ignore[arg-type]
            client_id=DEFAULT_CLIENT_ID,
            client_secret=client_secret,
            reactor=self.clock,
            reconnect_initial_delay=0.5,
            reconnect_max_delay=2.0,
            reconnect_jitter=0.0,
        )
        settings: dict[str, Any] = {
            "account_id": ACCOUNT,
            "access_token": DEFAULT_ACCESS_TOKEN,
            "symbols": ("EURUSD",),
            "periods": (M1,),
            "history_minutes": 5,
            "status_interval": 60.0,
            "max_batch_delay": 5.0,
        }
        settings.update(config)
        self.top = MultiService()
        client.setServiceParent(self.top)
        self.refresher = refresher(client) if refresher is not None else None
        if self.refresher is not None:
            self.refresher.setServiceParent(self.top)
        self.recorder = Recorder(
            client,
            self.open_store,
            RecorderConfig(**settings),
            self.clock,
            refresher=self.refresher,
        )
        self.recorder.setServiceParent(self.top)
        self.top.startService()
        self.client = client
        return self.recorder

    async def stop_recorder(self) -> None:
        assert self.top is not None
        await self.wait(self.top.stopService())
        self.reconnects += self.client.reconnect_count
        self.top = None

    async def wait(self, d: Deferred[_T], limit: int = 400) -> _T:
        """Step the world (0.5 s at a time, bounded) until ``d`` has a result."""
        for _ in range(limit):
            if d.called:
                break
            await self.step(0.5)
        return await d

    async def step(self, seconds: float) -> None:
        """Advance the clock, move the bytes, and let the database catch up (bounded)."""
        self.clock.advance(seconds)
        self.endpoint.flush()
        for attempt in range(500):
            await deferLater(reactor, 0.01 if attempt else 0, lambda: None)
            if self.db_busy == 0:
                break
        self.endpoint.flush()

    async def run(self, seconds: float, drop_every: float | None = None) -> None:
        elapsed, since_drop = 0.0, 0.0
        while elapsed < seconds:
            await self.step(0.5)
            elapsed += 0.5
            since_drop += 0.5
            if drop_every is not None and since_drop >= drop_every:
                since_drop = 0.0
                self.factory.drop_all()
                self.endpoint.flush()

    async def sandbox_bars(
        self, first_minute: int, end: float, symbol_id: int = EURUSD, period: int = M1
    ) -> list[BarRow]:
        """Ask the sandbox itself (over a fresh client) for the reference history."""
        found = await self.sandbox_series({(symbol_id, period): first_minute}, end)
        return found[(symbol_id, period)]

    async def sandbox_series(
        self, first_minutes: dict[tuple[int, int], int], end: float
    ) -> dict[tuple[int, int], list[BarRow]]:
        """The sandbox's history of several series (symbol, period), each from its first
        minute up to ``end``, over one fresh client."""
        client = Client(
            self.endpoint,  # type: ignore[arg-type]
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=self.clock,
        )
        client.startService()
        await self.wait(client.when_ready())
        await self.wait(client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN))
        stop = datetime.fromtimestamp(end, tz=timezone.utc)
        found: dict[tuple[int, int], list[BarRow]] = {}
        for (symbol_id, period), first_minute in sorted(first_minutes.items()):
            start = datetime.fromtimestamp(first_minute * 60, tz=timezone.utc)
            fetching = fetch_trendbars(client, ACCOUNT, symbol_id, period, start, stop)
            bars = await self.wait(fetching)
            found[(symbol_id, period)] = [bar_row(symbol_id, bar, "history") for bar in bars]
        stopping = client.stopService()
        self.endpoint.flush()
        await stopping
        return found


async def assert_series_whole(
    case: TestCase, world: World, store: MarketStore, min_bars: int = 18
) -> list[BarRow]:
    """Check the stored EURUSD M1 series against the sandbox's own history.

    Every closed bar the sandbox has (from the first stored one to a minute before now) is
    stored exactly once, in order, with the same OHLC and volume; the initial history is there.

    :returns: the stored bars.
    """
    end = world.clock.seconds()
    stored = await store.bars(EURUSD, M1)
    times = [b.time_minutes for b in stored]
    case.assertLessEqual(times[0], int(START // 60) - 4)  # the initial history is there
    case.assertEqual(times, sorted(set(times)))  # in order, each bar once

    expected = await world.sandbox_bars(stored[0].time_minutes, end)
    closed = [b for b in expected if (b.time_minutes + 1) * 60 <= end - 60]
    got = {b.time_minutes: b for b in stored}
    missing = [b.time_minutes for b in closed if b.time_minutes not in got]
    case.assertEqual(missing, [])
    for bar in closed:
        case.assertEqual(ohlcv(got[bar.time_minutes]), ohlcv(bar))
    case.assertGreaterEqual(len(closed), min_bars)
    return stored


def capture_logs(case: TestCase | SynchronousTestCase) -> list[LogEvent]:
    """Every log event from now until the end of the test."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def logged(events: list[LogEvent], level: LogLevel, text: str) -> list[str]:
    """The formatted events of ``level`` whose text contains ``text``."""
    found = []
    for event in events:
        if event.get("log_level") is level:
            message = formatEvent(event)
            if text in message:
                found.append(message)
    return found


def ohlcv(row: BarRow) -> tuple[int, ...]:
    return (row.time_minutes, row.open, row.high, row.low, row.close, row.volume)


def _closed(pump: iosim.IOPump) -> bool:
    return bool(pump.clientIO.disconnected and pump.serverIO.disconnected)


async def record_briefly(options: Any) -> Recorder:
    """Run the recorder service built by the tap from ``options`` (embedded sandbox) until it
    has 30 events and a finished backfill, at most 10 s, then stop it; return the recorder."""
    from ctrader_twisted.recorder import tap

    service = cast(MultiService, tap.build_service(options, cast(Any, reactor)))
    service.startService()
    recorder = cast(list[Recorder], list(service))[-1]
    for _ in range(200):  # at most 10 s
        await deferLater(_global_reactor, 0.05, lambda: None)
        if recorder.events_received >= 30 and recorder.backfills_done:
            break
    await service.stopService()
    return recorder
