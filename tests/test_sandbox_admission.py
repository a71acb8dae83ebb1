"""Who the sandbox lets in and for how long (issue 12 item 6), with a Clock.

* an application-auth deadline: a connection whose application is not authorized within
  ``app_auth_timeout`` gets ``CH_CLIENT_NOT_AUTHENTICATED`` and is closed, whatever it sends;
* a connection cap: one connection over ``max_connections`` gets
  ``CONNECTIONS_LIMIT_EXCEEDED`` and is closed;
* a small frame limit until the application is authorized (``pre_auth_max_frame``).
"""

from __future__ import annotations

import struct

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import SandboxConfig
from tests.test_sandbox_support import Wire, make_factory


def _closing(wire: Wire) -> bool:
    return bool(wire.transport.disconnecting or not wire.connected)


class AppAuthDeadlineTests(SynchronousTestCase):
    def test_unauthorized_connection_closed_after_ten_seconds(self) -> None:
        wire = Wire()
        for _ in range(4):
            wire.clock.advance(2)
            wire.send(m.ProtoHeartbeatEvent())  # heartbeats do not buy time
        wire.clock.advance(1.9)
        self.assertEqual(wire.received(), [])
        self.assertFalse(_closing(wire))
        wire.clock.advance(0.1)
        (error,) = wire.received()
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(error.message.errorCode, "CH_CLIENT_NOT_AUTHENTICATED")
        self.assertIn("not authorized within 10 s", error.message.description)
        self.assertTrue(_closing(wire))
        self.assertEqual(wire.factory.stats.app_auth_timeouts, 1)

    def test_refused_requests_do_not_buy_time(self) -> None:
        wire = Wire(app_auth_timeout=3)
        for _ in range(5):
            self.assertEqual(wire.error(m.ProtoOAVersionReq()), "CH_CLIENT_NOT_AUTHENTICATED")
            wire.clock.advance(0.5)
        wire.clock.advance(0.5)
        self.assertTrue(_closing(wire))

    def test_authorized_connection_stays(self) -> None:
        wire = Wire()
        wire.clock.advance(9)
        wire.auth_app()
        for _ in range(10):
            wire.clock.advance(5)
            wire.send(m.ProtoHeartbeatEvent())
        self.assertFalse(_closing(wire))
        self.assertEqual(wire.factory.stats.app_auth_timeouts, 0)

    def test_zero_disables(self) -> None:
        wire = Wire(app_auth_timeout=0, idle_timeout=0)
        wire.clock.advance(3600)
        self.assertFalse(_closing(wire))


class ConnectionCapTests(SynchronousTestCase):
    def test_one_over_the_cap_is_refused(self) -> None:
        factory = make_factory(SandboxConfig(max_connections=2))
        first, second = Wire(factory), Wire(factory)
        first.auth_app()
        third = Wire(factory)
        (error,) = third.received()
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(error.message.errorCode, "CONNECTIONS_LIMIT_EXCEEDED")
        self.assertIn("(2 open)", error.message.description)
        self.assertTrue(_closing(third))
        third.send(m.ProtoOAApplicationAuthReq(clientId="a", clientSecret="b"), "x")
        self.assertEqual(third.received(), [])  # nothing is served on a refused connection
        self.assertEqual(factory.stats.connections_refused, 1)
        third.transport.loseConnection()
        second.transport.loseConnection()
        fourth = Wire(factory)  # room again
        fourth.auth_app()
        self.assertFalse(_closing(fourth))
        self.assertFalse(_closing(first))

    def test_zero_means_no_cap(self) -> None:
        factory = make_factory(SandboxConfig(max_connections=0))
        wires = [Wire(factory) for _ in range(50)]
        self.assertFalse(any(_closing(w) for w in wires))


class PreAuthFrameLimitTests(SynchronousTestCase):
    def _prefix(self, wire: Wire, length: int) -> None:
        wire.protocol.dataReceived(struct.pack("!I", length) + b"\x08")

    def test_large_frame_before_auth_is_refused(self) -> None:
        wire = Wire()
        self._prefix(wire, 64 * 1024 + 1)
        (error,) = wire.received()
        assert isinstance(error.message, m.ProtoErrorRes)
        self.assertEqual(error.message.errorCode, "FRAME_TOO_LONG")
        self.assertIn("limit 65536", error.message.description)
        self.assertTrue(_closing(wire))

    def test_frame_at_the_limit_before_auth_is_read(self) -> None:
        wire = Wire()
        self._prefix(wire, 64 * 1024)
        self.assertEqual(wire.received(), [])
        self.assertFalse(_closing(wire))

    def test_large_frame_after_auth_is_read(self) -> None:
        wire = Wire()
        wire.auth_app()
        self._prefix(wire, 512 * 1024)
        self.assertEqual(wire.received(), [])
        self.assertFalse(_closing(wire))

    def test_max_frame_still_applies_after_auth(self) -> None:
        wire = Wire(max_frame=100_000)
        wire.auth_app()
        self._prefix(wire, 100_001)
        (error,) = wire.received()
        assert isinstance(error.message, m.ProtoErrorRes)
        self.assertEqual(error.message.errorCode, "FRAME_TOO_LONG")

    def test_smaller_max_frame_applies_before_auth(self) -> None:
        wire = Wire(max_frame=4096)
        self._prefix(wire, 4097)
        self.assertTrue(_closing(wire))


class VersionBeforeAuthTests(SynchronousTestCase):
    """Issue 12 item 9: the real server is documented to refuse anything before application
    auth, and no source shows it answering ProtoOAVersionReq then (evidence in
    docs/sandbox.md, "Version before application auth"); the sandbox matches."""

    def test_refused_then_answered_after_auth(self) -> None:
        wire = Wire()
        (error,) = wire.request(m.ProtoOAVersionReq(), "v1")
        self.assertEqual(error.payload_type, 2142)  # ProtoOAErrorRes
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(error.message.errorCode, "CH_CLIENT_NOT_AUTHENTICATED")
        self.assertEqual(error.client_msg_id, "v1")
        self.assertFalse(_closing(wire))
        wire.auth_app()
        self.assertTrue(wire.one(m.ProtoOAVersionReq(), m.ProtoOAVersionRes).version)

    def test_pipelined_version_then_auth(self) -> None:
        """A client that writes the version request and its app auth together (as some
        third-party clients do on connect) gets the error, then is authorized."""
        wire = Wire()
        config = wire.factory.config
        auth = m.ProtoOAApplicationAuthReq(
            clientId=config.client_id, clientSecret=config.client_secret
        )
        data = m.encode_frame(m.ProtoOAVersionReq(), "v") + m.encode_frame(auth, "a")
        wire.protocol.dataReceived(data)
        first, second = wire.received()
        assert isinstance(first.message, m.ProtoOAErrorRes)
        self.assertEqual((first.client_msg_id, second.client_msg_id), ("v", "a"))
        self.assertIsInstance(second.message, m.ProtoOAApplicationAuthRes)


class AdmissionWithFaultsTests(SynchronousTestCase):
    def test_refusals_are_written_at_once_under_response_delay(self) -> None:
        factory = make_factory(SandboxConfig(max_connections=1, response_delay=5.0))
        first = Wire(factory)
        second = Wire(factory)
        (error,) = second.received()
        assert isinstance(error.message, m.ProtoOAErrorRes)
        self.assertEqual(error.message.errorCode, "CONNECTIONS_LIMIT_EXCEEDED")
        first.clock.advance(10)
        codes = [e.message.errorCode for e in first.received()]  # type: ignore[union-attr]
        self.assertEqual(codes, ["CH_CLIENT_NOT_AUTHENTICATED"])

    def test_refused_connections_still_closing_do_not_count(self) -> None:
        factory = make_factory(SandboxConfig(max_connections=1))
        first = Wire(factory)
        refused = factory.buildProtocol(None)
        transport = StringTransport()  # its close never completes
        refused.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        first.transport.loseConnection()
        third = Wire(factory)
        self.assertFalse(_closing(third))
        self.assertEqual(factory.stats.connections_refused, 1)
