"""Hostile-server hardening of the client, on a Clock: dead links judged by frame progress, a
capped ``retryAfter``, a backoff that survives "authorized, then dropped", repeated warnings
summarized, and no routine debug chatter (``twistd`` writes every level to its log)."""

from __future__ import annotations

import io
import struct
from itertools import pairwise
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted._logsummary import RepeatedLog
from ctrader_twisted.client import DEFAULT_MAX_RETRY_AFTER, DEFAULT_RECONNECT_RESET_AFTER
from ctrader_twisted.errors import ConnectionLost, RateLimited
from tests.hostile import LogCapture, MemoryNetwork, ScriptedServer, ServerConnection, raw_frame

from .fakeserver import CLIENT_ID, CLIENT_SECRET, TOKEN, FakeConnection
from .test_client import ClientTestCase, Harness

_PREFIX = struct.Struct("!I")
VERSION = m.payload_type_of(m.ProtoOAVersionReq)
APP_AUTH = m.payload_type_of(m.ProtoOAApplicationAuthReq)


class _Endless:
    def connect(self, factory: object) -> Any:
        raise AssertionError("not used: the protocol is connected by hand")


def _bare_client(clock: Clock, **options: Any) -> Client:
    return Client(
        _Endless(),  # type: ignore[arg-type]
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        reactor=clock,
        **options,
    )


class CapturingTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.log = LogCapture()
        self.log.__enter__()
        self.addCleanup(self.log.__exit__)

    def logged(self, *levels: str) -> str:
        return "\n".join(self.log.formatted(*levels))


# ---------------------------------------------------------------------------------------------
# 1. Dead links by frame progress


class FrameProgressTests(CapturingTestCase):
    """The protocol moves ``last_progress`` per completed frame, never per byte."""

    def test_trickled_bytes_make_no_progress(self) -> None:
        clock = Clock()
        client = _bare_client(clock, heartbeat_interval=0, dead_link_timeout=0)
        protocol = client._build_protocol()
        protocol.makeConnection(StringTransport())
        frame = m.encode_frame(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1))
        frame_a, frame_b = frame[:6], frame[6:]
        clock.advance(5)
        protocol.dataReceived(frame_a)  # a frame begins on an empty buffer: it may take its time
        self.assertEqual(protocol.last_progress, 5)
        for byte in frame_b[:-1]:
            clock.advance(1)
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(protocol.last_received, clock.seconds())
        self.assertEqual(protocol.last_progress, 5)  # bytes arrived, no frame completed
        clock.advance(1)
        protocol.dataReceived(frame_b[-1:] + frame[:3])  # completes it, starts the next one
        self.assertEqual(protocol.last_progress, clock.seconds())

    def test_trickling_peer_is_dropped_after_the_dead_link_timeout(self) -> None:
        clock = Clock()
        client = _bare_client(clock, heartbeat_interval=0, dead_link_timeout=10.0)
        protocol = client._build_protocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_PREFIX.pack(1000) + b"\x08")  # a long frame, then a byte a second
        for _ in range(9):
            clock.advance(1.0)
            protocol.dataReceived(b"\x00")
        self.assertFalse(transport.disconnecting)
        clock.advance(1.0)  # ten seconds without a completed frame: the link counts as dead
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected)  # aborted: nothing is flushed
        warning = self.logged("warn")
        self.assertIn("no frame completed for 10.0 s although bytes still arrive", warning)
        protocol.connectionLost()
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_steady_frames_keep_the_link_alive(self) -> None:
        clock = Clock()
        client = _bare_client(clock, heartbeat_interval=0, dead_link_timeout=3.0)
        protocol = client._build_protocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        heartbeat = m.encode_frame(m.ProtoHeartbeatEvent())
        for _ in range(20):  # every frame split over two reads, a second apart
            clock.advance(1.0)
            protocol.dataReceived(heartbeat[:3])
            clock.advance(1.0)
            protocol.dataReceived(heartbeat[3:])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.logged("warn"), "")
        protocol.connectionLost()


class TrickleServerTests(CapturingTestCase):
    """A server that answers a request one byte per second, mid-frame, for ever."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.server = ScriptedServer(self.clock, heartbeat_interval=1.0)
        self.network = MemoryNetwork(self.server.factory(), self.clock)
        self.client = Client(
            self.network,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=self.clock,
            heartbeat_interval=1.0,
            dead_link_timeout=5.0,
            reconnect_initial_delay=0.2,
            reconnect_jitter=0.0,
        )
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        stopped = self.client.stopService()
        self.network.run(0.5)
        self.network.close_all()
        self.clock.advance(0)
        self.assertTrue(stopped.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reconnects_and_fails_the_request(self) -> None:
        def trickle(connection: ServerConnection, envelope: m.Envelope) -> None:
            connection.silent = True  # heartbeats would queue behind the frame anyway
            connection.write(_PREFIX.pack(100_000))

            def one_more() -> None:
                if connection.open:
                    connection.write(b"\x00")
                    self.clock.callLater(1.0, one_more)

            self.clock.callLater(1.0, one_more)

        self.client.startService()
        self.network.run_until(lambda: self.client.is_ready, limit=5)
        self.server.behaviours[VERSION] = trickle
        answer: Deferred[Message] = self.client.request(m.ProtoOAVersionReq())
        took = self.network.run_until(lambda: answer.called, limit=30)
        self.assertIsInstance(self.failureResultOf(answer).value, ConnectionLost)
        self.assertLessEqual(took, 5.0 + 0.1)  # the dead-link bound, not the request timeout
        self.assertIn("no frame completed", self.logged("warn"))
        self.server.behaviours.clear()
        self.network.run_until(lambda: self.client.is_ready, limit=5)
        self.assertEqual(self.client.reconnect_count, 1)
        again = self.client.request(m.ProtoOAVersionReq())
        self.network.run_until(lambda: again.called, limit=5)
        self.assertEqual(self.successResultOf(again).version, "91")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# 2. retryAfter cap


class RetryAfterCapTests(ClientTestCase):
    def _blocked_once(self, h: Harness, retry_after: int) -> list[float]:
        sent_at: list[float] = []

        def blocked(conn: FakeConnection, cid: str | None, message: Any) -> None:
            sent_at.append(h.clock.seconds())
            if len(sent_at) == 1:
                conn.error(cid, "BLOCKED_PAYLOAD_TYPE", retryAfter=retry_after)
            else:
                conn.send(m.ProtoOAVersionRes(version="91"), cid)

        h.server.handlers[m.ProtoOAVersionReq] = blocked
        return sent_at

    def test_huge_retry_after_is_capped(self) -> None:
        self.assertEqual(DEFAULT_MAX_RETRY_AFTER, 60.0)
        with LogCapture() as log:
            h = self.ready(send_timeout=600.0, heartbeat_interval=0, dead_link_timeout=0)
            sent_at = self._blocked_once(h, 2**63)
            answer = h.client.request(m.ProtoOAVersionReq())
            h.flush()
            other = h.client.request(m.ProtoOAAssetListReq(ctidTraderAccountId=1))
            h.flush()
            h.advance(59.9)
            self.assertEqual(len(sent_at), 1)  # the whole lane waits...
            self.assertNoResult(other)
            h.advance(0.1)  # ...for the cap, not for 2^63 s
            self.assertEqual(self.successResultOf(answer).version, "91")
            self.successResultOf(other)
            self.assertEqual(sent_at, [sent_at[0], sent_at[0] + 60.0])
            warnings = "\n".join(log.formatted("warn"))
        self.assertIn("retryAfter 9.22337e+18 s; waiting 60 s, the cap", warnings)

    def test_cap_is_configurable_and_small_values_are_kept(self) -> None:
        h = self.ready(max_retry_after=5.0, send_timeout=600.0)
        sent_at = self._blocked_once(h, 3)
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(3.0)
        self.successResultOf(answer)
        self.assertEqual(sent_at, [sent_at[0], sent_at[0] + 3.0])
        h2 = self.ready(max_retry_after=5.0, send_timeout=600.0)
        sent_at = self._blocked_once(h2, 3600)
        answer = h2.client.request(m.ProtoOAVersionReq())
        h2.flush()
        h2.advance(5.0)
        self.successResultOf(answer)
        self.assertEqual(sent_at, [sent_at[0], sent_at[0] + 5.0])

    def test_capped_lane_still_bounded_by_send_timeout(self) -> None:
        h = self.ready(send_timeout=10.0)
        self._blocked_once(h, 2**63)
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(10.0)  # waiting again counts against its send bound
        failure = self.failureResultOf(answer)
        self.assertFalse(isinstance(failure.value, RateLimited))


# ---------------------------------------------------------------------------------------------
# 3. Backoff after "authorized, then dropped"


class AuthorizedThenDroppedTests(ClientTestCase):
    def _drop_after_auth(self, h: Harness) -> list[float]:
        connected: list[float] = []

        def accept_and_drop(conn: FakeConnection, cid: str | None, message: Any) -> None:
            connected.append(h.clock.seconds())
            conn.send(m.ProtoOAApplicationAuthRes(), cid)
            conn.drop()

        h.server.handlers[m.ProtoOAApplicationAuthReq] = accept_and_drop
        return connected

    def test_reconnects_are_spaced_exponentially(self) -> None:
        self.assertEqual(DEFAULT_RECONNECT_RESET_AFTER, 30.0)
        h = self.harness(reconnect_initial_delay=0.5, reconnect_max_delay=30.0)
        connected = self._drop_after_auth(h)
        ready: list[float] = []
        h.client.on_ready(lambda: ready.append(h.clock.seconds()))
        h.start()
        for _ in range(60):  # 30 s, in 0.5 s steps (every delay is a multiple of them)
            h.advance(0.5)
        gaps = [round(b - a, 3) for a, b in pairwise(connected)]
        self.assertEqual(gaps, [0.5, 1.0, 2.0, 4.0, 8.0])  # before: 0.5 s, for ever
        self.assertEqual(len(ready), len(connected))  # each session did become ready
        self.assertLessEqual(len(connected), 9)

    def test_backoff_restarts_after_a_stable_session(self) -> None:
        h = self.ready(reconnect_initial_delay=0.5, reconnect_reset_after=10.0)
        h.drop()
        h.advance(0.5)  # first failure: the initial delay
        self.assertTrue(h.client.is_ready)
        h.advance(9.9)
        h.drop()  # ready for 9.9 s < 10 s: it counts as a failed attempt
        h.advance(0.999)
        self.assertFalse(h.client.is_ready)
        h.advance(0.001)
        self.assertTrue(h.client.is_ready)
        h.advance(10.0)  # stable for 10 s: the count starts over
        h.drop()
        h.advance(0.5)
        self.assertTrue(h.client.is_ready)

    def test_zero_resets_at_once_like_before(self) -> None:
        h = self.ready(reconnect_initial_delay=0.5, reconnect_reset_after=0)
        for _ in range(3):
            h.drop()
            h.advance(0.5)
            self.assertTrue(h.client.is_ready)


# ---------------------------------------------------------------------------------------------
# 4. Repeated warnings summarized


class RepeatedLogTests(CapturingTestCase):
    def test_first_logged_then_one_summary_per_interval(self) -> None:
        clock = Clock()
        repeated = RepeatedLog(Logger(namespace="tests.repeated"), clock, interval=10.0)
        for i in range(500):
            repeated.warn("kind", "event {i}", i=i)
        self.assertEqual(self.log.formatted("warn"), ["event 0"])
        clock.advance(10.0)
        self.assertEqual(self.log.formatted("warn")[1:], ["499 more in the last 10 s: event 499"])
        repeated.warn("kind", "event {i}", i=500)  # still within the renewed window
        clock.advance(10.0)
        self.assertEqual(self.log.formatted("warn")[2:], ["1 more in the last 10 s: event 500"])
        clock.advance(10.0)  # quiet for a whole interval: forgotten, no timer left
        self.assertEqual(clock.getDelayedCalls(), [])
        repeated.warn("kind", "event {i}", i=501)
        self.assertEqual(self.log.formatted("warn")[-1], "event 501")
        repeated.flush()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(self.log.formatted("warn")), 4)

    def test_keys_are_separate_and_bounded(self) -> None:
        clock = Clock()
        repeated = RepeatedLog(Logger(), clock, interval=10.0, max_keys=3)
        for key in range(100):
            repeated.warn(key, "key {key}", key=key)
        self.assertEqual(
            self.log.formatted("warn"), ["key 0", "key 1", "key 2", "key 3"]
        )  # the fourth and later share one overflow key
        repeated.flush()
        self.assertEqual(self.log.formatted("warn")[-1], "96 more in the last 0 s: key 99")

    def test_flush_reports_pending_counts(self) -> None:
        clock = Clock()
        repeated = RepeatedLog(Logger(), clock, interval=60.0)
        for _ in range(3):
            repeated.emit(LogLevel.info, "k", "hello")
        self.assertEqual(repeated.pending, 2)
        clock.advance(5)
        repeated.flush()
        self.assertEqual(self.log.formatted("info"), ["hello", "2 more in the last 5 s: hello"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_zero_interval_logs_everything(self) -> None:
        repeated = RepeatedLog(Logger(), Clock(), interval=0)
        for _ in range(3):
            repeated.warn("k", "each")
        self.assertEqual(self.log.formatted("warn"), ["each"] * 3)


class ClientWarningFloodTests(CapturingTestCase):
    """Per-event warnings of the client: one line, then a count per interval."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.server = ScriptedServer(self.clock, heartbeat_interval=0)
        self.network = MemoryNetwork(self.server.factory(), self.clock)
        self.client = Client(
            self.network,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=self.clock,
            heartbeat_interval=0,
            dead_link_timeout=0,
            log_summary_interval=20.0,
        )
        self.client.startService()
        self.network.run_until(lambda: self.client.is_ready, limit=5)

    def tearDown(self) -> None:
        stopped = self.client.stopService()
        self.network.run(0.1)
        self.network.close_all()
        self.clock.advance(0)
        self.assertTrue(stopped.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unknown_type_events(self) -> None:
        self.server.current.write(raw_frame(9999, b"mystery") * 3980)
        self.server.current.write(raw_frame(9998, b"other") * 10)
        self.network.pump()
        lines = self.log.formatted("warn")
        self.assertEqual(
            lines,
            [
                "ignored an event of unknown payload type 9999 (7 bytes)",
                "ignored an event of unknown payload type 9998 (5 bytes)",
            ],
        )
        self.network.run(20.0)
        summaries = self.log.formatted("warn")[2:]
        self.assertEqual(
            sorted(summaries),
            [
                "3979 more in the last 20 s: ignored an event of unknown payload type 9999 "
                "(7 bytes)",
                "9 more in the last 20 s: ignored an event of unknown payload type 9998 (5 bytes)",
            ],
        )

    def test_errors_without_client_msg_id_and_undecodable_frames(self) -> None:
        connection = self.server.current
        for _ in range(1000):
            connection.send(m.ProtoOAErrorRes(errorCode="UNKNOWN_ERROR", description="x"))
            connection.write(struct.pack("!I", 3) + b"\xff\xff\xff")
            connection.write(struct.pack("!I", 0))
        self.network.pump()
        self.assertEqual(len(self.log.formatted("warn")), 2, self.log.formatted("warn"))
        self.assertEqual(self.log.formatted("debug"), ["ignored a zero-length frame"])
        self.client.stopService()  # stopping reports what is pending
        self.network.pump()
        text = "\n".join(self.log.formatted("warn"))
        self.assertIn("999 more in the last 0 s: server error without a clientMsgId", text)
        self.assertIn("999 more in the last 0 s: could not decode a frame", text)
        text = "\n".join(self.log.formatted("debug"))
        self.assertIn("999 more in the last 0 s: ignored a zero-length frame", text)

    def test_listener_that_always_raises(self) -> None:
        def broken(event: m.ProtoOASpotEvent) -> None:
            raise ValueError("listener bug")

        self.client.on(m.ProtoOASpotEvent, broken)
        spot = m.encode_frame(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=7, bid=1))
        self.server.current.write(spot * 500)
        self.network.pump()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # one traceback
        self.network.run(20.0)
        text = "\n".join(self.log.formatted("critical"))
        self.assertIn("499 more in the last 20 s: listener", text)


class ServerEventFloodTests(ClientTestCase):
    """Session events the client acts on, repeated by a hostile server."""

    def test_account_disconnect_flood(self) -> None:
        with LogCapture() as log:
            h = self.ready(log_summary_interval=30.0)
            h.client.authorize_account(1001, TOKEN)
            h.flush()
            h.server.clear()
            event = m.ProtoOAAccountDisconnectEvent(ctidTraderAccountId=1001)
            for _ in range(200):
                h.server.current.protocol.transport.write(m.encode_frame(event))  # type: ignore[union-attr]
            h.flush()
            # One re-authorization for the whole burst, not one per event.
            self.assertEqual(h.server.names(), ["ProtoOAAccountAuthReq"])
            self.assertEqual(h.client.authorized_accounts, frozenset({1001}))
            h.advance(30.0)
            warnings = log.formatted("warn")
            h.server.current.send(event)  # after the burst: a new disconnect is acted on
            h.flush()
            self.assertEqual(h.server.names(), ["ProtoOAAccountAuthReq"] * 2)
        self.assertEqual(
            warnings,
            [
                "account 1001 was disconnected; authorizing again",
                "199 more in the last 30 s: account 1001 was disconnected; authorizing again",
            ],
        )

    def test_client_disconnect_and_token_events_flood(self) -> None:
        with LogCapture() as log:
            h = self.ready(log_summary_interval=30.0)
            for _ in range(100):
                h.server.current.send(m.ProtoOAClientDisconnectEvent(reason="bye"))
                h.server.current.send(m.ProtoOAAccountsTokenInvalidatedEvent(reason="gone"))
            h.flush()
            self.assertEqual(len(log.formatted("warn")), 2)
            h.stop()
            text = "\n".join(log.formatted("warn"))
        self.assertIn("99 more in the last 0 s: the server is closing the connection: bye", text)
        self.assertIn("99 more in the last 0 s: access token invalidated", text)


# ---------------------------------------------------------------------------------------------
# 5. No routine debug chatter (twistd shows every level)


class QuietLogTests(SynchronousTestCase):
    """What twistd's default observer (a text file observer on every event) would write."""

    def _routine_session(self, **options: Any) -> tuple[str, list[LogEvent]]:
        out = io.StringIO()
        observer = textFileLogObserver(out)
        events: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if str(event.get("log_namespace", "")).startswith("ctrader_twisted"):
                events.append(event)
                observer(event)

        globalLogPublisher.addObserver(observe)
        try:
            self._exercise(**options)
        finally:
            globalLogPublisher.removeObserver(observe)
        return out.getvalue(), events

    def _exercise(self, **options: Any) -> None:
        clock = Clock()
        server = ScriptedServer(clock)
        network = MemoryNetwork(server.factory(), clock)
        client = Client(
            network,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=clock,
            reconnect_jitter=0.0,
            **options,
        )
        client.startService()
        network.run_until(lambda: client.is_ready, limit=5)
        client.on(m.ProtoOASpotEvent, lambda event: None)
        for _ in range(20):
            answer = client.request(m.ProtoOAVersionReq())
            network.run_until(lambda answer=answer: answer.called, limit=5)
        order = m.ProtoOANewOrderReq(
            ctidTraderAccountId=1, symbolId=1, orderType=1, tradeSide=1, volume=100_000
        )
        placed = client.request(order)
        network.pump()
        self.successResultOf(placed)
        connection = server.current
        for _ in range(50):  # an order's follow-up events carry its clientMsgId: no one waits
            connection.send(m.ProtoOAExecutionEvent(ctidTraderAccountId=1), "done-id")
            connection.send(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1))
        network.run(30.0)  # heartbeats both ways
        stopped = client.stopService()
        network.run(0.5)
        network.close_all()
        clock.advance(0)
        self.assertTrue(stopped.called)

    def test_no_debug_lines_by_default(self) -> None:
        text, events = self._routine_session()
        self.assertNotIn("#debug]", text)
        self.assertEqual([e for e in events if e["log_level"] == LogLevel.debug], [])
        # Nothing per message at any level either: a handful of lines for the whole session.
        self.assertLessEqual(len(events), 5, [formatEvent(e) for e in events])

    def test_debug_lines_when_asked(self) -> None:
        text, _ = self._routine_session(debug=True)
        self.assertIn("#debug]", text)
        self.assertIn("no request waits for clientMsgId done-id", text)


class TimerArithmeticTests(SynchronousTestCase):
    def test_heartbeat_due_a_hair_early_does_not_spin(self) -> None:
        """58.758... + 3.3 + 6.7 lands 7e-15 s short of the heartbeat; a timer for 7e-15 s
        (half a unit in the last place there) was due at once, found nothing to do, and set
        itself again at the same instant, so ``Clock.advance`` never returned."""
        clock = Clock()
        clock.advance(58.75806061435595)
        client = _bare_client(clock, heartbeat_interval=10.0, dead_link_timeout=10.0)
        protocol = client._build_protocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(3.3)
        clock.advance(6.7)
        self.assertEqual(transport.value(), m.encode_frame(m.ProtoHeartbeatEvent()))
        self.assertTrue(transport.disconnecting)  # and the watchdog fired, on the same instant
        protocol.connectionLost()
        clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])
