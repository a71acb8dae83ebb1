"""Slow, stopped and vanished clients: the sandbox's output stays bounded and stuck
connections are reaped.

The server side runs over :class:`PeerSocket`, a ``StringTransport`` that behaves like Twisted's
TCP transport towards a peer that may stop reading: written bytes first fill the socket buffers
(``kernel`` bytes), then the process's write buffer; the streaming producer is paused when that
buffer passes 64 KiB and resumed once it is empty; a clean close waits for the buffer to flush
and for the producer to be unregistered (for ever if the peer has vanished).  Everything runs
on a :class:`Clock`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from google.protobuf.message import Message
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ctrader_twisted import messages as m
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SANDBOX_SYMBOLS,
    SandboxConfig,
    SandboxFactory,
)
from ctrader_twisted.sandbox.flow import OutputFlow
from ctrader_twisted.sandbox.tap import Options
from tests.test_sandbox_support import USD_ACCOUNT, decode_frames, make_factory

A = USD_ACCOUNT
EVERY = sorted(SANDBOX_SYMBOLS)
#: A busy sandbox: 100 ticks a second, markets always open.
BUSY = {"tick_interval": 0.01, "always_open": True}
HIGH_WATER = 64 * 1024


class PeerSocket(StringTransport):
    """A server-side transport whose peer may stop reading or vanish (see the module doc).

    :ivar max_buffer: the largest process-side write buffer seen, in bytes.
    """

    def __init__(self, kernel: int = 64 * 1024) -> None:
        super().__init__()
        self.kernel = kernel
        self.connected = True
        self.vanished = False
        self.lost: Failure | None = None
        self.written = 0
        self.taken = 0
        self.max_buffer = 0
        self.protocol: Any = None
        self._producer_paused = False

    @property
    def buffered(self) -> int:
        """Bytes waiting in the process (the socket buffers are full)."""
        return max(0, self.written - self.taken - self.kernel)

    def write(self, data: bytes) -> None:
        if self.lost is not None:
            return
        super().write(data)
        self.written += len(data)
        self.max_buffer = max(self.max_buffer, self.buffered)
        if self.producer is not None and self.buffered > HIGH_WATER and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    def take(self) -> tuple[list[m.Envelope], list[m.Envelope]]:
        """The peer reads everything: the frames that were waiting, and those the server wrote
        when the transport resumed its producer."""
        data = self.io.getvalue()
        before = decode_frames(data[self.taken :])
        mark = self.taken = self.written
        self._flushed()
        after = decode_frames(self.io.getvalue()[mark:])
        self.taken = self.written
        return before, after

    def _flushed(self) -> None:
        if self.vanished or self.buffered:
            return
        if self.producer is not None and self._producer_paused:
            self._producer_paused = False
            self.producer.resumeProducing()
        # Like TLS: a clean close waits until no producer is registered.
        if self.disconnecting and self.lost is None and self.producer is None:
            self._lose(ConnectionDone())

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self._producer_paused = False
        self._flushed()

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._flushed()

    def abortConnection(self) -> None:
        if self.lost is None:
            self._lose(ConnectionAborted())

    def _lose(self, reason: Exception) -> None:
        self.lost = Failure(reason)
        self.connected = False
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(self.lost)


class Peer:
    """One client connection to the sandbox over a :class:`PeerSocket`."""

    def __init__(self, factory: SandboxFactory | None = None, **config: Any) -> None:
        self.factory = factory or make_factory(SandboxConfig(**config))
        self.clock: Clock = self.factory.clock  # type: ignore[assignment]
        self.socket = PeerSocket()
        self.protocol: OpenApiProtocol = self.factory.buildProtocol(None)
        self.socket.protocol = self.protocol
        self.protocol.makeConnection(self.socket)
        self.started = self.clock.seconds()
        #: Every frame :meth:`ask` read (answers and the events around them).
        self.frames: list[m.Envelope] = []
        (self.session,) = [s for s in self.factory.sessions if s.protocol is self.protocol]

    def send(self, message: Message, cmid: str | None = None) -> None:
        self.protocol.dataReceived(m.encode_frame(message, cmid))
        self.clock.advance(0)  # history work waiting for its next slice runs now

    def ask(self, message: Message, cmid: str = "q") -> Message:
        self.send(message, cmid)
        before, after = self.socket.take()
        self.frames += before + after
        (answer,) = [f.message for f in before if f.client_msg_id == cmid]
        return answer

    def ready(self) -> Peer:
        app = m.ProtoOAApplicationAuthReq(
            clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
        )
        self.ask(app)
        self.ask(m.ProtoOAAccountAuthReq(ctidTraderAccountId=A, accessToken=DEFAULT_ACCESS_TOKEN))
        return self

    def subscribe_everything(self) -> Peer:
        spots = m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=EVERY)
        self.assertType(self.ask(spots), m.ProtoOASubscribeSpotsRes)
        for symbol_id in (1, 2):
            bars = m.ProtoOASubscribeLiveTrendbarReq(
                ctidTraderAccountId=A, symbolId=symbol_id, period=m.ProtoOATrendbarPeriod.M1
            )
            self.assertType(self.ask(bars), m.ProtoOASubscribeLiveTrendbarRes)
        depth = m.ProtoOASubscribeDepthQuotesReq(ctidTraderAccountId=A, symbolId=EVERY)
        self.assertType(self.ask(depth), m.ProtoOASubscribeDepthQuotesRes)
        return self

    @staticmethod
    def assertType(message: Message, cls: type[Message]) -> None:
        assert isinstance(message, cls), message

    def until_paused(self, limit: float = 10, step: float = 0.01) -> float:
        """Let time pass (the peer not reading) until the sandbox's flow is paused.

        :returns: simulated seconds it took (at most ``limit``)."""
        start = self.clock.seconds()
        while not self.session.flow.paused:
            assert self.clock.seconds() - start < limit, "the flow never paused"
            self.clock.advance(step)
        return self.clock.seconds() - start

    def run(self, seconds: float, step: float = 0.01, read: bool = False) -> list[m.Envelope]:
        """Let time pass; with ``read``, the peer reads after every step."""
        frames: list[m.Envelope] = []
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            if read:
                before, after = self.socket.take()
                frames += before + after
        return frames


class Book:
    """A client's view of spots and depth, built only from the events it receives."""

    def __init__(self) -> None:
        self.prices: dict[int, tuple[int, int]] = {}
        self.quotes: dict[int, set[int]] = {}
        #: Sides sent again although they had not changed.
        self.repeated = 0

    def apply(self, frames: list[m.Envelope]) -> None:
        for frame in frames:
            event = frame.message
            if isinstance(event, m.ProtoOASpotEvent):
                bid, ask = self.prices.get(event.symbolId, (0, 0))
                self.repeated += (event.HasField("bid") and event.bid == bid) + (
                    event.HasField("ask") and event.ask == ask
                )
                bid = event.bid if event.HasField("bid") else bid
                ask = event.ask if event.HasField("ask") else ask
                assert bid, f"symbol {event.symbolId} has no bid yet"
                assert ask, f"symbol {event.symbolId} has no ask yet"
                self.prices[event.symbolId] = (bid, ask)
            elif isinstance(event, m.ProtoOADepthEvent):
                book = self.quotes.setdefault(event.symbolId, set())
                missing = set(event.deletedQuotes) - book
                assert not missing, f"depth deletes unknown quotes {missing}"
                book -= set(event.deletedQuotes)
                book |= {q.id for q in event.newQuotes}


def capture_log(test: SynchronousTestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def logged(events: list[LogEvent], text: str) -> list[LogEvent]:
    return [e for e in events if text in str(e.get("log_format", ""))]


class StoppedReaderTests(SynchronousTestCase):
    def test_buffer_stays_bounded_while_the_client_does_not_read(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        peer.run(10)  # ten seconds, 1,000 ticks of 16 symbols with depth: nobody reads
        flow = peer.session.flow
        self.assertTrue(flow.paused)
        self.assertEqual(flow.pauses, 1)
        # What waits in the process: the 64 KiB that paused the flow, plus the one event that
        # crossed the line; never the ~3 MB the ticks would have produced.
        self.assertLessEqual(peer.socket.max_buffer, HIGH_WATER + 2048)
        stats = peer.factory.stats
        self.assertGreater(stats.market_events_dropped, 10_000)
        frames = decode_frames(peer.socket.io.getvalue()[peer.socket.taken :])
        self.assertLess(len(frames), 2000)
        self.assertTrue(peer.socket.connected)

    def test_first_events_after_resume_carry_full_prices(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        book = Book()
        book.apply(peer.frames)
        book.apply(peer.run(1, read=True))
        peer.run(3)
        self.assertTrue(peer.session.flow.paused)
        waiting, resync = peer.socket.take()  # the client reads again
        self.assertFalse(peer.session.flow.paused)
        book.apply(waiting)
        now, walk = peer.factory.now_ms(), peer.factory.walk
        current = {sid: walk.quote_at(spec, now) for sid, spec in SANDBOX_SYMBOLS.items()}
        behind = {sid for sid in EVERY if book.prices[sid] != current[sid]}
        self.assertGreater(len(behind), 10)  # prices moved while the client was not reading
        book.apply(resync)  # asserts every depth deletion matches the client's book
        self.assertEqual(book.prices, current)
        spots = [f.message for f in resync if isinstance(f.message, m.ProtoOASpotEvent)]
        self.assertLessEqual(behind, {s.symbolId for s in spots})
        for spot in spots:
            self.assertTrue(spot.HasField("bid") and spot.HasField("ask"), spot)
            bars = [bar.period for bar in spot.trendbar]
            self.assertEqual(bars, [m.ProtoOATrendbarPeriod.M1] if spot.symbolId <= 2 else [])
        depth = Counter(
            f.message.symbolId for f in resync if isinstance(f.message, m.ProtoOADepthEvent)
        )
        self.assertLessEqual(behind, set(depth))
        self.assertEqual(set(depth.values()), {1})
        # Then the stream carries on as before: only changed sides, and the books stay valid.
        book.apply(peer.run(1, read=True))
        self.assertFalse(peer.session.flow.paused)

    def test_requests_are_answered_while_paused(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        peer.run(2)
        self.assertTrue(peer.session.flow.paused)
        peer.send(m.ProtoOAVersionReq(), "v")
        peer.send(m.ProtoOATraderReq(ctidTraderAccountId=A), "t")
        peer.run(1)
        waiting, _ = peer.socket.take()
        answers = {f.client_msg_id: type(f.message) for f in waiting if f.client_msg_id}
        self.assertEqual(answers, {"v": m.ProtoOAVersionRes, "t": m.ProtoOATraderRes})

    def test_aborted_after_the_pause_limit(self) -> None:
        log = capture_log(self)
        peer = Peer(slow_reader_timeout=5, tick_interval=0.05, always_open=True)
        peer.ready().subscribe_everything()
        peer.until_paused(step=0.05)
        paused_at = peer.clock.seconds()
        peer.run(4.9, step=0.05)
        self.assertTrue(peer.socket.connected)
        peer.run(0.5, step=0.05)
        self.assertIsInstance(peer.socket.lost.value, ConnectionAborted)  # type: ignore[union-attr]
        self.assertLessEqual(peer.clock.seconds() - paused_at, 5.5)
        self.assertEqual(peer.factory.stats.slow_readers_aborted, 1)
        self.assertEqual(peer.factory.sessions, [])
        self.assertEqual(peer.clock.getDelayedCalls(), [])  # feed, heartbeats, idle: all gone
        (event,) = logged(log, "stopped reading")
        self.assertIn("for 5 s", event["reason"])

    def test_aborted_when_answers_pile_up(self) -> None:
        log = capture_log(self)
        peer = Peer(slow_reader_backlog=100_000, rate_limit=0, historical_rate_limit=0, **BUSY)
        peer.ready().subscribe_everything()
        peer.run(2)
        self.assertTrue(peer.session.flow.paused)
        request = m.ProtoOAGetTrendbarsReq(
            ctidTraderAccountId=A, symbolId=1, period=m.ProtoOATrendbarPeriod.M1,
            fromTimestamp=peer.factory.now_ms() - 86_400_000, toTimestamp=peer.factory.now_ms(),
        )  # fmt: skip
        for i in range(20):
            if not peer.socket.connected:
                break
            peer.send(request, f"h{i}")
        self.assertFalse(peer.socket.connected)
        self.assertLess(i, 10)
        self.assertEqual(peer.factory.stats.slow_readers_aborted, 1)
        (event,) = logged(log, "stopped reading")
        self.assertIn("limit 100000", event["reason"])

    def test_well_behaved_client_is_unaffected(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        slow = Peer(peer.factory).ready().subscribe_everything()
        book = Book()
        book.apply(peer.frames)
        frames = peer.run(5, read=True)
        book.apply(frames)
        self.assertTrue(slow.session.flow.paused)
        self.assertEqual(peer.session.flow.pauses, 0)
        self.assertEqual(peer.socket.max_buffer, 0)
        spots = [f.message for f in frames if isinstance(f.message, m.ProtoOASpotEvent)]
        self.assertGreater(len(spots), 2000)
        self.assertEqual(book.repeated, 0)  # only changed sides, as always
        self.assertEqual(set(book.prices), set(EVERY))


class VanishedPeerTests(SynchronousTestCase):
    """A peer gone without FIN: the server cannot flush, and a TLS close is never answered."""

    def test_idle_close_is_bounded_and_releases_everything(self) -> None:
        log = capture_log(self)
        peer = Peer(tick_interval=1.0, always_open=True).ready()
        spots = m.ProtoOASubscribeSpotsReq(ctidTraderAccountId=A, symbolId=[1, 2])
        peer.ask(spots)
        peer.socket.vanished = True
        feed = peer.factory.feed
        peer.run(30, step=0.5)  # silent for 30 s: the idle close starts
        self.assertTrue(peer.session.closing)
        self.assertTrue(peer.socket.connected)  # the close cannot complete...
        self.assertIsNone(feed.find(peer.session, A, 1))  # ...but nothing is streamed to it
        peer.run(10, step=0.5)  # close_timeout (10 s): aborted
        self.assertIsInstance(peer.socket.lost.value, ConnectionAborted)  # type: ignore[union-attr]
        self.assertEqual(peer.factory.stats.close_timeouts, 1)
        self.assertEqual(peer.factory.sessions, [])
        self.assertEqual(peer.clock.getDelayedCalls(), [])
        self.assertEqual(len(logged(log, "did not finish closing")), 1)

    def test_close_after_an_oversize_frame_is_bounded_too(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        peer.socket.vanished = True
        peer.protocol.dataReceived(b"\x7f\xff\xff\xff")  # framing broken: the server closes
        self.assertTrue(peer.session.closing)
        self.assertIsNone(peer.factory.feed.find(peer.session, A, 1))
        peer.run(9.9, step=0.1)
        self.assertTrue(peer.socket.connected)
        peer.run(0.2, step=0.1)
        self.assertIsInstance(peer.socket.lost.value, ConnectionAborted)  # type: ignore[union-attr]
        self.assertEqual(peer.factory.stats.close_timeouts, 1)
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_vanished_subscriber_is_reaped(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        peer.socket.vanished = True
        for _ in range(50):  # bounded: at most 50 s of simulated time
            peer.run(1)
            if not peer.socket.connected:
                break
        # The idle close (30 s) and the pause limit (30 s) both apply; whichever comes
        # first, the connection is gone well within 45 s and nothing of it remains.
        self.assertLessEqual(peer.clock.seconds() - peer.started, 45)
        self.assertFalse(peer.socket.connected)
        self.assertEqual(peer.factory.sessions, [])
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_close_completes_once_a_paused_client_reads(self) -> None:
        peer = Peer(idle_timeout=3, heartbeat_interval=0, **BUSY).ready().subscribe_everything()
        peer.run(3.5)  # paused with a full buffer, and idle: the server closes
        self.assertTrue(peer.session.closing)
        self.assertTrue(peer.socket.connected)
        peer.socket.take()  # the client reads: the buffer flushes and the close completes
        self.assertIsInstance(peer.socket.lost.value, ConnectionDone)  # type: ignore[union-attr]
        self.assertEqual(peer.factory.stats.close_timeouts, 0)
        self.assertEqual(peer.clock.getDelayedCalls(), [])

    def test_stalled_session_ends_when_the_peer_gives_up(self) -> None:
        peer = Peer(**BUSY).ready().subscribe_everything()
        peer.factory.stall_all()
        self.assertIsNone(peer.factory.feed.find(peer.session, A, 1))
        peer.run(1)
        self.assertEqual(peer.socket.written - peer.socket.taken, 0)
        peer.protocol.connectionLost(Failure(ConnectionDone()))  # the client's FIN arrives
        self.assertEqual(peer.factory.sessions, [])
        self.assertEqual(peer.clock.getDelayedCalls(), [])


@implementer(IPushProducer)
class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class OutputFlowTests(SynchronousTestCase):
    def test_attached_producers_follow_the_transport(self) -> None:
        clock = Clock()
        resumed: list[bool] = []
        flow = OutputFlow(
            clock, timeout=0, backlog_limit=0, on_resume=lambda: resumed.append(True),
            on_stuck=lambda reason: None,
        )  # fmt: skip
        transport = StringTransport()
        flow.register(transport)
        self.assertIs(transport.producer, flow)
        bulk = Recorder()
        flow.attach(bulk)
        flow.pauseProducing()
        flow.pauseProducing()
        flow.resumeProducing()
        flow.detach(bulk)
        flow.pauseProducing()
        flow.attach(bulk)  # attached while paused: paused at once
        flow.unregister()
        self.assertIsNone(transport.producer)
        self.assertFalse(flow.paused)
        flow.stopProducing()
        self.assertEqual(bulk.calls, ["pause", "resume", "pause", "stop"])
        self.assertEqual(resumed, [True])
        self.assertEqual(clock.getDelayedCalls(), [])


class SettingsTests(SynchronousTestCase):
    def test_defaults_options_and_validation(self) -> None:
        config = SandboxConfig()
        self.assertEqual(
            (config.slow_reader_timeout, config.slow_reader_backlog, config.close_timeout),
            (30.0, 4 * 1024 * 1024, 10.0),
        )
        options = Options()
        options.parseOptions(
            ["--slow-reader-timeout", "5", "--slow-reader-backlog", "1000", "--close-timeout", "0"]
        )
        parsed = options.config()
        self.assertEqual(
            (parsed.slow_reader_timeout, parsed.slow_reader_backlog, parsed.close_timeout),
            (5.0, 1000, 0.0),
        )
        with self.assertRaises(UsageError):
            Options().parseOptions(["--close-timeout", "-1"])
        with self.assertRaises(ValueError):
            SandboxConfig(slow_reader_timeout=-1)
