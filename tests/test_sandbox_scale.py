"""The sandbox at fast ticks and many subscribers (issue 16, item 3).

* Live bars are kept incrementally: the bar in progress equals the bar rebuilt from all of the
  minute's ticks, for any seed, tick spacing and sequence of slots asked for, and the ticks
  generated piece by piece equal the ticks generated at once.
* A tick costs little at 1 ms ticks with every symbol and live bars subscribed, also at the
  first tick of a minute (which used to generate the whole minute of every symbol).
* Fan-out: a symbol's spot event is encoded once per tick for all its like subscribers, every
  connection gets one write per tick, and what differs between clients (account, timestamp,
  live bars, sides changed, full prices after a pause, their own depth books) stays right.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any
from unittest import mock

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import SandboxConfig
from ctrader_twisted.sandbox.catalogue import SYMBOLS, SymbolSpec
from ctrader_twisted.sandbox.history import bar_until, trendbar_message
from ctrader_twisted.sandbox.market import MinuteBar, PriceWalk, mix64

from .test_sandbox_support import EUR_ACCOUNT, USD_ACCOUNT, Wire, make_factory

M1 = m.ProtoOATrendbarPeriod.M1
#: 2023-11-14 22:13:00 UTC (a Tuesday) in minutes.
MINUTE = 28_333_333


def reference_ticks(walk: PriceWalk, spec: SymbolSpec, minute: int) -> list[int]:
    """The minute's ticks generated all at once, the way the sandbox always has: the random
    draws in slot order between the open, the high, the low and the close."""
    bar = walk.minute_bar(spec, minute)
    n = walk.slots
    rng = random.Random(mix64(walk.seed, spec.symbol_id, 3000, minute))
    keys = {0: bar.open, n - 1: bar.close}
    if n >= 4:
        high_at, low_at = rng.sample(range(1, n - 1), 2)
        keys[high_at], keys[low_at] = bar.high, bar.low
    points = sorted(keys.items())
    noise = max((bar.high - bar.low) / 4.0, 3.0 * spec.point)
    ticks = [0] * n
    for (i0, p0), (i1, p1) in pairwise(points):
        ticks[i0] = p0
        for i in range(i0 + 1, i1):
            guess = p0 + (p1 - p0) * (i - i0) / (i1 - i0) + noise * (rng.random() - 0.5)
            ticks[i] = min(bar.high, max(bar.low, round(guess / spec.point) * spec.point))
    ticks[n - 1] = bar.close
    return ticks


def rebuilt_bar(walk: PriceWalk, spec: SymbolSpec, minute: int, slot: int) -> MinuteBar:
    """The bar of ``minute`` up to ``slot`` rebuilt from every tick (the old way)."""
    if slot >= walk.slots - 1:
        return walk.minute_bar(spec, minute)
    ticks = reference_ticks(walk, spec, minute)[: slot + 1]
    return MinuteBar(minute, ticks[0], max(ticks), min(ticks), ticks[-1], len(ticks))


class IncrementalBarTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        seed=st.integers(0, 2**64 - 1),
        tick_ms=st.sampled_from([1, 3, 7, 100, 1000, 15_000, 20_000, 30_000, 59_999, 60_000]),
        symbol=st.sampled_from(sorted(SYMBOLS)),
        steps=st.lists(
            st.tuples(st.integers(0, 1), st.integers(0, 70_000), st.booleans()), max_size=40
        ),
    )
    def test_live_bar_is_the_rebuilt_bar(
        self, seed: int, tick_ms: int, symbol: int, steps: list[tuple[int, int, bool]]
    ) -> None:
        """Forward steps (the clock), jumps back and forth, two minutes interleaved."""
        walk, reference = PriceWalk(seed, tick_ms), PriceWalk(seed, tick_ms)
        spec = SYMBOLS[symbol]
        slot = 0
        expected: dict[tuple[int, int], MinuteBar] = {}
        for offset, step, jump in steps:
            minute = MINUTE + offset
            slot = step % walk.slots if jump else min(walk.slots - 1, slot + step % 4)
            if (minute, slot) not in expected:
                expected[minute, slot] = rebuilt_bar(reference, spec, minute, slot)
            self.assertEqual(walk.partial_bar(spec, minute, slot), expected[minute, slot])

    @settings(max_examples=40, deadline=None)
    @given(
        seed=st.integers(0, 2**64 - 1),
        tick_ms=st.sampled_from([1, 2, 9, 500, 20_000, 30_000, 60_000]),
        symbol=st.sampled_from(sorted(SYMBOLS)),
        slots=st.lists(st.integers(0, 60_000), max_size=12),
    )
    def test_ticks_generated_piecewise_are_the_ticks_at_once(
        self, seed: int, tick_ms: int, symbol: int, slots: list[int]
    ) -> None:
        walk = PriceWalk(seed, tick_ms)
        spec = SYMBOLS[symbol]
        whole = reference_ticks(PriceWalk(seed, tick_ms), spec, MINUTE)
        for slot in slots:
            slot %= walk.slots
            self.assertEqual(walk.tick(spec, MINUTE, slot), whole[slot])
        self.assertEqual(walk.minute_ticks(spec, MINUTE), whole)

    def test_live_trendbars_equal_history_at_one_millisecond(self) -> None:
        """The bars riding in spot events, across a minute boundary at 1 ms ticks, are the
        bars history computes from scratch for the same instant."""
        wire = Wire(make_factory(SandboxConfig(tick_interval=0.001), start=MINUTE * 60 + 59.9))
        wire.ready()
        wire.request(
            m.ProtoOASubscribeSpotsReq(
                ctidTraderAccountId=USD_ACCOUNT, symbolId=[1, 2], subscribeToSpotTimestamp=True
            )
        )
        for sid in (1, 2):
            wire.request(
                m.ProtoOASubscribeLiveTrendbarReq(
                    ctidTraderAccountId=USD_ACCOUNT, symbolId=sid, period=M1
                )
            )
        fresh = PriceWalk(wire.factory.config.seed, 1)
        seen = 0
        for _ in range(250):
            wire.clock.advance(0.001)
            for envelope in wire.received():
                event = envelope.message
                if not isinstance(event, m.ProtoOASpotEvent):
                    continue
                (bar,) = event.trendbar
                spec = SYMBOLS[event.symbolId]
                walk = fresh if seen % 50 else PriceWalk(1, 1)  # (also from nothing cached)
                expected = bar_until(walk, spec, M1, event.timestamp)
                assert expected is not None
                self.assertEqual(bar, trendbar_message(M1, expected))
                seen += 1
        self.assertGreater(seen, 300)


@contextmanager
def spot_encodings() -> Iterator[list[int]]:
    """Count the spot events encoded (whichever encoder the sandbox uses)."""
    counts = [0]
    frame, message = m.encode_frame, m.encode_message

    def counted(encode: Any) -> Any:
        def wrapper(msg: Any, *args: Any) -> bytes:
            if isinstance(msg, m.ProtoOASpotEvent):
                counts[0] += 1
            return bytes(encode(msg, *args))

        return wrapper

    with (
        mock.patch.object(m, "encode_frame", counted(frame)),
        mock.patch.object(m, "encode_message", counted(message)),
    ):
        yield counts


def subscribe(
    wire: Wire,
    symbols: list[int],
    *,
    account: int = USD_ACCOUNT,
    stamps: bool = True,
    bars: bool = False,
    depth: bool = False,
) -> list[m.Envelope]:
    """Subscribe; return the events that came with the answers (first spots, first books)."""
    requests: list[tuple[Message, type[Message]]] = [
        (
            m.ProtoOASubscribeSpotsReq(
                ctidTraderAccountId=account, symbolId=symbols, subscribeToSpotTimestamp=stamps
            ),
            m.ProtoOASubscribeSpotsRes,
        )
    ]
    for sid in symbols if bars else ():
        live = m.ProtoOASubscribeLiveTrendbarReq(
            ctidTraderAccountId=account, symbolId=sid, period=M1
        )
        requests.append((live, m.ProtoOASubscribeLiveTrendbarRes))
    if depth:
        book = m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=account, symbolId=symbols)
        requests.append((book, m.ProtoOASubscribeDepthQuotesRes))
    events = []
    for request, answer in requests:
        frames = wire.request(request, "sub")
        assert isinstance(frames[0].message, answer), frames[0]
        events += frames[1:]
    return events


class FanOutTests(SynchronousTestCase):
    def test_one_encoding_per_symbol_per_tick(self) -> None:
        factory = make_factory(SandboxConfig(tick_interval=0.5, idle_timeout=0))
        wires = [Wire(factory).ready() for _ in range(40)]
        for wire in wires:
            subscribe(wire, [1], bars=True)
            wire.received()
        with spot_encodings() as counts:
            for _ in range(10):
                factory.clock.advance(0.5)
        streams = {wire.transport.value() for wire in wires}
        self.assertEqual(len(streams), 1, "every subscriber got the same bytes")
        events = len(wires[0].received())
        self.assertGreaterEqual(events, 8)  # (the quote changed on most ticks)
        self.assertEqual(counts[0], events)  # was one per subscriber: 40 times as many
        self.assertEqual(factory.stats.spot_events_sent, 40 * (1 + events))

    def test_one_write_per_connection_per_tick(self) -> None:
        wire = Wire(tick_interval=0.5, idle_timeout=0).ready()
        subscribe(wire, sorted(SYMBOLS), bars=True, depth=True)
        wire.received()
        writes: list[bytes] = []
        write = wire.transport.write

        def counted(data: bytes) -> None:
            writes.append(data)
            write(data)

        with mock.patch.object(wire.transport, "write", counted):
            wire.clock.advance(0.5)
        events = wire.received()
        self.assertEqual(len(writes), 1)  # was two per symbol (spot and depth): 32
        self.assertGreater(len(events), 16)

    def test_clients_get_what_they_asked_for(self) -> None:
        """Different accounts, with and without timestamps, bars or depth, one paused for a
        while and one subscribing late: each stream is right on its own."""
        config = SandboxConfig(tick_interval=1.0, idle_timeout=0, heartbeat_interval=0)
        factory = make_factory(config)
        walk = factory.walk
        # name -> (wire, {(account, symbol): (timestamps, bars, depth)})
        clients: dict[str, tuple[Wire, dict[tuple[int, int], tuple[bool, bool, bool]]]] = {}
        pending: dict[str, list[m.Envelope]] = {}

        def client(name: str, *accounts: int, **asked: bool) -> Wire:
            wire = Wire(factory).ready(*accounts)
            wanted = clients.setdefault(name, (wire, {}))[1]
            account = accounts[0] if accounts else USD_ACCOUNT
            symbols = [1, 2] if name != "late" else [2]
            pending.setdefault(name, []).extend(subscribe(wire, symbols, account=account, **asked))
            for sid in symbols:
                wanted[account, sid] = (
                    asked.get("stamps", True),
                    asked.get("bars", False),
                    asked.get("depth", False),
                )
            return wire

        client("plain", stamps=False)
        client("barred", bars=True)
        client("other", EUR_ACCOUNT)
        client("deep", depth=True)
        both = client("both", USD_ACCOUNT, EUR_ACCOUNT, bars=True, depth=True)
        pending["both"] += subscribe(both, [1], account=EUR_ACCOUNT, stamps=False)
        clients["both"][1][EUR_ACCOUNT, 1] = (False, False, False)
        client("paused", bars=True, depth=True)
        session = factory.sessions[-1]
        views: dict[tuple[str, int, int], tuple[int, int]] = {}
        books: dict[tuple[str, int, int], set[int]] = {}
        for name, (_, wanted) in clients.items():
            self.check(name, pending.pop(name), wanted, views, books, full=True)
        for second in range(40):
            if second == 10:
                session.flow.pauseProducing()
            if second == 20:
                client("late", bars=True)
                self.check("late", pending.pop("late"), clients["late"][1], views, books, full=True)
            if second == 25:
                session.flow.resumeProducing()
                paused, wanted = clients["paused"]
                self.check("paused", paused.received(), wanted, views, books, full=True)
            factory.clock.advance(1.0)
            now_ms = factory.now_ms()
            for name, (wire, wanted) in clients.items():
                events = wire.received()
                if name == "paused" and 10 <= second < 25:
                    self.assertEqual(events, [])
                    continue
                self.check(name, events, wanted, views, books, full=False)
                for account, sid in wanted:  # every change reached the client
                    quote = walk.quote_at(SYMBOLS[sid], now_ms)
                    self.assertEqual(views[name, account, sid], quote, name)
        self.assertGreater(factory.stats.market_events_dropped, 0)

    def check(
        self,
        name: str,
        envelopes: list[m.Envelope],
        wanted: dict[tuple[int, int], tuple[bool, bool, bool]],
        views: dict[tuple[str, int, int], tuple[int, int]],
        books: dict[tuple[str, int, int], set[int]],
        *,
        full: bool,
    ) -> None:
        """Each event of ``envelopes`` is for a subscription of the client, says what it
        asked for and only the sides that changed for this client (both when ``full``: first
        event, or after a pause), and each depth event deletes exactly the client's last book."""
        for envelope in envelopes:
            event = envelope.message
            if isinstance(event, m.ProtoErrorRes | m.ProtoOAErrorRes):
                continue
            key = (event.ctidTraderAccountId, event.symbolId)
            self.assertIn(key, wanted, name)
            stamps, bars, depth = wanted[key]
            if isinstance(event, m.ProtoOASpotEvent):
                self.assertEqual(event.HasField("timestamp"), stamps, name)
                if not full:
                    self.assertEqual(bool(event.trendbar), bars, name)
                view = views.get((name, *key))
                if full or view is None:
                    self.assertTrue(event.HasField("bid") and event.HasField("ask"), name)
                    views[(name, *key)] = (event.bid, event.ask)
                    continue
                bid, ask = view
                if event.HasField("bid"):
                    self.assertNotEqual(event.bid, bid, name)
                    bid = event.bid
                if event.HasField("ask"):
                    self.assertNotEqual(event.ask, ask, name)
                    ask = event.ask
                views[(name, *key)] = (bid, ask)
            elif isinstance(event, m.ProtoOADepthEvent):
                self.assertTrue(depth, name)
                previous = books.get((name, *key), set())
                self.assertEqual(set(event.deletedQuotes), previous, name)
                books[(name, *key)] = {quote.id for quote in event.newQuotes}
                self.assertEqual(len(event.newQuotes), 10)
            else:
                self.fail(f"{name}: unexpected {event!r}")


class BookkeepingTests(SynchronousTestCase):
    def test_closing_connections_leaves_nothing_behind(self) -> None:
        factory = make_factory(SandboxConfig(tick_interval=1.0, idle_timeout=0))
        wires = [Wire(factory).ready() for _ in range(30)]
        for index, wire in enumerate(wires):
            subscribe(wire, [1 + index % 16, 1 + (index + 5) % 16], depth=index % 2 == 0)
        factory.clock.advance(1.0)
        for wire in wires[:15]:
            wire.close()
        factory.clock.advance(1.0)
        feed: Any = factory.feed
        self.assertEqual(sum(len(subs) for subs in feed._subs.values()), 30)
        self.assertEqual(len(feed._by_session), 15)
        for wire in wires[15:]:
            wire.close()
        self.assertEqual((feed._subs, feed._by_session), ({}, {}))


class TickCostTests(SynchronousTestCase):
    """Loose bounds (tens of times the usual cost; the old code took several times them)."""

    def ready(self, start: float) -> Wire:
        config = SandboxConfig(tick_interval=0.001, idle_timeout=0, heartbeat_interval=0)
        wire = Wire(make_factory(config, start=start)).ready()
        subscribe(wire, sorted(SYMBOLS), bars=True)
        wire.received()
        return wire

    def test_first_tick_of_a_minute(self) -> None:
        """At 1 ms ticks the first tick of a minute used to generate 60,000 ticks of each of
        the 16 symbols (about 0.5 s); now only the ticks up to the current one."""
        wire = self.ready(MINUTE * 60 + 59.998)
        wire.clock.advance(0.001)
        begin = time.perf_counter()
        wire.clock.advance(0.002)
        elapsed = time.perf_counter() - begin
        self.assertLess(elapsed, 0.15)
        self.assertGreater(len(wire.received()), 16)

    def test_ticks_late_in_a_minute(self) -> None:
        """1,000 ticks from the 20th second of a minute, 16 symbols with live bars: the bar in
        progress used to be rebuilt from every tick since the minute began (about 12 s)."""
        wire = self.ready(MINUTE * 60 + 20)
        begin = time.perf_counter()
        for _ in range(1000):
            wire.clock.advance(0.001)
        elapsed = time.perf_counter() - begin
        self.assertLess(elapsed, 4.0)
        self.assertGreater(len(wire.received()), 1000)


class TickScheduleTests(SynchronousTestCase):
    """The feed's timer at 1 ms ticks when the reactor wakes up late (it waits in whole
    milliseconds): no tick skipped, ticks moved onto the walk's slot boundaries."""

    def run_late(self, lateness: float) -> tuple[int, int]:
        """Tick for 2 s of 1 ms slots, each wake-up up to ``lateness`` s late; return the
        price changes delivered and the price changes of the walk in that time."""
        config = SandboxConfig(tick_interval=0.001, idle_timeout=0, heartbeat_interval=0)
        wire = Wire(make_factory(config, start=MINUTE * 60 + 10.0004)).ready()
        subscribe(wire, [1])
        clock, rng = wire.clock, random.Random(7)
        first = wire.factory.now_ms()
        while clock.seconds() < MINUTE * 60 + 12:
            due = min(call.getTime() for call in clock.getDelayedCalls())
            clock.advance(max(0.0, due - clock.seconds()) + rng.uniform(0, lateness))
        last = wire.factory.now_ms()
        spots = [e.message for e in wire.received() if isinstance(e.message, m.ProtoOASpotEvent)]
        stamps = [spot.timestamp for spot in spots]
        self.assertEqual(stamps, sorted(set(stamps)))
        got = len(spots)
        walk, spec = PriceWalk(1, 1), SYMBOLS[1]
        quotes = [walk.quote_at(spec, ms) for ms in range(first, last + 1)]
        changes = sum(a != b for a, b in pairwise(quotes))
        return got, changes

    def test_late_wake_ups_skip_no_tick(self) -> None:
        got, changes = self.run_late(0.0009)
        self.assertGreater(changes, 1500)
        self.assertGreaterEqual(got, changes * 0.99)  # a LoopingCall delivered 79%

    def test_a_few_milliseconds_late_sends_every_price(self) -> None:
        """Woken up to 4 ms late (a busy machine): the ticks missed meanwhile still run, one
        after the other, each sending the price of its own slot stamped with its time."""
        got, changes = self.run_late(0.004)
        self.assertGreaterEqual(got, changes * 0.99)

    def test_far_behind_catches_up_once(self) -> None:
        config = SandboxConfig(tick_interval=0.001, idle_timeout=0, heartbeat_interval=0)
        wire = Wire(make_factory(config)).ready()
        subscribe(wire, [1])
        wire.clock.advance(0.5)  # 500 intervals at once: one tick, not 500
        self.assertLessEqual(len(wire.received()), 2)
        for _ in range(100):
            wire.clock.advance(0.001)
        self.assertGreater(len(wire.received()), 80)


class TLSEndpointTests(SynchronousTestCase):
    def test_writes_go_to_tls_at_once(self) -> None:
        """The sandbox's TLS connections encrypt each write at once: Twisted's default TLS
        server transport would add a delayed call per connection per tick."""
        from twisted.internet.testing import MemoryReactor
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        from ctrader_twisted.sandbox.certs import ensure_certificates, server_tls_options
        from ctrader_twisted.sandbox.server import tls_server_endpoint

        certs = ensure_certificates(Path(self.mktemp()))
        options = server_tls_options(certs.server_file.read_bytes())
        reactor = MemoryReactor()
        factory = make_factory()
        tls_server_endpoint(reactor, 0, options, "127.0.0.1").listen(factory)
        (port,) = reactor.tcpServers
        protocol = port[1].buildProtocol(None)
        self.assertIs(type(protocol), TLSMemoryBIOProtocol)
        self.assertIs(protocol.wrappedProtocol.factory, factory)


class NoDelayTests(SynchronousTestCase):
    def test_nagle_is_off(self) -> None:
        """Small writes go out at once rather than after the client's acknowledgement of the
        previous one (which a client may delay by 40 ms: a 43 ms p99 at 1 ms ticks)."""
        from twisted.internet.testing import StringTransport

        calls: list[bool] = []

        class TCPLike(StringTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        protocol = make_factory().buildProtocol(None)
        protocol.makeConnection(TCPLike())
        self.assertEqual(calls, [True])
