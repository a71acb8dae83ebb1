"""What the client tells its log while it cannot get a session: every failed connection attempt
and every connection lost before the session was ready is a warning (``when_ready()`` is still
waiting, so the log is where the user sees why); no factory start/stop noise per reconnect."""

from __future__ import annotations

from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from ctrader_twisted import Client, tls_endpoint
from ctrader_twisted import messages as m
from ctrader_twisted.errors import ApplicationAuthError
from ctrader_twisted.testing import server_tls_options

from .fakeserver import CLIENT_ID, CLIENT_SECRET, FakeServer
from .hostile import LogCapture
from .test_client import ClientTestCase


def warnings(log: LogCapture) -> list[str]:
    return log.formatted("warn")


class ReportingTests(ClientTestCase):
    def test_each_failed_attempt_is_a_warning(self) -> None:
        h = self.harness(reconnect_initial_delay=1.0, reconnect_factor=1.0)
        h.endpoint.refuse = 2
        with LogCapture() as log:
            h.start()
            h.advance(1.0)
            self.assertNoResult(h.client.when_ready())
            h.advance(1.0)
            self.successResultOf(h.client.when_ready())
        refused = "Connection was refused by other side: refused by the test."
        self.assertEqual(
            warnings(log),
            [f"connection attempt {n} failed: {refused}" for n in (1, 2)],
        )

    def test_loss_before_ready_is_a_warning_and_after_ready_is_not(self) -> None:
        h = self.harness()
        h.server.handlers[m.ProtoOAApplicationAuthReq] = lambda conn, cid, msg: conn.drop()
        with LogCapture() as log:
            h.start()
            self.assertNoResult(h.client.when_ready())
        (line,) = warnings(log)
        self.assertTrue(line.startswith("connection lost before the session was ready (attempt 1)"))
        del h.server.handlers[m.ProtoOAApplicationAuthReq]
        with LogCapture() as log:
            h.advance(60)
            self.successResultOf(h.client.when_ready())
            h.drop()
            h.advance(60)
            self.successResultOf(h.client.when_ready())
        self.assertEqual(warnings(log), [])
        self.assertTrue(any(t.startswith("connection lost:") for t in log.formatted("info")))

    def test_no_factory_noise_on_reconnect(self) -> None:
        h = self.ready()
        with LogCapture() as log:
            h.drop()
            h.advance(60)
        texts = " ".join(log.formatted())
        self.assertNotIn("Starting factory", texts)
        self.assertNotIn("Stopping factory", texts)

    def test_stopped_client_reports_nothing(self) -> None:
        h = self.harness()
        h.endpoint.hang = True
        h.start()
        with LogCapture() as log:
            h.stop()
        self.assertEqual(warnings(log), [])


class FatalHookTests(ClientTestCase):
    def test_on_fatal_hears_refused_credentials_once(self) -> None:
        h = self.harness()
        h.server.handlers[m.ProtoOAApplicationAuthReq] = lambda conn, cid, msg: conn.error(
            cid, "CH_CLIENT_AUTH_FAILURE"
        )
        heard: list[ApplicationAuthError] = []
        removed: list[ApplicationAuthError] = []
        h.client.on_fatal(heard.append)
        h.client.on_fatal(removed.append)()  # removed before it happens
        h.start()
        h.advance(60)  # no reconnect after a fatal refusal
        self.assertEqual([e.code for e in heard], ["CH_CLIENT_AUTH_FAILURE"])
        self.assertEqual(removed, [])
        late: list[ApplicationAuthError] = []
        h.client.on_fatal(late.append)  # registered afterwards: called at once
        self.assertEqual(late, heard)
        self.failureResultOf(h.client.when_ready(), ApplicationAuthError)

    def test_a_raising_callback_is_logged_and_the_others_run(self) -> None:
        h = self.harness()
        h.server.handlers[m.ProtoOAApplicationAuthReq] = lambda conn, cid, msg: conn.error(
            cid, "CH_CLIENT_AUTH_FAILURE"
        )
        heard: list[ApplicationAuthError] = []

        def broken(error: ApplicationAuthError) -> None:
            raise RuntimeError("callback bug")

        h.client.on_fatal(broken)
        h.client.on_fatal(heard.append)
        h.start()
        self.assertEqual(len(heard), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class UntrustedServerTests(TestCase):
    """Over real TLS: a server the client cannot verify shows up as a warning, repeatedly."""

    timeout = 20

    def test_untrusted_certificate_is_reported(self) -> None:
        served_by, trusted = trustme.CA(), trustme.CA()
        cert = served_by.issue_cert("localhost")
        options = server_tls_options(cert.private_key_and_cert_chain_pem.bytes())
        port: IListeningPort = reactor.listenSSL(  # type: ignore[attr-defined]
            0,
            FakeServer(reactor).factory(),
            options,
            interface="127.0.0.1",  # type: ignore[arg-type]
        )
        self.addCleanup(port.stopListening)
        ca_file = self.mktemp()
        with open(ca_file, "wb") as f:
            f.write(trusted.cert_pem.bytes())
        client = Client(
            tls_endpoint(reactor, "localhost", port.getHost().port, ca_file=ca_file),  # type: ignore[attr-defined]
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=reactor,  # type: ignore[arg-type]
            reconnect_initial_delay=0.05,
        )
        seen: Deferred[str] = Deferred()

        def observe(event: LogEvent) -> None:
            level = event.get("log_level")
            if level is not None and level.name == "warn" and not seen.called:
                seen.callback(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client.startService()
        self.addCleanup(client.stopService)

        def check(text: str) -> Any:
            self.assertIn("before the session was ready", text)
            self.assertIn("certificate verify failed", text)
            self.assertFalse(client.is_ready)

        return seen.addCallback(check)
