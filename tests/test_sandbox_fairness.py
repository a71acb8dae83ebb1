"""A fair sandbox (issue 12 item 3): history work is charged by what it costs.

One ``MN1`` trendbar request makes the sandbox generate about 100,000 minutes of the price walk
(about 0.8 s of CPU).  The work is done in slices of ``work_slice_minutes``, one slice per
reactor turn, round robin between connections, and a connection may have at most
``max_pending_work`` history requests in progress.  With a Clock: the slicing, the turn order,
the bound, the cancel on close and identical results.  Over real loopback TLS: one client
saturating its historical limit with MN1 requests while another measures simple round trips.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SandboxConfig,
    start_sandbox,
)
from ctrader_twisted.sandbox.catalogue import SYMBOLS
from ctrader_twisted.sandbox.history import trendbar_page
from ctrader_twisted.tls import tls_endpoint
from tests.hostile import Peer
from tests.test_sandbox_support import USD_ACCOUNT, Wire, decode_frames, make_factory

reactor: Any = global_reactor
MN1 = m.ProtoOATrendbarPeriod.MN1
NOW_MS = 1_700_000_000_000


def mn1(cmid: str = "") -> m.ProtoOAGetTrendbarsReq:
    """The most expensive request: monthly bars over all of history (one full page)."""
    return m.ProtoOAGetTrendbarsReq(
        ctidTraderAccountId=USD_ACCOUNT,
        symbolId=1,
        period=MN1,
        fromTimestamp=0,
        toTimestamp=NOW_MS,
    )


def one_turn(clock: Any) -> int:
    """Run the calls due now that were scheduled before this turn, like one reactor turn
    (``Clock.advance(0)`` would also run those they schedule); return how many ran."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


def _raw(wire: Wire) -> list[m.Envelope]:
    """What the sandbox wrote since last asked, without running waiting work."""
    data = wire.transport.value()
    new, wire._seen = data[wire._seen :], len(data)
    return decode_frames(new)


class SlicingTests(SynchronousTestCase):
    def test_cheap_request_is_answered_at_once(self) -> None:
        wire = Wire().ready()
        request = m.ProtoOAGetTrendbarsReq(
            ctidTraderAccountId=USD_ACCOUNT, symbolId=1, period=1, count=100
        )
        wire.send(request, "cheap")
        (answer,) = _raw(wire)  # no clock step needed
        assert isinstance(answer.message, m.ProtoOAGetTrendbarsRes)
        self.assertEqual(len(answer.message.trendbar), 100)

    def test_expensive_request_yields_between_slices(self) -> None:
        factory = make_factory(SandboxConfig(always_open=True, rate_limit=0))
        heavy, light = Wire(factory).ready(), Wire(factory).ready()
        heavy.send(mn1(), "mn1")
        self.assertEqual(_raw(heavy), [])  # one slice done, the rest waits its turn
        turns = 0
        while not (frames := _raw(heavy)):
            light.send(m.ProtoOAVersionReq(), "v")
            (version,) = _raw(light)  # answered between two slices of the heavy work
            assert isinstance(version.message, m.ProtoOAVersionRes)
            self.assertEqual(one_turn(factory.clock), 1)
            turns += 1
            self.assertLess(turns, 1000)
        # about 100,000 minutes in slices of 500, each a turn of its own
        self.assertGreaterEqual(turns, 40)
        self.assertEqual(factory.work.slices, turns + 1)
        (answer,) = frames
        assert isinstance(answer.message, m.ProtoOAGetTrendbarsRes)
        bars, more = trendbar_page(
            factory.walk,
            SYMBOLS[1],
            MN1,
            0,
            NOW_MS,
            factory.now_ms(),
            limit=1000,
            minutes_budget=100_000,
        )
        self.assertEqual(
            [b.utcTimestampInMinutes for b in answer.message.trendbar], [b.start for b in bars]
        )
        self.assertEqual([b.low for b in answer.message.trendbar], [b.low for b in bars])
        self.assertEqual(answer.message.hasMore, more)

    def test_round_robin_between_connections(self) -> None:
        config = SandboxConfig(
            always_open=True, work_slice_minutes=500, trendbar_minutes_budget=20_000
        )
        factory = make_factory(config)
        first, second = Wire(factory).ready(), Wire(factory).ready()
        first.send(mn1(), "a1")
        first.send(mn1(), "a2")
        second.send(mn1(), "b1")
        order: list[str] = []
        for _ in range(2000):
            one_turn(factory.clock)
            for wire in (first, second):
                order += [str(e.client_msg_id) for e in _raw(wire)]
            if len(order) == 3:
                break
        # b1 does not wait for both of the first connection's requests
        self.assertEqual(order, ["a1", "b1", "a2"])

    def test_pending_work_is_bounded(self) -> None:
        wire = Wire(always_open=True, historical_rate_limit=0, trendbar_minutes_budget=20_000)
        wire.ready()
        for n in range(5):
            wire.send(mn1(), f"h{n}")
        self.assertEqual(_raw(wire), [])
        error = wire.request(mn1(), "over")[0]  # received() runs the waiting work too
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(error.message.errorCode, "REQUEST_FREQUENCY_EXCEEDED")
        self.assertEqual(error.client_msg_id, "over")
        self.assertEqual(wire.factory.stats.work_refused, 1)

    def test_blocked_mode_refusal(self) -> None:
        wire = Wire(
            always_open=True,
            historical_rate_limit=0,
            rate_limit_mode="blocked",
            trendbar_minutes_budget=20_000,
        )
        wire.ready()
        for n in range(5):
            wire.send(mn1(), f"h{n}")
        wire.send(mn1(), "over")
        (error,) = _raw(wire)
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(
            (error.message.errorCode, error.message.retryAfter), ("BLOCKED_PAYLOAD_TYPE", 1)
        )

    def test_closing_forgets_the_work(self) -> None:
        factory = make_factory(SandboxConfig(always_open=True))
        wire = Wire(factory).ready()
        wire.send(mn1(), "mn1")
        self.assertEqual(factory.work.pending(wire.factory.sessions[0]), 1)
        session = factory.sessions[0]
        wire.close()
        self.assertEqual(factory.work.pending(session), 0)
        factory.clock.advance(1)  # type: ignore[attr-defined]
        self.assertEqual(factory.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def heavy_and_light(seconds: float = 4.0) -> tuple[list[float], int, int]:
    """Serve a sandbox; one raw connection sends MN1 requests at 5/s (its historical limit)
    while a Client measures version and symbol-list round trips one after another.

    :returns: the light client's round trips (s), the heavy requests answered with bars and
        those refused.
    """
    config = SandboxConfig(seed=4, always_open=True)
    state = Path(tempfile.mkdtemp(prefix="ctrader-sandbox-fairness-"))
    running = await start_sandbox(reactor, config, state_dir=state)
    heavy = Peer()
    client = Client(
        tls_endpoint(reactor, "localhost", running.port, ca_file=running.ca_file),
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        reactor=reactor,
    )
    hammer: LoopingCall | None = None
    try:
        await running.endpoint(reactor).connect(
            Factory.forProtocol(lambda: OpenApiProtocol(heavy, reactor))
        )
        auth = m.ProtoOAApplicationAuthReq(
            clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
        )
        await heavy.ask(auth, "app")
        account = m.ProtoOAAccountAuthReq(
            ctidTraderAccountId=USD_ACCOUNT, accessToken=DEFAULT_ACCESS_TOKEN
        )
        await heavy.ask(account, "acc")
        client.startService()
        await client.when_ready().addTimeout(30, reactor)
        await client.authorize_account(USD_ACCOUNT, DEFAULT_ACCESS_TOKEN)
        count = [0]

        def send_heavy() -> None:
            count[0] += 1
            if heavy.protocol is not None and not heavy.is_closed:
                heavy.protocol.send(mn1(), f"mn1-{count[0]}")

        hammer = LoopingCall(send_heavy)
        hammer.start(0.2)
        await deferLater(reactor, 0.5, lambda: None)  # let the work pile up
        samples: list[float] = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            request: Any = (
                m.ProtoOAVersionReq()
                if n % 2
                else m.ProtoOASymbolsListReq(ctidTraderAccountId=USD_ACCOUNT)
            )
            started = time.monotonic()
            await client.request(request).addTimeout(10, reactor)
            samples.append(time.monotonic() - started)
            await deferLater(reactor, 0.02, lambda: None)
        answered = sum(isinstance(e.message, m.ProtoOAGetTrendbarsRes) for e in heavy.received)
        refused = sum(isinstance(e.message, m.ProtoOAErrorRes) for e in heavy.received)
        return samples, answered, refused
    finally:
        if hammer is not None and hammer.running:
            hammer.stop()
        heavy.close()
        await client.stopService()
        await running.stop()
        shutil.rmtree(state, True)


class LoopbackFairnessTests(TestCase):
    timeout = 90

    async def test_simple_requests_stay_fast_under_heavy_history(self) -> None:
        samples, answered, _ = await heavy_and_light()
        self.assertGreaterEqual(len(samples), 20)
        self.assertGreater(answered, 0)  # the heavy client is served too, at its share
        # The target is 100 ms at the 99th percentile: measured 32-45 ms here with both
        # clients in the sandbox's process (before: 1.4 s).  A loaded shared test machine
        # gets a looser bound.
        self.assertLess(p99(samples), 0.25, sorted(samples)[-5:])


async def _report() -> None:
    samples, answered, refused = await heavy_and_light(10.0)
    print(
        f"{len(samples)} simple round trips while one client sent MN1 requests at 5/s: "
        f"p50 {statistics.median(samples) * 1000:.1f} ms, p99 {p99(samples) * 1000:.1f} ms, "
        f"max {max(samples) * 1000:.1f} ms; heavy: {answered} answered, {refused} refused"
    )


if __name__ == "__main__":
    from twisted.internet.task import react

    react(lambda _: Deferred.fromCoroutine(_report()))
