"""Full pages: long ranges of bars in (nearly) the fewest requests the page size allows.

Issue 16 item 4: a year of M1 bars took 470 requests where 373 would do, because every 3.5-day
window ended with a partial page.  These tests run the in-memory sandbox (one Clock, no
sockets; its historical limit of 5 requests per second applies in Clock time) and check the
request count against the ideal, ``ceil(bars / page size)``, and that the bars are exactly the
ones fetched in small independent pieces: no gaps, no duplicates, oldest first.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.client import Client
from ctrader_twisted.history import SEGMENT_BARS, fetch_trendbars, iter_trendbars
from ctrader_twisted.models import EPOCH, Bar, Period
from ctrader_twisted.sandbox import DEFAULT_ACCESS_TOKEN, SandboxConfig
from ctrader_twisted.testing import DEFAULT_START, MemorySandbox

ACCOUNT = 5000001
EURUSD = 1
TRENDBARS = m.payload_type_of(m.ProtoOAGetTrendbarsReq)
#: The latest whole minute an hour before the sandbox clock's start.
END = (EPOCH + timedelta(seconds=DEFAULT_START - 3600)).replace(second=0, microsecond=0)


def _connected(config: SandboxConfig) -> tuple[MemorySandbox, Client]:
    sandbox = MemorySandbox(config)
    client = sandbox.client()
    client.startService()
    sandbox.result(client.when_ready())
    sandbox.result(client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN))
    return sandbox, client


def _requests(sandbox: MemorySandbox) -> int:
    return sandbox.factory.stats.requests_by_payload_type.get(TRENDBARS, 0)


def _key(bar: Bar) -> tuple[object, ...]:
    return (bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)


class FullPagesTests(SynchronousTestCase):
    def _fetch(
        self, sandbox: MemorySandbox, client: Client, start: datetime, end: datetime
    ) -> list[Bar]:
        deferred = fetch_trendbars(client, ACCOUNT, EURUSD, Period.M1, start, end)
        return sandbox.result(deferred, within=600)

    def test_always_open_market_every_minute_in_full_pages(self) -> None:
        """40 days of M1 without a gap (57,600 bars): the old pager sent 6 requests per
        3.5-day window (5,040 bars: 5 full pages and one of 40), 69 in all."""
        page = 1000
        sandbox, client = _connected(SandboxConfig(always_open=True, trendbar_chunk=page))
        start = END - timedelta(days=40)
        bars = self._fetch(sandbox, client, start, END)
        minutes = 40 * 1440
        self.assertEqual(
            [b.time for b in bars], [start + timedelta(minutes=i) for i in range(minutes)]
        )
        ideal = math.ceil(minutes / page)
        self.assertEqual(ideal, 58)
        self.assertLessEqual(_requests(sandbox), math.floor(ideal * 1.05))

    def test_market_hours_same_bars_as_small_pieces_in_near_ideal_requests(self) -> None:
        """50 days across weekends (two segments): the bars equal those fetched one day at a
        time from a second sandbox with the same seed, and the request count is within 5%."""
        page = 500
        sandbox, client = _connected(SandboxConfig(trendbar_chunk=page))
        start = END - timedelta(days=50)
        bars = self._fetch(sandbox, client, start, END)
        requests = _requests(sandbox)

        pieces, other = _connected(SandboxConfig(trendbar_chunk=page))
        expected: list[Bar] = []
        for day in range(50):
            low = start + timedelta(days=day)
            expected += self._fetch(pieces, other, low, low + timedelta(days=1))
        self.assertEqual([_key(b) for b in bars], [_key(b) for b in expected])
        times = [b.time for b in bars]
        self.assertEqual(times, sorted(set(times)))
        self.assertGreater(len(bars), SEGMENT_BARS // 2)
        ideal = math.ceil(len(bars) / page)
        self.assertLessEqual(requests, math.floor(ideal * 1.05), (requests, ideal))

    def test_batches_are_pages_delivered_segment_by_segment(self) -> None:
        page = 5000
        sandbox, client = _connected(SandboxConfig(always_open=True, trendbar_chunk=page))
        start = END - timedelta(days=40)
        batches: list[list[Bar]] = []
        requests_at_batch: list[int] = []

        async def take() -> None:
            async for batch in iter_trendbars(client, ACCOUNT, EURUSD, Period.M1, start, END):
                batches.append(batch)
                requests_at_batch.append(_requests(sandbox))

        sandbox.result(Deferred.fromCoroutine(take()), within=600)
        sizes = [len(b) for b in batches]
        self.assertEqual(sum(sizes), 40 * 1440)
        self.assertLessEqual(max(sizes), page)
        self.assertTrue(all(a[-1].time < b[0].time for a, b in itertools.pairwise(batches)))
        # the first segment (50,000 minutes: 10 pages) is delivered before the rest is fetched
        self.assertEqual(requests_at_batch[0], SEGMENT_BARS // page)
        self.assertEqual(requests_at_batch[-1], SEGMENT_BARS // page + 2)  # 7,600 more bars
