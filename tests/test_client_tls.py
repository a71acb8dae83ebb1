"""Integration over real TLS on 127.0.0.1 with trustme certificates (real reactor, trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme
from service_identity.exceptions import VerificationError
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ctrader_twisted import Client, tls_endpoint
from ctrader_twisted import messages as m
from ctrader_twisted.errors import ConnectionLost, MalformedMessage
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.testing import server_tls_options
from ctrader_twisted.tls import trust_root_from_pem

from .fakeserver import CLIENT_ID, CLIENT_SECRET, TOKEN, FakeServer


class _Probe:
    """A client-side handler that records whether the connection ended, and how."""

    def __init__(self) -> None:
        self.lost: Deferred[Failure] = Deferred()

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        protocol.send(m.ProtoOAVersionReq(), "probe")

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        pass

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        pass

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.lost.errback(reason)


class TLSTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.server = FakeServer(reactor)  # type: ignore[arg-type]

    def listen(self, *names: str) -> int:
        cert = self.ca.issue_cert(*names)
        options = server_tls_options(cert.private_key_and_cert_chain_pem.bytes())
        port: IListeningPort = reactor.listenSSL(  # type: ignore[attr-defined]
            0, self.server.factory(), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def ca_file(self, ca: trustme.CA) -> Path:
        path = Path(self.mktemp())
        path.write_bytes(ca.cert_pem.bytes())
        return path

    def client(self, port: int, **options: Any) -> Client:
        endpoint = tls_endpoint(reactor, "localhost", port, ca_file=self.ca_file(self.ca))
        client = Client(
            endpoint,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            reactor=reactor,  # type: ignore[arg-type]
            **options,
        )
        client.startService()
        self.addCleanup(client.stopService)
        return client

    @defer.inlineCallbacks
    def test_request_over_tls(self) -> Any:
        port = self.listen("localhost", "127.0.0.1")
        client = self.client(port)
        yield client.when_ready()
        answer = yield client.request(m.ProtoOAVersionReq())
        self.assertEqual(answer.version, "91")
        yield client.authorize_account(1001, TOKEN)
        yield client.subscribe_spots(1001, [1])
        spots: list[int] = []
        got: Deferred[None] = Deferred()

        def on_spot(event: m.ProtoOASpotEvent) -> None:
            spots.append(event.symbolId)
            if not got.called:
                got.callback(None)

        client.on(m.ProtoOASpotEvent, on_spot)
        self.server.current.send(m.ProtoOASpotEvent(ctidTraderAccountId=1001, symbolId=1))
        yield got
        self.assertEqual(spots, [1])

    @defer.inlineCallbacks
    def test_reconnect_restores_over_tls(self) -> Any:
        port = self.listen("localhost")
        client = self.client(port, reconnect_jitter=0.0)
        yield client.when_ready()
        yield client.authorize_account(1001, TOKEN)
        yield client.subscribe_spots(1001, [1, 2])
        restored: Deferred[None] = Deferred()
        client.on_ready(lambda: restored.callback(None) if not restored.called else None)
        started = reactor.seconds()  # type: ignore[attr-defined]
        self.server.current.drop()
        yield restored
        self.assertLess(reactor.seconds() - started, 1.5)  # type: ignore[attr-defined]
        self.assertEqual(client.reconnect_count, 1)
        self.assertEqual(self.server.current.accounts, {1001})
        self.assertEqual(
            self.server.names()[-3:],
            ["ProtoOAApplicationAuthReq", "ProtoOAAccountAuthReq", "ProtoOASubscribeSpotsReq"],
        )

    @defer.inlineCallbacks
    def test_written_request_fails_on_drop(self) -> Any:
        port = self.listen("localhost")
        client = self.client(port)
        yield client.when_ready()
        self.server.silent.add(m.ProtoOAVersionReq)
        answer = client.request(m.ProtoOAVersionReq())
        self.server.handlers[m.ProtoOAAssetListReq] = lambda conn, cid, msg: conn.drop()
        client.request(m.ProtoOAAssetListReq(ctidTraderAccountId=1)).addErrback(lambda _: None)
        yield self.assertFailure(answer, ConnectionLost)

    @defer.inlineCallbacks
    def probe(self, port: int, host: str, ca: trustme.CA) -> Any:
        """Connect with a raw protocol; return the error that ended the attempt."""
        probe = _Probe()
        endpoint = tls_endpoint(reactor, host, port, ca_file=self.ca_file(ca))
        factory = Factory.forProtocol(lambda: OpenApiProtocol(probe, reactor))  # type: ignore[arg-type]
        try:
            protocol = yield endpoint.connect(factory)
        except Exception as error:
            return error
        self.addCleanup(protocol.transport.abortConnection)
        try:
            yield probe.lost
        except Exception as error:  # the probe's Deferred carries the Failure of the loss
            return error
        raise AssertionError("the connection ended without an error")

    @defer.inlineCallbacks
    def test_untrusted_ca_is_refused(self) -> Any:
        port = self.listen("localhost")
        reason = yield self.probe(port, "localhost", trustme.CA())
        self.flushLoggedErrors()  # the server side logs the failed handshake
        self.assertIn("certificate verify failed", str(reason))
        self.assertEqual(self.server.received, [])

    @defer.inlineCallbacks
    def test_wrong_hostname_is_refused(self) -> Any:
        port = self.listen("example.org")
        reason = yield self.probe(port, "localhost", self.ca)
        self.flushLoggedErrors()  # the server side logs the aborted handshake
        self.assertIsInstance(reason, VerificationError)
        self.assertEqual(self.server.received, [])


class TrustRootTests(TestCase):
    def test_pem_without_certificate(self) -> None:
        with self.assertRaises(ValueError):
            trust_root_from_pem(b"not a certificate")

    def test_pem_with_several_cas(self) -> None:
        pem = trustme.CA().cert_pem.bytes() + trustme.CA().cert_pem.bytes()
        self.assertIsNotNone(trust_root_from_pem(pem))
