"""Hostile clients against the sandbox: it keeps serving a well-behaved client.

Real TLS on 127.0.0.1.  While a normal :class:`~ctrader_twisted.Client` streams spots and makes
a request every 100 ms, the sandbox also carries: dozens of idle connections, connections that
send garbage or an absurd length prefix, connections asking about accounts they did not
authorize (or with a wrong token), request floods, and slow readers that subscribe to every
symbol and then stop reading.  The good client's answers stay fast, its stream never pauses,
every hostile request gets a refusal, and no hostile connection sees another account's data.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SANDBOX_SYMBOLS,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from ctrader_twisted.tls import tls_endpoint
from tests.hostile import Peer

reactor: Any = _reactor
GOOD_ACCOUNT = 5000002
OTHER_ACCOUNT = 5000001
CONFIG = SandboxConfig(seed=9, tick_interval=0.05, always_open=True)
#: The good client's symbols (EURUSD, GBPUSD, XAUUSD, BTCUSD).  The feed sends only price
#: changes and one symbol may keep its price for many seconds; together these four change
#: several times a second for this seed, so a gap of a second in their stream is the sandbox's.
GOOD_SYMBOLS = [1, 2, 13, 16]
#: The good client is observed for at least this long and this many answered requests
#: (however long the attack takes on a loaded machine), and at most ``OBSERVE_LIMIT`` s.
OBSERVE_SECONDS, OBSERVE_ANSWERS, OBSERVE_LIMIT = 2.0, 15, 10.0
#: Hostile population.
IDLE, GARBAGE, OVERSIZE, NOSY, FLOODERS, SLOW = 40, 10, 5, 5, 3, 2


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class HostileClientsTests(TestCase):
    timeout = 60

    async def _peer(self, running: RunningSandbox) -> Peer:
        peer = Peer()
        factory = Factory.forProtocol(lambda: OpenApiProtocol(peer, reactor))
        await running.endpoint(reactor).connect(factory)
        self.peers.append(peer)
        return peer

    async def _logged_in(self, running: RunningSandbox, account: int | None) -> Peer:
        peer = await self._peer(running)
        auth = m.ProtoOAApplicationAuthReq(
            clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
        )
        answer = await peer.ask(auth, "app")
        self.assertIsInstance(answer.message, m.ProtoOAApplicationAuthRes)
        if account is not None:
            request = m.ProtoOAAccountAuthReq(
                ctidTraderAccountId=account, accessToken=DEFAULT_ACCESS_TOKEN
            )
            answer = await peer.ask(request, "acc")
            self.assertIsInstance(answer.message, m.ProtoOAAccountAuthRes)
        return peer

    def _cleanup_peers(self) -> None:
        for peer in self.peers:
            peer.close()

    async def test_sandbox_keeps_serving_a_good_client(self) -> None:
        self.peers: list[Peer] = []
        self.addCleanup(self._cleanup_peers)
        running = await start_sandbox(reactor, CONFIG, state_dir=Path(self.mktemp()))
        self.addCleanup(running.stop)
        client = Client(
            tls_endpoint(reactor, "localhost", running.port, ca_file=running.ca_file),
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=reactor,
        )
        self.addCleanup(client.stopService)
        spots: list[float] = []
        client.on(m.ProtoOASpotEvent, lambda event: spots.append(time.monotonic()))
        client.startService()
        await client.when_ready()
        await client.authorize_account(GOOD_ACCOUNT, DEFAULT_ACCESS_TOKEN)
        await client.subscribe_spots(GOOD_ACCOUNT, GOOD_SYMBOLS)

        latencies: list[float] = []
        probes = Counter[str]()

        def probe() -> None:
            started = time.monotonic()
            probes["sent"] += 1
            d = client.request(m.ProtoOAVersionReq())
            d.addCallback(lambda _: latencies.append(time.monotonic() - started))

        prober = LoopingCall(probe)
        began = time.monotonic()
        prober.start(0.1)
        try:
            outcomes = await self._attack(running)
            await self._observe(began, latencies)
        finally:
            prober.stop()
        # The last probe gets up to the allowed latency to come back.
        for _ in range(20):
            if len(latencies) == probes["sent"]:
                break
            await sleep(0.05)
        self.assertEqual(len(latencies), probes["sent"], "a request of the good client got lost")
        self._check_good_client(latencies, spots)
        self._check_refusals(outcomes)
        stats = running.factory.stats
        self.assertGreaterEqual(stats.connections_total, 1 + IDLE + GARBAGE + OVERSIZE)
        # Slow readers cost at most one paused buffer each (64 KiB and a TLS record or two).
        self.assertLess(outcomes["backlog"], SLOW * 160 * 1024)
        print(
            f"\nhostile clients: {stats.connections_total} connections, "
            f"{stats.rate_limited} rate-limited, errors {dict(stats.errors_by_code)}; "
            f"good client: {len(latencies)} requests, max latency {max(latencies):.3f} s, "
            f"{len(spots)} spots; slow-reader backlog {outcomes['backlog']} bytes"
        )

    async def _observe(self, began: float, latencies: list[float]) -> None:
        """Keep the good client working (after the attack) until it has been observed for
        ``OBSERVE_SECONDS`` and ``OBSERVE_ANSWERS`` answers, or ``OBSERVE_LIMIT`` s passed."""
        while time.monotonic() - began < OBSERVE_LIMIT:
            if time.monotonic() - began >= OBSERVE_SECONDS and len(latencies) >= OBSERVE_ANSWERS:
                return
            await sleep(0.05)

    async def _attack(self, running: RunningSandbox) -> dict[str, Any]:
        outcomes: dict[str, Any] = {}
        idle = [await self._peer(running) for _ in range(IDLE)]
        # Garbage and oversize prefixes: refused and closed.
        rng = random.Random(8)
        breakers = []
        for i in range(GARBAGE + OVERSIZE):
            peer = await self._peer(running)
            if i < GARBAGE:
                body = rng.randbytes(60)
                peer.write(len(body).to_bytes(4, "big") + body)
            else:
                peer.write(b"\x7f\xff\xff\xff" + b"\x00" * 64)
            breakers.append(peer)
        # Slow readers: subscribe to everything, then stop reading.
        slow = [await self._logged_in(running, OTHER_ACCOUNT) for _ in range(SLOW)]
        every = sorted(SANDBOX_SYMBOLS)
        for peer in slow:
            await peer.ask(
                m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=OTHER_ACCOUNT, symbolId=every),
                "spots",
            )
            await peer.ask(
                m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=OTHER_ACCOUNT, symbolId=every),
                "depth",
            )
            assert peer.protocol is not None
            peer.protocol.transport.pauseProducing()  # type: ignore[union-attr]
        outcomes["nosy"] = await gatherResults(
            [Deferred.fromCoroutine(self._nosy(running)) for _ in range(NOSY)]
        )
        outcomes["floods"] = await gatherResults(
            [Deferred.fromCoroutine(self._flood(running)) for _ in range(FLOODERS)]
        )
        await gatherResults([peer.closed for peer in breakers])
        outcomes["breakers"] = breakers
        await sleep(1.5)  # let the slow readers' backlog build while the good client works
        outcomes["backlog"] = _backlog(running)
        outcomes["idle_open"] = sum(1 for peer in idle if not peer.is_closed)
        return outcomes

    async def _nosy(self, running: RunningSandbox) -> list[m.Envelope]:
        """Authorized for one account, asking about another, or with a bad token."""
        peer = await self._logged_in(running, OTHER_ACCOUNT)
        asks = [
            m.ProtoOAReconcileReq(ctidTraderAccountId=GOOD_ACCOUNT),
            m.ProtoOATraderReq(ctidTraderAccountId=GOOD_ACCOUNT),
            m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=GOOD_ACCOUNT, symbolId=[1]),
            m.ProtoOANewOrderReq(
                ctidTraderAccountId=GOOD_ACCOUNT,
                symbolId=1,
                orderType=m.ProtoOAOrderType.MARKET,
                tradeSide=m.ProtoOATradeSide.BUY,
                volume=100_000,
            ),
            m.ProtoOAAccountAuthReq(ctidTraderAccountId=GOOD_ACCOUNT, accessToken="forged"),
            m.ProtoOAAccountAuthReq(ctidTraderAccountId=7777777, accessToken=DEFAULT_ACCESS_TOKEN),
        ]
        return list(
            await gatherResults([peer.ask(message, f"n{i}") for i, message in enumerate(asks)])
        )

    async def _flood(self, running: RunningSandbox) -> Counter[str]:
        peer = await self._logged_in(running, None)
        waiters = []
        frames = []
        for i in range(300):
            waiters.append(peer._waiting.setdefault(f"f{i}", Deferred()))
            frames.append(m.encode_frame(m.ProtoOAVersionReq(), f"f{i}"))
        peer.write(b"".join(frames))
        answers = await gatherResults(waiters)
        return Counter(
            getattr(a.message, "errorCode", "") or type(a.message).__name__ for a in answers
        )

    def _check_good_client(self, latencies: list[float], spots: list[float]) -> None:
        self.assertGreaterEqual(len(latencies), OBSERVE_ANSWERS)
        self.assertLess(max(latencies), 1.0, "the good client's requests slowed down")
        gaps = [b - a for a, b in itertools.pairwise(spots)]
        self.assertGreater(len(spots), 10)
        self.assertLess(max(gaps), 1.0, "the good client's spot stream paused")

    def _check_refusals(self, outcomes: dict[str, Any]) -> None:
        for answers in outcomes["nosy"]:
            for answer in answers:
                self.assertIsInstance(answer.message, m.ProtoOAErrorRes | m.ProtoOAOrderErrorEvent)
                self.assertNotEqual(answer.message.errorCode, "")
        for counts in outcomes["floods"]:
            self.assertEqual(sum(counts.values()), 300)
            self.assertGreater(counts["REQUEST_FREQUENCY_EXCEEDED"], 200)
        for peer in outcomes["breakers"]:
            self.assertTrue(peer.is_closed)
            codes = {getattr(e.message, "errorCode", None) for e in peer.received}
            self.assertTrue(codes & {"INVALID_REQUEST", "FRAME_TOO_LONG"}, codes)
        self.assertEqual(outcomes["idle_open"], IDLE)


def _backlog(running: RunningSandbox) -> int:
    """Bytes the sandbox holds in its write buffers (mostly for the peers that stopped
    reading): the kernel's socket buffers are full, the rest waits in the process."""
    total = 0
    for session in running.factory.sessions:
        protocol = session.protocol
        tls = protocol.transport if protocol is not None else None
        tcp = getattr(tls, "transport", None)
        if tcp is None:
            continue
        buffered = len(getattr(tcp, "dataBuffer", b"")) + getattr(tcp, "_tempDataLen", 0)
        total += buffered
    return total
