"""Sandbox behaviour like the real server: rate limits, heartbeats, idle close; and faults."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox.session import CORRUPT_FRAME
from tests.test_sandbox_support import USD_ACCOUNT, Wire

A = USD_ACCOUNT


def trendbars() -> m.ProtoOAGetTrendbarsReq:
    return m.ProtoOAGetTrendbarsReq(ctidTraderAccountId=A, symbolId=1, period=1, count=1)


class RateLimitTests(SynchronousTestCase):
    def test_fifty_per_second(self) -> None:
        wire = Wire()
        wire.auth_app()  # one request in this second already
        for _ in range(49):
            wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes)
        error = wire.request(m.ProtoOAVersionReq(), "over")[0]
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(
            (error.message.errorCode, error.message.description, error.client_msg_id),
            ("REQUEST_FREQUENCY_EXCEEDED", "You have reached the rate limit of requests", "over"),
        )
        self.assertEqual(wire.factory.stats.rate_limited, 1)
        wire.clock.advance(1)
        wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes)

    def test_five_historical_per_second_blocked_mode(self) -> None:
        wire = Wire(rate_limit_mode="blocked").ready(A)
        for _ in range(5):
            wire.one(trendbars(), m.ProtoOAGetTrendbarsRes)
        error = wire.request(trendbars(), "h")[0].message
        assert isinstance(error, m.ProtoOAErrorRes)
        self.assertEqual((error.errorCode, error.retryAfter), ("BLOCKED_PAYLOAD_TYPE", 1))
        wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes)  # the other bucket is free
        wire.clock.advance(1)
        wire.one(trendbars(), m.ProtoOAGetTrendbarsRes)

    def test_limits_can_be_disabled(self) -> None:
        wire = Wire(rate_limit=0)
        wire.auth_app()
        for _ in range(120):
            wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes)


class HeartbeatAndIdleTests(SynchronousTestCase):
    def test_heartbeat_every_ten_seconds(self) -> None:
        wire = Wire()
        wire.auth_app()
        wire.clock.advance(9.9)
        self.assertEqual(wire.received(), [])
        wire.send(m.ProtoHeartbeatEvent())
        wire.clock.advance(0.1)
        (beat,) = wire.received()
        self.assertIsInstance(beat.message, m.ProtoHeartbeatEvent)
        wire.close()
        self.assertEqual(wire.clock.getDelayedCalls(), [])

    def test_idle_connection_is_closed_after_30_seconds(self) -> None:
        wire = Wire()
        wire.auth_app()
        for _ in range(5):
            wire.clock.advance(20)
            wire.send(m.ProtoHeartbeatEvent())  # client heartbeats keep it open
        self.assertTrue(wire.connected)
        wire.clock.advance(29.9)
        self.assertTrue(wire.connected)
        wire.clock.advance(0.1)
        self.assertFalse(wire.connected)
        self.assertEqual(wire.clock.getDelayedCalls(), [])

    def test_idle_timeout_is_configurable(self) -> None:
        wire = Wire(idle_timeout=5, heartbeat_interval=0)
        wire.clock.advance(5)
        self.assertFalse(wire.connected)


class FaultTests(SynchronousTestCase):
    def test_drop_after_messages(self) -> None:
        wire = Wire(drop_after_messages=2)
        wire.auth_app()
        self.assertTrue(wire.connected)
        frames = wire.request(m.ProtoOAVersionReq())
        self.assertIsInstance(frames[0].message, m.ProtoOAVersionRes)  # answered, then closed
        self.assertFalse(wire.connected)

    def test_drop_after_seconds(self) -> None:
        wire = Wire(drop_after_seconds=3)
        wire.clock.advance(2.9)
        self.assertTrue(wire.connected)
        wire.clock.advance(0.1)
        self.assertTrue(wire.transport.disconnecting or not wire.connected)

    def test_stall_after_messages(self) -> None:
        wire = Wire(stall_after_messages=1)
        wire.auth_app()
        wire.send(m.ProtoOAVersionReq(), "x")
        wire.clock.advance(100)
        self.assertEqual(wire.received(), [])  # no answer, no heartbeat, no idle close
        self.assertTrue(wire.connected)
        # Still reading (and discarding), so the peer's FIN or reset ends the session.
        self.assertEqual(wire.transport.producerState, "producing")
        wire.send(m.ProtoOAVersionReq(), "y")
        self.assertEqual(wire.received(), [])
        self.assertEqual(len(wire.clock.getDelayedCalls()), 1)  # only the market feed
        wire.close()
        self.assertEqual(wire.factory.sessions, [])
        self.assertEqual(wire.clock.getDelayedCalls(), [])

    def test_corrupt_frame_after(self) -> None:
        wire = Wire(corrupt_frame_after=1)
        wire.send(
            m.ProtoOAApplicationAuthReq(
                clientId="sandbox-client-id", clientSecret="sandbox-client-secret"
            )
        )
        data = wire.transport.value()
        self.assertTrue(data.endswith(CORRUPT_FRAME))
        with self.assertRaises(Exception):
            m.decode_envelope(CORRUPT_FRAME[4:])

    def test_response_delay(self) -> None:
        wire = Wire(response_delay=2.0)
        wire.send(m.ProtoOAVersionReq(), "late")
        self.assertEqual(wire.received(), [])
        wire.clock.advance(2)
        (frame,) = wire.received()
        self.assertEqual(frame.client_msg_id, "late")

    def test_drop_all_and_stall_all(self) -> None:
        wire = Wire()
        other = Wire(wire.factory)
        third = Wire(wire.factory)
        wire.factory.stall_all()
        self.assertTrue(all(s.stalled for s in wire.factory.sessions))
        wire.close()
        other.close()
        third.close()
        fresh = Wire(wire.factory)
        fresh.factory.drop_all()
        self.assertFalse(fresh.connected)
        self.assertEqual(fresh.factory.stats.connections_open, 0)

    def test_sessions_expose_protocols_for_raw_writes(self) -> None:
        wire = Wire()
        (session,) = wire.factory.sessions
        session.protocol.send(m.ProtoOAVersionRes(version="raw"))  # type: ignore[union-attr]
        (frame,) = wire.received()
        self.assertIsInstance(frame.message, m.ProtoOAVersionRes)
