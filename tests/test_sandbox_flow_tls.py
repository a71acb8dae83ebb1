"""Slow and vanished clients over real loopback TLS: the sandbox learns through TLS and TCP
that a client stopped reading, keeps its buffer bounded, catches the client up when it reads
again, and reaps connections that stay stuck.

Socket buffers are shrunk on both ends so that they fill in a fraction of a second.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

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
from ctrader_twisted.sandbox.session import Session
from tests.hostile import Peer
from tests.test_sandbox_flow import Book

reactor: Any = _reactor
A = 5000001
EVERY = sorted(SANDBOX_SYMBOLS)
SMALL_BUFFER = 16 * 1024


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_for(condition: Callable[[], bool], limit: float, what: str) -> float:
    """Poll ``condition`` every 10 ms; fail after ``limit`` seconds.  :returns: seconds taken."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            raise AssertionError(f"{what}: not within {limit} s")
        await sleep(0.01)
    return time.monotonic() - started


def tcp_of(protocol: OpenApiProtocol | None) -> Any:
    """The TCP transport under a protocol's TLS transport."""
    assert protocol is not None
    return protocol.transport.transport  # type: ignore[union-attr]


def buffered(session: Session) -> int:
    """Bytes the sandbox holds in the process for ``session`` (TLS and TCP buffers)."""
    tls = session.protocol.transport if session.protocol is not None else None
    tcp: Any = getattr(tls, "transport", None)
    pending = sum(len(b) for b in getattr(tls, "_appSendBuffer", []))
    if tcp is not None:
        pending += len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
    return pending


class SlowReaderOverTLSTests(TestCase):
    timeout = 60

    async def _sandbox(self, **config: Any) -> RunningSandbox:
        base = SandboxConfig(seed=4, always_open=True)
        running = await start_sandbox(reactor, base.evolve(**config), state_dir=Path(self.mktemp()))
        self.addCleanup(running.stop)
        return running

    async def _peer(self, running: RunningSandbox) -> tuple[Peer, Session]:
        peer = Peer()
        factory = Factory.forProtocol(lambda: OpenApiProtocol(peer, reactor))
        await running.endpoint(reactor).connect(factory)
        self.addCleanup(peer.close)
        app = m.ProtoOAApplicationAuthReq(
            clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
        )
        await peer.ask(app, "app")
        (session,) = running.factory.sessions[-1:]
        return peer, session

    async def _subscribed(self, running: RunningSandbox) -> tuple[Peer, Session]:
        peer, session = await self._peer(running)
        auth = m.ProtoOAAccountAuthReq(ctidTraderAccountId=A, accessToken=DEFAULT_ACCESS_TOKEN)
        await peer.ask(auth, "acc")
        await peer.ask(m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=EVERY), "s")
        await peer.ask(m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=A, symbolId=EVERY), "d")
        tcp_of(session.protocol).getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER
        )
        tcp_of(peer.protocol).getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER
        )
        return peer, session

    async def test_stopped_reader_paused_caught_up_then_aborted(self) -> None:
        running = await self._sandbox(tick_interval=0.002, slow_reader_timeout=1.0)
        peer, session = await self._subscribed(running)
        tcp_of(peer.protocol).stopReading()  # the client stops reading
        took = await wait_for(lambda: session.flow.paused, 10, "the sandbox never paused")
        most = buffered(session)
        for _ in range(30):  # 0.3 s more: the buffer does not grow while paused
            await sleep(0.01)
            most = max(most, buffered(session))
        self.assertLess(most, 160 * 1024)
        self.assertGreater(running.factory.stats.market_events_dropped, 0)

        seen = len(peer.received)
        tcp_of(peer.protocol).startReading()  # the client reads again
        await wait_for(lambda: session.flow.pauses >= 1 and not session.flow.paused, 5, "resume")
        await sleep(0.2)
        feed = running.factory.feed
        feed.stop()  # freeze the prices, let what is in flight arrive

        def caught_up() -> bool:
            # What the sandbox last sent each subscription (a resync after a late pause
            # sends the price of its own moment, so read it afresh each time).
            sent = {sid: (s.bid, s.ask) for sid in EVERY if (s := feed.find(session, A, sid))}
            book = Book()
            book.apply(peer.received)  # every price complete, every depth deletion known
            return book.prices == sent

        # On a loaded machine the last bytes (or a last pause and its resync) take a moment.
        await wait_for(caught_up, 5, "the client never caught up with the frozen prices")
        full = {
            f.message.symbolId
            for f in peer.received[seen:]
            if isinstance(f.message, m.ProtoOASpotEvent)
            and f.message.HasField("bid")
            and f.message.HasField("ask")
        }
        self.assertGreater(len(full), 10)
        feed.start()

        tcp_of(peer.protocol).stopReading()  # and stops for good: aborted after 1 s
        stuck = await wait_for(lambda: not running.factory.sessions, 10, "never aborted")
        self.assertEqual(running.factory.stats.slow_readers_aborted, 1)
        print(
            f"\nslow reader over TLS: paused after {took:.2f} s, at most {most} bytes "
            f"buffered while paused, aborted {stuck:.2f} s after it stopped reading again; "
            f"{running.factory.stats.market_events_dropped} market events dropped"
        )

    async def test_vanished_peer_is_reaped_after_the_idle_close(self) -> None:
        # Without close_timeout, the TLS close waits for ever for the peer's close_notify.
        lingering = await self._sandbox(idle_timeout=0.5, close_timeout=0)
        reaping = await self._sandbox(idle_timeout=0.5, close_timeout=0.5)
        peers = [await self._peer(lingering), await self._peer(reaping)]
        for peer, _ in peers:
            tcp_of(peer.protocol).stopReading()  # gone: reads nothing, answers nothing
        took = await wait_for(lambda: not reaping.factory.sessions, 5, "never reaped")
        self.assertEqual(reaping.factory.stats.close_timeouts, 1)
        self.assertGreaterEqual(took, 0.4)
        self.assertTrue(peers[0][1].closing)
        self.assertEqual(len(lingering.factory.sessions), 1)  # the control stays stuck
        self.assertIsNone(lingering.factory.feed.find(peers[0][1], A, 1))

    async def test_refused_client_is_closed_at_once(self) -> None:
        running = await self._sandbox()
        peer = Peer()
        factory = Factory.forProtocol(lambda: OpenApiProtocol(peer, reactor))
        await running.endpoint(reactor).connect(factory)
        self.addCleanup(peer.close)
        wrong = m.ProtoOAApplicationAuthReq(clientId=DEFAULT_CLIENT_ID, clientSecret="wrong")
        answer = await peer.ask(wrong, "app")
        self.assertEqual(answer.message.errorCode, "CH_CLIENT_AUTH_FAILURE")
        # The producer is let go before the close, so the TLS close completes at once.
        await wait_for(lambda: peer.is_closed and not running.factory.sessions, 2, "close")
        self.assertEqual(running.factory.stats.close_timeouts, 0)
