"""Fault soak on real sockets: the client over verified TLS against a sandbox on 127.0.0.1.

A shorter, real-time companion to :mod:`tests.test_faults`: the same faults, but through the
real reactor, real TLS and real TCP, so an abort really is a RST, a stall really leaves the
socket open with no FIN (the sandbox stops reading), and a restart really closes the listening
port and opens a new one on the same port.  Trial's dirty-reactor check then proves that no
timer or socket is left behind.  About 8 s.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted._client_session import Session as ClientSession
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from ctrader_twisted.tls import tls_endpoint
from tests.hostile import LogCapture, forget_buffered_log, leaks

reactor: Any = _reactor
ACCOUNT = 5000002
#: Orders go to EURUSD and GBPUSD.
SYMBOLS = [1, 2]
#: Streamed: BTCUSD (spots and live M1 bars) and US500 (spots and depth).  Their walks move
#: at least once a second for this seed, so a few seconds always bring a tick; a quiet major
#: can keep one price for tens of seconds (the feed sends only changes), which no bounded
#: wait could tell from a lost subscription.
BARS_SYMBOL, DEPTH_SYMBOL = 16, 15
STREAMED = [BARS_SYMBOL, DEPTH_SYMBOL]
NEW_ORDER = m.payload_type_of(m.ProtoOANewOrderReq)
CONFIG = SandboxConfig(seed=5, tick_interval=0.05, heartbeat_interval=0.3, always_open=True)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@implementer(IStreamClientEndpoint)
class _NotifyingEndpoint:
    """Call ``on_connect()`` before every connection attempt of the client."""

    def __init__(self, inner: IStreamClientEndpoint, on_connect: Callable[[], None]) -> None:
        self._inner = inner
        self._on_connect = on_connect

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._on_connect()
        return self._inner.connect(protocolFactory)


class _Tap:
    """Forward a sandbox session's events, recording the NewOrderReq it handles."""

    def __init__(self, inner: Any, seen: Counter[str]) -> None:
        self._inner = inner
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        message = envelope.message
        if isinstance(message, m.ProtoOANewOrderReq) and not self._inner.stalled:
            self._seen[message.clientOrderId] += 1
        self._inner.envelope_received(protocol, envelope)


class TLSFaultSoakTests(TestCase):
    timeout = 60

    async def _start_sandbox(self, port: int = 0) -> RunningSandbox:
        running = await start_sandbox(reactor, CONFIG, port=port, state_dir=self.state_dir)
        factory = running.factory
        build = factory.buildProtocol

        def tapped(addr: Any) -> OpenApiProtocol:
            protocol = build(addr)
            protocol.handler = _Tap(protocol.handler, self.orders_seen)
            return protocol

        factory.buildProtocol = tapped  # type: ignore[method-assign]
        self.sandboxes.append(running)
        return running

    def _track(self, d: Deferred[Any]) -> int:
        number = self.issued
        self.issued += 1

        def done(result: object) -> None:
            failed = isinstance(result, Failure)
            self.outcomes[number] = type(result.value).__name__ if failed else "ok"

        d.addBoth(done)
        return number

    def _traffic(self) -> None:
        self.ticks += 1
        self._track(self.client.request(m.ProtoOAVersionReq()))
        if self.ticks % 4 == 0:
            order_id = f"tls-soak-{len(self.orders)}"
            request = m.ProtoOANewOrderReq(
                ctidTraderAccountId=ACCOUNT,
                symbolId=SYMBOLS[self.ticks % 2],
                orderType=m.ProtoOAOrderType.MARKET,
                tradeSide=m.ProtoOATradeSide.BUY,
                volume=100_000,
                clientOrderId=order_id,
            )
            self.orders[order_id] = self._track(self.client.request(request))

    async def test_soak_over_tls(self) -> None:
        self.state_dir = Path(self.mktemp())
        self.sandboxes: list[RunningSandbox] = []
        self.orders_seen: Counter[str] = Counter()
        self.issued, self.ticks = 0, 0
        self.outcomes: dict[int, str] = {}
        self.orders: dict[str, int] = {}
        log = LogCapture()
        log.__enter__()
        self.addCleanup(log.__exit__)
        running = await self._start_sandbox()
        port = running.port
        spots: Counter[int] = Counter()
        bars: Counter[int] = Counter()
        depth: Counter[int] = Counter()

        def new_connection() -> None:
            # Count only what arrives on the newest connection: the old one is gone (the
            # client reconnects after it lost it), so nothing from it can arrive any more.
            for counter in (spots, bars, depth):
                counter.clear()

        endpoint = tls_endpoint(reactor, "localhost", port, ca_file=running.ca_file)
        self.client = Client(
            _NotifyingEndpoint(endpoint, new_connection),
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=reactor,
            heartbeat_interval=0.3,
            dead_link_timeout=1.0,
            request_timeout=2.0,
            send_timeout=4.0,
            reconnect_initial_delay=0.05,
            reconnect_max_delay=0.5,
        )

        def on_spot(event: m.ProtoOASpotEvent) -> None:
            spots[event.symbolId] += 1
            if len(event.trendbar):
                bars[event.symbolId] += 1

        self.client.on(m.ProtoOASpotEvent, on_spot)
        self.client.on(m.ProtoOADepthEvent, lambda event: depth.update([event.symbolId]))
        self.client.startService()
        await self.client.when_ready()
        await self.client.authorize_account(ACCOUNT, DEFAULT_ACCESS_TOKEN)
        await self.client.subscribe_spots(ACCOUNT, STREAMED)
        await self.client.subscribe_live_trendbars(ACCOUNT, BARS_SYMBOL, 1)
        await self.client.subscribe_depth(ACCOUNT, [DEPTH_SYMBOL])
        traffic = LoopingCall(self._traffic)
        traffic.start(0.1)
        faults: Counter[str] = Counter()
        try:
            for kind in ("drop", "stall", "restart", "drop", "stall"):
                await sleep(1.0)
                faults[kind] += 1
                current = self.sandboxes[-1]
                if kind == "drop":
                    current.factory.drop_all()
                elif kind == "stall":
                    current.factory.stall_all()
                else:
                    await current.stop()
                    await sleep(0.5)
                    await self._start_sandbox(port)
                await self._ready_again(faults)
        finally:
            traffic.stop()

        # Subscriptions live again on the newest connection: the restore's full prices and
        # book, then ticks with bars (bounded wait: a loaded machine may be slow).
        def streaming() -> bool:
            ticked = all(spots[symbol] >= 2 for symbol in STREAMED)
            return ticked and BARS_SYMBOL in bars and DEPTH_SYMBOL in depth

        for _ in range(100):
            if streaming():
                break
            await sleep(0.05)
        self.assertEqual(set(spots), set(STREAMED))
        self.assertTrue(streaming(), (spots, bars, depth))
        # Nothing pending once the longest timeout (send_timeout) has passed.
        for _ in range(40):
            if self.issued == len(self.outcomes):
                break
            await sleep(0.1)
        self.assertEqual(self.issued - len(self.outcomes), 0, "request Deferreds left pending")
        kinds = Counter(self.outcomes.values())
        self.assertLessEqual(set(kinds), {"ok", "ConnectionLost", "NotConnected", "RequestTimeout"})
        self.assertGreater(kinds["ok"], self.issued // 2, kinds)
        self._check_orders()
        forget_buffered_log()
        gc.collect()
        self.assertEqual(sum(1 for o in gc.get_objects() if type(o) is ClientSession), 1)
        # At least one reconnection per fault (a loaded machine may add a spurious one).
        self.assertGreaterEqual(self.client.reconnect_count, sum(faults.values()))
        await self.client.stopService()
        for sandbox in self.sandboxes[-1:]:
            await sandbox.stop()
        self.assertEqual(leaks(log.texts(), [DEFAULT_CLIENT_SECRET, DEFAULT_ACCESS_TOKEN]), [])
        self.assertEqual(log.at("critical"), [])

    async def _ready_again(self, faults: Counter[str]) -> None:
        """Wait (bounded) until the client has reconnected after the latest fault."""
        for _ in range(100):
            if self.client.is_ready and self.client.reconnect_count >= sum(faults.values()):
                return
            await sleep(0.05)
        self.fail(f"not ready again after {dict(faults)}")

    def _check_orders(self) -> None:
        duplicates = {k: n for k, n in self.orders_seen.items() if n > 1}
        self.assertEqual(duplicates, {}, "an order reached the server twice")
        counted = sum(
            s.factory.stats.requests_by_payload_type.get(NEW_ORDER, 0) for s in self.sandboxes
        )
        self.assertEqual(counted, sum(self.orders_seen.values()))
        for order_id, number in self.orders.items():
            outcome = self.outcomes[number]
            if outcome == "ok":
                self.assertEqual(self.orders_seen[order_id], 1)
            elif outcome == "NotConnected":
                self.assertEqual(self.orders_seen[order_id], 0)
