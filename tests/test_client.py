"""Client unit tests on a Clock with an in-memory fake server: requests, errors, timeouts,
cancellation, disconnects, heartbeats and the dead-link watchdog."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.errors import (
    ConnectionLost,
    NotConnected,
    OpenApiError,
    ProtocolError,
    RequestTimeout,
)

from .fakeserver import CLIENT_ID, CLIENT_SECRET, FakeConnection, FakeServer, MemoryEndpoint


class Harness:
    """A client wired to a fake server in memory, on one Clock."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.server = FakeServer(self.clock)
        self.endpoint = MemoryEndpoint(self.server)
        options.setdefault("reconnect_jitter", 0.0)
        self.client = Client(
            self.endpoint,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=self.clock,
            **options,
        )

    def start(self) -> None:
        self.client.startService()
        self.flush()

    def flush(self) -> None:
        self.endpoint.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def drop(self) -> None:
        self.server.current.drop()
        self.flush()

    def stop(self) -> None:
        stopped = self.client.stopService()
        self.flush()
        self.clock.advance(0)
        assert stopped.called


class ClientTestCase(SynchronousTestCase):
    def harness(self, **options: Any) -> Harness:
        h = Harness(**options)
        self.addCleanup(self.assertNoTimers, h)
        return h

    def assertNoTimers(self, h: Harness) -> None:
        if h.client.running:
            h.stop()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def ready(self, **options: Any) -> Harness:
        h = self.harness(**options)
        h.start()
        self.successResultOf(h.client.when_ready())
        h.server.clear()
        return h


class ReadyTests(ClientTestCase):
    def test_ready_after_application_auth(self) -> None:
        h = self.harness()
        waiting = h.client.when_ready()
        self.assertFalse(h.client.is_ready)
        h.start()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertTrue(h.client.is_ready)
        self.assertEqual(h.server.names(), ["ProtoOAApplicationAuthReq"])
        self.assertIsNone(self.successResultOf(h.client.when_ready()))
        self.assertEqual(h.client.reconnect_count, 0)

    def test_secret_never_in_repr(self) -> None:
        h = self.ready()
        h.client.authorize_account(1001, "access-token-1")
        h.flush()
        self.assertNotIn(CLIENT_SECRET, repr(h.client))
        self.assertNotIn("access-token-1", repr(h.client))

    def test_when_ready_fails_after_stop(self) -> None:
        h = self.harness()
        waiting = h.client.when_ready()
        h.client.startService()
        h.stop()
        self.failureResultOf(waiting, NotConnected)
        self.failureResultOf(h.client.when_ready(), NotConnected)

    def test_on_ready_runs_after_every_restore(self) -> None:
        h = self.harness()
        calls: list[bool] = []
        remove = h.client.on_ready(lambda: calls.append(h.client.is_ready))
        h.start()
        h.drop()
        h.advance(1.0)
        self.assertEqual(calls, [True, True])
        self.assertEqual(h.client.reconnect_count, 1)
        remove()
        h.drop()
        h.advance(1.0)
        self.assertEqual(calls, [True, True])


class RequestTests(ClientTestCase):
    def test_response_matched_by_client_msg_id(self) -> None:
        h = self.ready()
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.assertEqual(self.successResultOf(answer).version, "91")
        ids = [cid for cid, _ in h.server.received]
        self.assertEqual(len(ids), 1)
        self.assertTrue(ids[0] and len(ids[0]) <= 8)

    def test_ids_are_unique(self) -> None:
        h = self.ready()
        answers = [h.client.request(m.ProtoOAVersionReq()) for _ in range(50)]
        h.advance(1.05)  # the app auth used one of the 50 tokens (back after 1 s + the margin)
        for answer in answers:
            self.successResultOf(answer)
        ids = [cid for cid, _ in h.server.received]
        self.assertEqual(len(set(ids)), 50)

    def test_answers_out_of_order(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOAVersionReq)
        first = h.client.request(m.ProtoOAVersionReq())
        second = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        (id1, _), (id2, _) = h.server.received
        h.server.current.send(m.ProtoOAVersionRes(version="2"), id2)
        h.server.current.send(m.ProtoOAVersionRes(version="1"), id1)
        h.flush()
        self.assertEqual(self.successResultOf(first).version, "1")
        self.assertEqual(self.successResultOf(second).version, "2")

    def test_error_response(self) -> None:
        h = self.ready()

        def refuse(conn: FakeConnection, cid: str | None, message: object) -> None:
            conn.error(cid, "CH_ACCESS_TOKEN_INVALID", description="bad", ctidTraderAccountId=7)

        h.server.handlers[m.ProtoOATraderReq] = refuse
        failure = h.client.request(m.ProtoOATraderReq(ctidTraderAccountId=7))
        h.flush()
        error = self.failureResultOf(failure, OpenApiError).value
        self.assertEqual((error.code, error.account_id), ("CH_ACCESS_TOKEN_INVALID", 7))

    def test_common_error_response(self) -> None:
        h = self.ready()
        h.server.handlers[m.ProtoOAVersionReq] = lambda conn, cid, msg: conn.send(
            m.ProtoErrorRes(errorCode="UNSUPPORTED_MESSAGE"), cid
        )
        failure = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.assertEqual(
            self.failureResultOf(failure, OpenApiError).value.code, "UNSUPPORTED_MESSAGE"
        )

    def test_unexpected_answer_type(self) -> None:
        h = self.ready()
        h.server.handlers[m.ProtoOAVersionReq] = lambda conn, cid, msg: conn.send(
            m.ProtoOAAssetListRes(ctidTraderAccountId=1), cid
        )
        failure = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.failureResultOf(failure, ProtocolError)

    def test_not_a_request(self) -> None:
        h = self.ready()
        with self.assertRaises(TypeError):
            h.client.request(m.ProtoOASpotEvent())  # type: ignore[call-overload]

    def test_unknown_and_duplicate_ids_are_harmless(self) -> None:
        h = self.ready()
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        cid = h.server.received[0][0]
        h.server.current.send(m.ProtoOAVersionRes(version="x"), cid)
        h.server.current.send(m.ProtoOAVersionRes(version="y"), "no-such-id")
        h.flush()
        self.assertEqual(self.successResultOf(answer).version, "91")
        self.assertTrue(h.client.is_ready)

    def test_request_after_stop_fails(self) -> None:
        h = self.ready()
        h.stop()
        self.failureResultOf(h.client.request(m.ProtoOAVersionReq()), NotConnected)


class TimeoutTests(ClientTestCase):
    def test_answer_timeout_counts_from_write(self) -> None:
        h = self.ready(request_timeout=5.0)
        h.server.silent.add(m.ProtoOAVersionReq)
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(4.9)
        self.assertNoResult(answer)
        h.advance(0.1)
        error = self.failureResultOf(answer, RequestTimeout).value
        self.assertTrue(error.sent)
        self.assertEqual(error.timeout, 5.0)

    def test_per_request_timeout(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOAVersionReq)
        answer = h.client.request(m.ProtoOAVersionReq(), timeout=1.0)
        h.advance(1.0)
        self.failureResultOf(answer, RequestTimeout)

    def test_send_timeout_while_not_ready(self) -> None:
        h = self.harness(send_timeout=3.0, request_timeout=60.0)
        h.server.silent.add(m.ProtoOAApplicationAuthReq)
        h.start()
        answer = h.client.request(m.ProtoOAVersionReq())
        h.advance(2.9)
        self.assertNoResult(answer)
        h.advance(0.1)
        error = self.failureResultOf(answer, RequestTimeout).value
        self.assertFalse(error.sent)
        self.assertNotIn("ProtoOAVersionReq", h.server.names())

    def test_send_timeout_while_rate_limited(self) -> None:
        h = self.ready(rate_limit=1, send_timeout=0.5)
        h.advance(1.05)  # the app auth used the only token (back after 1 s + the margin)
        h.client.request(m.ProtoOAVersionReq())
        held = h.client.request(m.ProtoOAVersionReq())
        h.advance(0.5)
        self.assertFalse(self.failureResultOf(held, RequestTimeout).value.sent)
        h.advance(1.0)
        self.assertEqual(h.server.names(), ["ProtoOAVersionReq"])

    def test_late_answer_after_timeout_is_ignored(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOAVersionReq)
        answer = h.client.request(m.ProtoOAVersionReq(), timeout=1.0)
        h.flush()
        cid = h.server.received[0][0]
        h.advance(1.0)
        h.server.current.send(m.ProtoOAVersionRes(version="late"), cid)
        h.flush()
        self.failureResultOf(answer, RequestTimeout)


class CancelTests(ClientTestCase):
    def test_cancel_written_request(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOAVersionReq)
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        h.server.current.send(m.ProtoOAVersionRes(version="x"), h.server.received[0][0])
        h.flush()

    def test_cancel_waiting_request_is_never_sent(self) -> None:
        h = self.harness()
        h.server.silent.add(m.ProtoOAApplicationAuthReq)
        h.client.startService()
        answer = h.client.request(m.ProtoOAVersionReq())
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        h.server.silent.clear()
        h.drop()
        h.advance(1.0)
        self.assertTrue(h.client.is_ready)
        self.assertNotIn("ProtoOAVersionReq", h.server.names())

    def test_cancel_rate_limited_request(self) -> None:
        h = self.ready(rate_limit=1)
        h.advance(1.05)  # the app auth used the only token (back after 1 s + the margin)
        h.client.request(m.ProtoOAVersionReq())
        held = h.client.request(m.ProtoOAVersionReq())
        held.cancel()
        self.failureResultOf(held, CancelledError)
        h.advance(2.0)
        self.assertEqual(h.server.names(), ["ProtoOAVersionReq"])


class DisconnectTests(ClientTestCase):
    def test_written_requests_fail_at_once(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOAVersionReq)
        answers = [h.client.request(m.ProtoOAVersionReq()) for _ in range(3)]
        h.flush()
        h.drop()
        for answer in answers:
            self.failureResultOf(answer, ConnectionLost)
        self.assertFalse(h.client.is_ready)

    def test_waiting_requests_go_out_after_reconnect(self) -> None:
        h = self.ready()
        h.drop()
        answer = h.client.request(m.ProtoOAVersionReq())
        self.assertNoResult(answer)
        h.advance(1.0)
        self.assertEqual(self.successResultOf(answer).version, "91")
        self.assertEqual(h.server.names(), ["ProtoOAApplicationAuthReq", "ProtoOAVersionReq"])

    def test_rate_limited_requests_carry_over(self) -> None:
        h = self.ready(rate_limit=1)
        h.advance(1.05)  # the app auth used the only token (back after 1 s + the margin)
        h.server.silent.add(m.ProtoOAVersionReq)
        first = h.client.request(m.ProtoOAVersionReq())
        held = h.client.request(m.ProtoOAAssetListReq(ctidTraderAccountId=1))
        h.flush()
        h.drop()
        self.failureResultOf(first, ConnectionLost)
        self.assertNoResult(held)
        h.advance(1.0)  # reconnected; the app auth took this second's token
        self.assertNoResult(held)
        h.advance(1.05)
        self.successResultOf(held)

    def test_trading_request_not_ready_fails_at_once(self) -> None:
        h = self.ready()
        h.drop()
        order = m.ProtoOANewOrderReq(
            ctidTraderAccountId=1001, symbolId=1, orderType=1, tradeSide=1, volume=100000
        )
        self.failureResultOf(h.client.request(order), NotConnected)

    def test_trading_request_never_sent_twice(self) -> None:
        h = self.ready()
        h.server.silent.add(m.ProtoOANewOrderReq)
        order = m.ProtoOANewOrderReq(
            ctidTraderAccountId=1001, symbolId=1, orderType=1, tradeSide=1, volume=100000
        )
        answer = h.client.request(order)
        h.flush()
        h.drop()
        self.failureResultOf(answer, ConnectionLost)
        h.advance(5.0)
        self.assertTrue(h.client.is_ready)
        self.assertEqual(h.server.names().count("ProtoOANewOrderReq"), 1)

    def test_trading_request_held_by_rate_limit_not_carried_over(self) -> None:
        h = self.ready(rate_limit=1)
        h.advance(1.05)  # the app auth used the only token (back after 1 s + the margin)
        order = m.ProtoOANewOrderReq(
            ctidTraderAccountId=1001, symbolId=1, orderType=1, tradeSide=1, volume=100000
        )
        first = h.client.request(m.ProtoOAVersionReq())
        held = h.client.request(order)
        h.drop()
        self.failureResultOf(held, NotConnected)
        self.failureResultOf(first, ConnectionLost)
        h.advance(5.0)
        self.assertNotIn("ProtoOANewOrderReq", h.server.names())

    def test_trading_request_resolves_with_execution_event(self) -> None:
        h = self.ready()
        order = m.ProtoOANewOrderReq(
            ctidTraderAccountId=1001, symbolId=1, orderType=1, tradeSide=1, volume=100000
        )
        answer = h.client.request(order)
        h.flush()
        event = self.successResultOf(answer)
        self.assertIsInstance(event, m.ProtoOAExecutionEvent)


class HeartbeatTests(ClientTestCase):
    def heartbeats(self, h: Harness) -> int:
        return sum(isinstance(msg, m.ProtoHeartbeatEvent) for _, msg in h.server.received)

    def test_heartbeat_every_ten_seconds_of_write_silence(self) -> None:
        h = self.ready(dead_link_timeout=0)
        h.advance(9.9)
        self.assertEqual(self.heartbeats(h), 0)
        h.advance(0.1)
        self.assertEqual(self.heartbeats(h), 1)
        h.advance(5.0)
        h.client.request(m.ProtoOAVersionReq())
        h.advance(9.9)  # 15 + 9.9: the request at 15 postponed the heartbeat
        self.assertEqual(self.heartbeats(h), 1)
        h.advance(0.1)
        self.assertEqual(self.heartbeats(h), 2)

    def test_dead_link_is_dropped_and_reconnected(self) -> None:
        h = self.ready(dead_link_timeout=40.0)
        h.advance(39.9)
        self.assertTrue(h.client.is_ready)
        h.advance(0.1)
        self.assertFalse(h.client.is_ready)
        self.assertEqual(len(h.server.connections), 1)
        h.advance(1.0)
        self.assertTrue(h.client.is_ready)
        self.assertEqual(len(h.server.connections), 2)

    def test_traffic_keeps_the_link_alive(self) -> None:
        h = self.ready(dead_link_timeout=40.0)
        for _ in range(6):
            h.advance(10.0)
            h.server.current.send(m.ProtoHeartbeatEvent())
            h.flush()
        self.assertTrue(h.client.is_ready)
        self.assertEqual(len(h.server.connections), 1)


class ListenerTests(ClientTestCase):
    def test_events_and_answers_reach_listeners(self) -> None:
        h = self.ready()
        spots: list[m.ProtoOASpotEvent] = []
        versions: list[m.ProtoOAVersionRes] = []
        h.client.on(m.ProtoOASpotEvent, spots.append)
        h.client.on(m.ProtoOAVersionRes, versions.append)
        h.client.request(m.ProtoOAVersionReq())
        h.server.current.send(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=1, bid=5))
        h.flush()
        self.assertEqual([s.bid for s in spots], [5])
        self.assertEqual([v.version for v in versions], ["91"])

    def test_raising_listener_is_logged_and_others_run(self) -> None:
        h = self.ready()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        seen: list[int] = []

        def broken(message: m.ProtoOASpotEvent) -> None:
            raise ValueError("listener bug")

        h.client.on(m.ProtoOASpotEvent, broken)
        h.client.on(m.ProtoOASpotEvent, lambda e: seen.append(e.symbolId))
        h.server.current.send(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=3))
        h.flush()
        self.assertEqual(seen, [3])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertTrue(any("log_failure" in event for event in observer))

    def test_remove_listener(self) -> None:
        h = self.ready()
        seen: list[int] = []
        remove = h.client.on(m.ProtoOASpotEvent, lambda e: seen.append(e.symbolId))
        remove()
        remove()
        h.server.current.send(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=3))
        h.flush()
        self.assertEqual(seen, [])

    def test_listener_may_remove_itself(self) -> None:
        h = self.ready()
        seen: list[int] = []
        removers: list[Any] = []

        def once(event: m.ProtoOASpotEvent) -> None:
            seen.append(event.symbolId)
            removers[0]()

        removers.append(h.client.on(m.ProtoOASpotEvent, once))
        h.client.on(m.ProtoOASpotEvent, lambda e: seen.append(-e.symbolId))
        for symbol in (1, 2):
            h.server.current.send(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=symbol))
        h.flush()
        self.assertEqual(seen, [1, -1, -2])
