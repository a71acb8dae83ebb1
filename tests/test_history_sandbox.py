"""History paging against the sandbox over loopback TLS (real reactor, 127.0.0.1 only)."""

from __future__ import annotations

from datetime import datetime, timedelta

from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IReactorSSL, IReactorTime
from twisted.trial.unittest import TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.client import Client
from ctrader_twisted.history import fetch_ticks, fetch_trendbars
from ctrader_twisted.models import EPOCH, Period, QuoteSide, SymbolCatalog
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)

ACCOUNT = 5000001
EURUSD = 1
TRENDBARS = m.payload_type_of(m.ProtoOAGetTrendbarsReq)
TICKS = m.payload_type_of(m.ProtoOAGetTickDataReq)
reactor: IReactorSSL = global_reactor  # type: ignore[assignment]


def _now() -> datetime:
    seconds = IReactorTime(reactor).seconds()
    return EPOCH + timedelta(seconds=seconds)


def _minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


class SandboxHistoryTests(TestCase):
    timeout = 30

    async def _start(self, **config: object) -> tuple[RunningSandbox, Client]:
        settings = SandboxConfig(**config)  # type: ignore[arg-type]
        running = await start_sandbox(reactor, settings, port=0, state_dir=self.mktemp())
        self.addCleanup(running.stop)
        client = Client(
            running.endpoint(reactor),
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=reactor,  # type: ignore[arg-type]
        )
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_ready()
        await client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN)
        return running, client

    async def test_many_pages_exact_bar_count(self) -> None:
        running, client = await self._start(always_open=True, trendbar_chunk=250)
        start = _minute_floor(_now()) - timedelta(days=2)
        end = start + timedelta(days=1)
        seen: list[float] = []
        bars = await fetch_trendbars(
            client,
            ACCOUNT,
            EURUSD,
            Period.M1,
            start,
            end,
            progress=lambda p: seen.append(p.fraction),
        )
        self.assertEqual(len(bars), 1440)
        self.assertEqual(
            [b.time for b in bars], [start + timedelta(minutes=i) for i in range(1440)]
        )
        self.assertTrue(
            all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in bars)
        )
        requests = running.factory.stats.requests_by_payload_type[TRENDBARS]
        self.assertGreaterEqual(requests, 6)  # 1440 bars in pages of 250
        self.assertEqual(running.factory.stats.rate_limited, 0)  # paced within 5/s
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(seen[-1], 1.0)

    async def test_same_range_is_reproducible_across_windows(self) -> None:
        _running, client = await self._start(always_open=True)
        start = _minute_floor(_now()) - timedelta(days=3)
        end = start + timedelta(hours=6)
        whole = await fetch_trendbars(client, ACCOUNT, EURUSD, Period.M5, start, end)
        pieces = await fetch_trendbars(
            client, ACCOUNT, EURUSD, Period.M5, start, end, window=timedelta(hours=1)
        )
        self.assertEqual(len(whole), 72)
        self.assertEqual(whole, pieces)
        self.assertTrue(all(b.period is Period.M5 for b in whole))

    async def test_ticks_span_pages_in_order(self) -> None:
        running, client = await self._start(always_open=True, tick_chunk=700)
        start = _minute_floor(_now()) - timedelta(hours=5)
        end = start + timedelta(minutes=30)
        ticks = await fetch_ticks(client, ACCOUNT, EURUSD, QuoteSide.BID, start, end)
        stamps = [t.timestamp_ms for t in ticks]
        self.assertEqual(stamps, sorted(set(stamps)))
        self.assertEqual(len(ticks), 30 * 60)  # one tick a second
        self.assertTrue(start <= ticks[0].time and ticks[-1].time < end)
        self.assertGreaterEqual(running.factory.stats.requests_by_payload_type[TICKS], 3)
        asks = await fetch_ticks(client, ACCOUNT, EURUSD, QuoteSide.ASK, start, end)
        self.assertEqual(len(asks), len(ticks))
        self.assertTrue(all(a.price > b.price for a, b in zip(asks, ticks, strict=True)))

    async def test_empty_ranges(self) -> None:
        running, client = await self._start()
        now = _minute_floor(_now())
        saturday = now - timedelta(days=(now.weekday() - 5) % 7 or 7)
        noon = saturday.replace(hour=10, minute=0)
        closed = await fetch_trendbars(
            client, ACCOUNT, EURUSD, Period.M1, noon, noon + timedelta(hours=2)
        )
        self.assertEqual(closed, [])
        nothing = await fetch_trendbars(client, ACCOUNT, EURUSD, Period.M1, now, now)
        self.assertEqual(nothing, [])
        self.assertEqual(running.factory.stats.requests_by_payload_type.get(TRENDBARS), 1)

    async def test_catalog_against_sandbox(self) -> None:
        _running, client = await self._start()
        catalog = SymbolCatalog(client)
        eurusd = await catalog.resolve(ACCOUNT, "eur/usd")
        self.assertEqual((eurusd.symbol_id, eurusd.digits, eurusd.pip_position), (EURUSD, 5, 4))
        self.assertEqual(eurusd.lots_to_volume("0.01"), 100_000)
        gold = await catalog.resolve(ACCOUNT, "XAUUSD")
        self.assertEqual(gold.name, "XAUUSD")
