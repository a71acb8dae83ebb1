"""A hostile server against the real client: the client never raises into the reactor,
reports each misbehaviour, closes only when the framing is broken, and recovers.

Client and :class:`tests.hostile.ScriptedServer` run in memory on one Clock (iosim transports),
so minutes of dead links and reconnect backoff take milliseconds.  Every test ends by stopping
the client and checking that no timer is left on the clock and no request Deferred is pending.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.errors import (
    ConnectionLost,
    FrameTooLarge,
    MalformedMessage,
    ProtocolError,
    RequestTimeout,
)
from tests.hostile import (
    LogCapture,
    MemoryNetwork,
    ScriptedServer,
    ServerConnection,
    leaks,
    partial_frame,
    raw_frame,
)

SECRET = "hostile-test-secret-value-0123456789"
VERSION = m.payload_type_of(m.ProtoOAVersionReq)
DEAD_LINK = 3.0


class HostileServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = ScriptedServer(self.clock)
        self.network = MemoryNetwork(self.server.factory(), self.clock)
        self.log = LogCapture()
        self.log.__enter__()
        self.addCleanup(self.log.__exit__)
        self.client = self.make_client()
        self.pending: list[Deferred[Any]] = []
        self.addCleanup(self._tear_down)

    def make_client(self, **options: Any) -> Client:
        options = {
            "reactor": self.clock,
            "heartbeat_interval": 1.0,
            "dead_link_timeout": DEAD_LINK,
            "request_timeout": 10.0,
            "reconnect_initial_delay": 0.2,
            "reconnect_max_delay": 2.0,
            "reconnect_jitter": 0.0,
            **options,
        }
        return Client(self.network, client_id="hostile", client_secret=SECRET, **options)

    def start(self) -> None:
        self.client.startService()
        self.network.run_until(lambda: self.client.is_ready, limit=5)

    def request(self, message: Message) -> Deferred[Any]:
        d: Deferred[Any] = self.client.request(message)  # type: ignore[call-overload]
        self.pending.append(d)
        self.network.pump()
        return d

    def behave(self, payload_type: int, behaviour: Any) -> None:
        self.server.behaviours[payload_type] = behaviour

    def _tear_down(self) -> None:
        stopped = self.client.stopService()
        self.network.run(0.5)
        self.network.close_all()
        self.clock.advance(0)
        self.assertTrue(stopped.called, "stopService did not finish")
        for d in self.pending:
            self.assertTrue(d.called, "a request Deferred was left pending")
            d.addErrback(lambda _: None)
        self.assertEqual(self.clock.getDelayedCalls(), [], "timers leaked")
        self.assertEqual(self.log.at("critical"), [], "an error escaped into the log")
        self.assertEqual(leaks([*self.log.texts(), repr(self.client)], [SECRET]), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def assertRecovered(self, links: int) -> None:
        """The client reconnected (a new link) and is ready; a request works again."""
        self.network.run_until(lambda: self.client.is_ready, limit=10)
        self.assertEqual(self.network.connections, links)
        self.assertEqual(self.client.reconnect_count, links - 1)
        self.server.behaviours.clear()
        answer = self.successResultOf(self.request(m.ProtoOAVersionReq()))
        self.assertEqual(answer.version, "91")

    def settle(self, d: Deferred[Any]) -> Any:
        """Deliver traffic until ``d`` fires; return its result."""
        self.network.run_until(lambda: d.called, limit=5)
        return self.successResultOf(d)

    def logged(self, *levels: str) -> str:
        return "\n".join(self.log.formatted(*levels))


class FramingIntactTests(HostileServerTestCase):
    """Bad content in good frames: reported, and the connection stays up."""

    def test_undecodable_envelope(self) -> None:
        self.start()
        self.behave(VERSION, lambda c, e: c.write(struct.pack("!I", 3) + b"\xff\xff\xff"))
        d = self.request(m.ProtoOAVersionReq())
        self.assertIn("could not decode", self.logged("warn"))
        self.network.run(10.5)  # the answer never comes: the request times out, no hang
        self.assertIsInstance(self.failureResultOf(d).value, RequestTimeout)
        self.assertEqual(self.network.connections, 1)
        self.assertRecovered(links=1)

    def test_undecodable_payload_with_client_msg_id_fails_that_request(self) -> None:
        self.start()
        self.behave(VERSION, lambda c, e: c.write(raw_frame(2105, b"\xff\xff", e.client_msg_id)))
        d = self.request(m.ProtoOAVersionReq())
        failure = self.failureResultOf(d)
        self.assertIsInstance(failure.value, MalformedMessage)
        self.assertEqual(failure.value.payload_type, 2105)
        self.assertEqual(len(self.network.open_links), 1)
        self.assertRecovered(links=1)

    def test_unknown_payload_type_as_answer_fails_that_request(self) -> None:
        self.start()
        self.behave(VERSION, lambda c, e: c.write(raw_frame(9999, b"??", e.client_msg_id)))
        d = self.request(m.ProtoOAVersionReq())
        error = self.failureResultOf(d).value
        self.assertIsInstance(error, ProtocolError)
        self.assertIn("9999", str(error))
        self.assertRecovered(links=1)

    def test_unknown_payload_type_event_is_reported(self) -> None:
        self.start()
        self.server.current.write(raw_frame(9999, b"mystery"))
        self.network.pump()
        self.assertEqual(len(self.network.open_links), 1)
        self.assertIn("9999", self.logged())
        self.assertRecovered(links=1)

    def test_unknown_client_msg_id_reaches_listeners_only(self) -> None:
        self.start()
        seen: list[Message] = []
        self.client.on(m.ProtoOAVersionRes, seen.append)
        self.server.current.send(m.ProtoOAVersionRes(version="stray"), "no-such-id")
        self.network.pump()
        self.assertEqual([s.version for s in seen], ["stray"])  # type: ignore[attr-defined]
        # Routine (an order's follow-up events carry its id): not logged unless debug=True.
        self.assertNotIn("no-such-id", self.logged())
        self.assertRecovered(links=1)

    def test_duplicated_client_msg_id_settles_once(self) -> None:
        self.start()

        def twice(connection: ServerConnection, envelope: m.Envelope) -> None:
            for version in ("first", "second"):
                connection.send(m.ProtoOAVersionRes(version=version), envelope.client_msg_id)

        self.behave(VERSION, twice)
        d = self.request(m.ProtoOAVersionReq())
        self.assertEqual(self.successResultOf(d).version, "first")
        self.assertRecovered(links=1)

    def test_error_without_client_msg_id(self) -> None:
        """An error that names no request cannot fail one: it is reported, and the request
        it probably belonged to times out instead of hanging."""
        self.start()

        def anonymous_errors(connection: ServerConnection, envelope: m.Envelope) -> None:
            connection.send(m.ProtoOAErrorRes(errorCode="UNKNOWN_ERROR", description="oa"))
            connection.send(m.ProtoErrorRes(errorCode="INVALID_REQUEST", description="common"))

        self.behave(VERSION, anonymous_errors)
        d = self.request(m.ProtoOAVersionReq())
        text = self.logged()
        self.assertIn("UNKNOWN_ERROR", text)
        self.assertIn("INVALID_REQUEST", text)
        self.network.run(10.5)
        self.assertIsInstance(self.failureResultOf(d).value, RequestTimeout)
        self.assertRecovered(links=1)

    def test_flood_of_events(self) -> None:
        self.start()
        counted: list[int] = []
        self.client.on(m.ProtoOASpotEvent, lambda event: counted.append(event.symbolId))
        spot = partial_frame(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=7, bid=1))
        for _ in range(20):
            self.server.current.write(spot * 1000)
            self.network.pump()
        d = self.request(m.ProtoOAVersionReq())
        self.assertEqual(self.successResultOf(d).version, "91")
        self.assertEqual(len(counted), 20_000)
        self.assertEqual(len(self.network.open_links), 1)
        self.assertEqual(self.log.at("warn", "error"), [])


class FramingBrokenTests(HostileServerTestCase):
    """Broken framing or a dead link: the connection is closed and the client reconnects."""

    def test_oversize_length_prefix(self) -> None:
        self.start()
        self.behave(VERSION, lambda c, e: c.write(b"\xff\xff\xff\xf0" + b"x" * 100))
        d = self.request(m.ProtoOAVersionReq())
        self.network.pump()
        self.assertIsInstance(self.failureResultOf(d).value, ConnectionLost)
        errors = self.log.at("error")
        self.assertTrue(any(isinstance(e.get("error"), FrameTooLarge) for e in errors))
        self.assertRecovered(links=2)

    def test_frame_cut_midway_then_silence(self) -> None:
        self.start()

        def cut(connection: ServerConnection, envelope: m.Envelope) -> None:
            frame = partial_frame(m.ProtoOAVersionRes(version="91"), envelope.client_msg_id)
            connection.write(frame[: len(frame) // 2])
            connection.silent = True  # no heartbeats either: the link looks dead

        self.behave(VERSION, cut)
        d = self.request(m.ProtoOAVersionReq())
        took = self.network.run_until(lambda: d.called, limit=DEAD_LINK + 1)
        self.assertIsInstance(self.failureResultOf(d).value, ConnectionLost)
        self.assertLessEqual(took, DEAD_LINK + 0.1)
        self.assertIn("nothing received", self.logged("warn"))
        self.assertRecovered(links=2)

    def test_stalled_link_without_fin(self) -> None:
        self.start()
        d = self.request(m.ProtoOAVersionReq())
        self.successResultOf(d)
        self.network.stall_all()
        d = self.request(m.ProtoOAVersionReq())
        took = self.network.run_until(lambda: d.called, limit=DEAD_LINK + 1)
        self.assertIsInstance(self.failureResultOf(d).value, ConnectionLost)
        self.assertLessEqual(took, DEAD_LINK + 1.1)
        self.assertRecovered(links=2)

    def test_close_in_the_middle_of_a_frame(self) -> None:
        self.start()

        def cut_and_close(connection: ServerConnection, envelope: m.Envelope) -> None:
            frame = partial_frame(m.ProtoOAVersionRes(version="91"), envelope.client_msg_id)
            connection.write(frame[:5])
            connection.drop()

        self.behave(VERSION, cut_and_close)
        d = self.request(m.ProtoOAVersionReq())
        self.network.pump()
        self.assertIsInstance(self.failureResultOf(d).value, ConnectionLost)
        self.assertRecovered(links=2)

    def test_server_down_for_a_while(self) -> None:
        self.start()
        self.network.refusing = True
        self.network.drop_all()
        self.network.run(5)
        self.assertFalse(self.client.is_ready)
        attempts = self.network.attempts
        self.assertGreater(attempts, 2)
        d = self.client.request(m.ProtoOAVersionReq())
        self.pending.append(d)
        self.network.refusing = False
        self.network.run_until(lambda: d.called, limit=5)
        self.assertEqual(self.successResultOf(d).version, "91")
        self.assertRecovered(links=2)


class RestoreTests(HostileServerTestCase):
    def test_restore_order_and_no_replayed_order(self) -> None:
        """After a drop: app auth, then accounts, then subscriptions, then the requests that
        waited; an order that was on the wire when the link died is failed, never resent."""
        self.start()
        for account in (11, 12):
            self.settle(self.client.authorize_account(account, "token"))
        self.settle(self.client.subscribe_spots(11, [1, 2]))
        self.settle(self.client.subscribe_live_trendbars(11, 1, 1))
        self.settle(self.client.subscribe_depth(12, [3]))
        self.behave(m.payload_type_of(m.ProtoOANewOrderReq), lambda c, e: None)  # no answer
        order = self.request(
            m.ProtoOANewOrderReq(
                ctidTraderAccountId=11, symbolId=1, orderType=1, tradeSide=1, volume=100_000
            )
        )
        self.network.refusing = True
        self.network.drop_all()
        self.network.pump()
        self.assertIsInstance(self.failureResultOf(order).value, ConnectionLost)
        waiting = self.request(m.ProtoOAVersionReq())
        self.network.run(3)
        self.assertNoResult(waiting)
        self.network.refusing = False
        self.network.run_until(lambda: waiting.called, limit=5)
        self.successResultOf(waiting)
        types = [
            e.payload_type for e in self.server.connections[-1].received if e.payload_type != 51
        ]
        pt = m.payload_type_of
        self.assertEqual(types[0], pt(m.ProtoOAApplicationAuthReq))
        self.assertEqual(types[1:3], [pt(m.ProtoOAAccountAuthReq)] * 2)
        subscriptions = {
            pt(m.ProtoOASubscribeSpotsReq),
            pt(m.ProtoOASubscribeLiveTrendbarReq),
            pt(m.ProtoOASubscribeDepthQuotesReq),
        }
        self.assertEqual(set(types[3:-1]), subscriptions)
        self.assertEqual(types[-1], pt(m.ProtoOAVersionReq))
        self.assertEqual(self.server.count(m.ProtoOANewOrderReq), 1)
