"""Fault soak, simulated time: the real client against the real sandbox, in memory.

The sandbox (:class:`~ctrader_twisted.sandbox.SandboxFactory`) and the client share one Clock
and talk through ``iosim`` transports (:class:`tests.hostile.MemoryNetwork`), so ten minutes of
traffic with a fault every few seconds run in a few real seconds.  Faults cycle through: the
server aborts every connection, the link stalls with no FIN (only the client's dead-link
detection can notice), the server restarts (refusing connections for a while, then a new
sandbox with empty state), a corrupt frame, and an oversize length prefix.

Afterwards: every subscription is live again, every request Deferred has fired, the clock holds
no timer once everything is stopped, the client's own objects did not pile up, its traced
memory is flat, and no trading request reached a server twice (checked per ``clientOrderId``
and against the sandboxes' own counters).
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted._client_session import Session as ClientSession
from ctrader_twisted._pending import PendingRequest
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SandboxConfig,
    SandboxFactory,
)
from ctrader_twisted.sandbox.session import CORRUPT_FRAME
from tests.hostile import LogCapture, MemoryNetwork, forget_buffered_log, leaks

#: Simulated seconds of soak; CTRADER_SOAK_SECONDS raises it for longer runs.
SOAK_SECONDS = float(os.environ.get("CTRADER_SOAK_SECONDS", "600"))
FAULT_EVERY = 6.0
ACCOUNT = 5000001
SYMBOLS = [1, 2, 3]
NEW_ORDER = m.payload_type_of(m.ProtoOANewOrderReq)
CONFIG = SandboxConfig(seed=3, tick_interval=0.5, heartbeat_interval=1.0, always_open=True)
#: Unix time the simulation starts at (the sandbox reads the clock as Unix time).
EPOCH = 1_760_000_000.0


class OrderTap:
    """Wraps a sandbox session handler to record every NewOrderReq that reaches the server
    (``seen``) and those the session acts on (``handled``: not stalled or closing)."""

    def __init__(self, inner: Any, seen: Counter[str], handled: Counter[str]) -> None:
        self._inner = inner
        self._seen = seen
        self._handled = handled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        if isinstance(envelope.message, m.ProtoOANewOrderReq):
            self._seen[envelope.message.clientOrderId] += 1
            if not (self._inner.stalled or self._inner.closing):
                self._handled[envelope.message.clientOrderId] += 1
        self._inner.envelope_received(protocol, envelope)


class TappedSandbox(SandboxFactory):
    """A sandbox whose sessions report every order request they receive."""

    def __init__(self, config: SandboxConfig, clock: Clock, soak: Soak) -> None:
        super().__init__(config, clock)
        self._soak = soak

    def buildProtocol(self, addr: Any) -> OpenApiProtocol:
        protocol = super().buildProtocol(addr)
        protocol.handler = OrderTap(protocol.handler, self._soak.orders_seen, self.handled)
        return protocol

    @property
    def handled(self) -> Counter[str]:
        return self._soak.orders_handled


class Soak:
    """The client, the sandboxes it has met, and every request it made."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.orders_seen: Counter[str] = Counter()
        self.orders_handled: Counter[str] = Counter()
        self.sandboxes = [TappedSandbox(CONFIG, self.clock, self)]
        self.network = MemoryNetwork(self.sandboxes[0], self.clock)
        self.client = Client(
            self.network,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=self.clock,
            heartbeat_interval=1.0,
            dead_link_timeout=3.0,
            request_timeout=5.0,
            send_timeout=10.0,
            reconnect_initial_delay=0.2,
            reconnect_max_delay=2.0,
        )
        #: Outcome of every request by number: "ok" or the failure's type name.  Only names
        #: are kept, so the soak holds no reference to the client's objects.
        self.issued = 0
        self.outcomes: dict[int, str] = {}
        self.orders: dict[str, int] = {}
        self.spots: Counter[int] = Counter()
        self.bars: Counter[int] = Counter()
        self.depth: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.client.on(m.ProtoOASpotEvent, self._spot)
        self.client.on(m.ProtoOADepthEvent, lambda event: self.depth.update([event.symbolId]))

    def _spot(self, event: m.ProtoOASpotEvent) -> None:
        self.spots[event.symbolId] += 1
        if len(event.trendbar):
            self.bars[event.symbolId] += 1

    @property
    def sandbox(self) -> SandboxFactory:
        return self.sandboxes[-1]

    def start(self) -> None:
        self.client.startService()
        self.network.run_until(lambda: self.client.is_ready, limit=5)
        self.track(self.client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN))
        self.track(self.client.subscribe_spots(ACCOUNT, SYMBOLS))
        self.track(self.client.subscribe_live_trendbars(ACCOUNT, SYMBOLS[0], 1))
        self.track(self.client.subscribe_depth(ACCOUNT, [SYMBOLS[1]]))
        self.network.run(1)
        assert set(self.outcomes.values()) == {"ok"}, self.outcomes

    def track(self, d: Deferred[Any]) -> int:
        number = self.issued
        self.issued += 1

        def done(result: object) -> None:
            failed = isinstance(result, Failure)
            self.outcomes[number] = type(result.value).__name__ if failed else "ok"

        d.addBoth(done)
        return number

    # Traffic

    def traffic(self, second: int) -> None:
        """One second's worth of ordinary requests, and an order every other second."""
        self.track(self.client.request(m.ProtoOAVersionReq()))
        self.track(
            self.client.request(m.ProtoOASymbolByIdReq(ctidTraderAccountId=ACCOUNT, symbolId=[1]))
        )
        if second % 2 == 0:
            order_id = f"soak-{len(self.orders)}"
            request = m.ProtoOANewOrderReq(
                ctidTraderAccountId=ACCOUNT,
                symbolId=SYMBOLS[second % 3],
                orderType=m.ProtoOAOrderType.MARKET,
                tradeSide=m.ProtoOATradeSide.BUY if second % 4 else m.ProtoOATradeSide.SELL,
                volume=100_000,
                clientOrderId=order_id,
            )
            self.orders[order_id] = self.track(self.client.request(request))

    # Faults

    def inject(self, number: int) -> None:
        kind = ("drop", "stall", "restart", "corrupt", "oversize")[number % 5]
        self.faults[kind] += 1
        if kind == "drop":
            self.sandbox.drop_all()
        elif kind == "stall":
            self.sandbox.stall_all()
        elif kind == "restart":
            self.network.refusing = True
            self.sandbox.drop_all()
            self.network.run(2.0)
            fresh = TappedSandbox(CONFIG, self.clock, self)
            self.sandboxes.append(fresh)
            self.network.server_factory = fresh
            self.network.refusing = False
        else:
            data = CORRUPT_FRAME if kind == "corrupt" else b"\xff\xff\xff\xff"
            for session in self.sandbox.sessions:
                if session.protocol is not None and session.protocol.transport is not None:
                    session.protocol.transport.write(data)

    def run(self, seconds: float) -> None:
        fault = 0
        next_fault = self.clock.seconds() + FAULT_EVERY
        for second in range(int(seconds)):
            self.traffic(second)
            self.network.run(1.0, step=0.1)
            if self.clock.seconds() >= next_fault:
                self.inject(fault)
                fault += 1
                next_fault = self.clock.seconds() + FAULT_EVERY

    def settle(self) -> None:
        self.network.run_until(lambda: self.client.is_ready, limit=15)
        self.network.run(6)  # longer than request_timeout: nothing can still be waiting

    def stop(self) -> None:
        stopped = self.client.stopService()
        self.network.run(1)
        for sandbox in self.sandboxes:
            sandbox.drop_all()
            sandbox.feed.stop()
        self.network.run(1)
        self.network.close_all()
        self.clock.advance(0)
        assert stopped.called


def _live(kind: type) -> int:
    forget_buffered_log()
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def _client_memory() -> int:
    """Bytes currently traced to the client's own modules (the framing module is shared with
    the sandbox, whose state legitimately grows, so it is left out; its objects are counted
    instead)."""
    forget_buffered_log()
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(True, "*/ctrader_twisted/client.py"),
            tracemalloc.Filter(True, "*/ctrader_twisted/_client_*.py"),
            tracemalloc.Filter(True, "*/ctrader_twisted/_pending.py"),
            tracemalloc.Filter(True, "*/ctrader_twisted/_ratelimit.py"),
        ]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


class FaultSoakTests(SynchronousTestCase):
    logged_events = 0

    def test_soak(self) -> None:
        log = LogCapture()
        with log:
            soak = Soak()
            soak.start()
            tracemalloc.start()
            self.addCleanup(tracemalloc.stop)
            soak.run(60)  # warm-up: every fault kind once, caches filled
            soak.settle()
            self.drain(log)
            memory_before, sessions_before = _client_memory(), _live(ClientSession)
            soak.run(SOAK_SECONDS)
            soak.settle()
            self.drain(log)
            memory_after, sessions_after = _client_memory(), _live(ClientSession)
            self.check_subscriptions_live(soak)
            self.check_requests(soak)
            self.check_orders(soak)
            soak.stop()
        # No leak: one client session object at a time, no pending request objects, flat memory.
        self.assertEqual((sessions_before, sessions_after), (1, 1))
        self.assertEqual(_live(PendingRequest), 0)
        self.assertLess(memory_after - memory_before, 64 * 1024, (memory_before, memory_after))
        self.assertEqual(soak.clock.getDelayedCalls(), [], "timers leaked")
        self.assertEqual(leaks(log.texts(), [DEFAULT_CLIENT_SECRET, DEFAULT_ACCESS_TOKEN]), [])
        self.assertEqual(log.at("critical"), [])
        total = sum(soak.faults.values())
        self.assertGreaterEqual(total, SOAK_SECONDS / (FAULT_EVERY + 3))
        self.assertEqual(soak.client.reconnect_count, soak.network.connections - 1)
        print(
            f"\nsoak: {SOAK_SECONDS:g} simulated s, faults {dict(soak.faults)}, "
            f"{soak.issued} requests ({len(soak.orders)} orders), "
            f"{soak.client.reconnect_count} reconnects, client memory "
            f"{memory_before} -> {memory_after} bytes, {self.logged_events} log events"
        )

    def drain(self, log: LogCapture) -> None:
        """Check the log so far for secrets and crashes, then let go of it: captured events
        hold exceptions whose tracebacks would keep old connections alive."""
        self.assertEqual(leaks(log.texts(), [DEFAULT_CLIENT_SECRET, DEFAULT_ACCESS_TOKEN]), [])
        self.assertEqual(log.at("critical"), [])
        self.logged_events += len(log.events)
        log.events.clear()

    def check_subscriptions_live(self, soak: Soak) -> None:
        for counter in (soak.spots, soak.bars, soak.depth):
            counter.clear()
        soak.network.run(5)
        self.assertEqual(set(soak.spots), set(SYMBOLS))
        self.assertIn(SYMBOLS[0], soak.bars)
        self.assertIn(SYMBOLS[1], soak.depth)

    def check_requests(self, soak: Soak) -> None:
        pending = soak.issued - len(soak.outcomes)
        self.assertEqual(pending, 0, "request Deferreds left pending")
        kinds = Counter(soak.outcomes.values())
        allowed = {"ok", "ConnectionLost", "NotConnected", "RequestTimeout", "MalformedMessage"}
        self.assertLessEqual(set(kinds), allowed, kinds)
        self.assertGreater(kinds["ok"], soak.issued // 2, kinds)

    def check_orders(self, soak: Soak) -> None:
        """At most once on the wire; exactly once for every order that was answered."""
        duplicates = {k: n for k, n in soak.orders_seen.items() if n > 1}
        self.assertEqual(duplicates, {}, "an order reached the server twice")
        counted = sum(s.stats.requests_by_payload_type.get(NEW_ORDER, 0) for s in soak.sandboxes)
        self.assertEqual(counted, sum(soak.orders_handled.values()))
        for order_id, number in soak.orders.items():
            outcome = soak.outcomes[number]
            if outcome == "ok":
                self.assertEqual(soak.orders_handled[order_id], 1)
            elif outcome == "NotConnected":
                self.assertEqual(soak.orders_seen[order_id], 0, order_id)
            else:
                self.assertIn(outcome, {"ConnectionLost", "RequestTimeout"})


class RateLimitTests(SynchronousTestCase):
    """A server that refuses for the rate limit: ordinary requests are sent again after
    ``retryAfter`` and succeed; trading requests fail with ``RateLimited`` and are never sent
    again (the server counts each exactly once)."""

    def test_refused_for_rate_limit(self) -> None:
        from ctrader_twisted.errors import RateLimited
        from ctrader_twisted.testing import MemorySandbox

        sandbox = MemorySandbox(
            SandboxConfig(rate_limit=5, rate_limit_mode="blocked", always_open=True)
        )
        client = sandbox.client(rate_limit=50, rate_limit_retries=3)
        client.startService()
        sandbox.result(client.when_ready())
        sandbox.result(client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN))
        sandbox.advance(2)
        results: dict[str, list[object]] = {"version": [], "order": []}

        def issue(kind: str, message: Any) -> None:
            d = client.request(message)
            d.addBoth(results[kind].append)

        for _ in range(3):
            issue("version", m.ProtoOAVersionReq())
        for i in range(5):
            issue(
                "order",
                m.ProtoOANewOrderReq(
                    ctidTraderAccountId=ACCOUNT,
                    symbolId=1,
                    orderType=m.ProtoOAOrderType.MARKET,
                    tradeSide=m.ProtoOATradeSide.BUY,
                    volume=100_000,
                    clientOrderId=f"rl-{i}",
                ),
            )
        for _ in range(9):
            issue("version", m.ProtoOAVersionReq())
        sandbox.advance(10)
        self.assertEqual(len(results["version"]), 12)
        self.assertTrue(all(isinstance(r, m.ProtoOAVersionRes) for r in results["version"]))
        refused = [r for r in results["order"] if isinstance(r, Failure)]
        self.assertEqual(len(results["order"]), 5)
        self.assertGreater(len(refused), 0)
        for failure in refused:
            self.assertIsInstance(failure.value, RateLimited)
        self.assertEqual(sandbox.factory.stats.requests_by_payload_type[NEW_ORDER], 5)
        self.assertGreater(sandbox.factory.stats.rate_limited, 9)
        d = client.stopService()
        sandbox.advance(1)
        self.assertTrue(d.called)
        sandbox.factory.feed.stop()
        self.assertEqual(sandbox.clock.getDelayedCalls(), [])
