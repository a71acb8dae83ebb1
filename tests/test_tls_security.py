"""TLS: the client endpoint refuses every server it cannot verify, and sends nothing to it.

Real TLS on 127.0.0.1 with the real reactor.  Each hostile server presents one defect (a CA we
do not trust, a certificate for another host, an expired certificate, only TLS 1.1) and records
every application byte it receives after the handshake.  The client side is
:func:`ctrader_twisted.tls.tls_endpoint` with a probe protocol that writes an application
authorisation request (carrying a secret) the moment the connection is made, as the client
does; it must never reach the server, and the failure must name the cause.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IOpenSSLContextFactory, IReactorCore
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ctrader_twisted import messages as m
from ctrader_twisted.testing import server_tls_options
from ctrader_twisted.tls import tls_endpoint

reactor: IReactorCore = _reactor  # type: ignore[assignment]

SECRET = "tls-test-client-secret-0123456789"
HELLO = m.encode_frame(m.ProtoOAApplicationAuthReq(clientId="tls-test", clientSecret=SECRET), "1")


class Recorder(Protocol):
    """Server side: keeps every application byte that arrives."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class Probe(Protocol):
    """Client side: writes an authorisation request at once, like the client, and reports
    how the connection ended."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.answer = b""

    def connectionMade(self) -> None:
        self.transport.write(HELLO)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.answer += data
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.ended.callback(None)


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(b"ok")  # type: ignore[union-attr]


@implementer(IOpenSSLContextFactory)
class LegacyServerContext:
    """A server context that speaks TLS 1.0 and 1.1 only (and allows old ciphers)."""

    def __init__(self, leaf: trustme.LeafCert) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        pem = leaf.private_key_and_cert_chain_pem.bytes()
        context.use_privatekey(load_pem_private_key(pem, None))  # type: ignore[arg-type]
        context.use_certificate(x509.load_pem_x509_certificate(pem))
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


@implementer(IOpenSSLContextFactory)
class PermissiveClientContext:
    """A client that accepts TLS 1.0 and anything offered: proves the legacy server works."""

    def __init__(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def _options(leaf: trustme.LeafCert) -> CertificateOptions:
    pem = leaf.private_key_and_cert_chain_pem.bytes()
    return server_tls_options(pem)


def _messages(failure: Failure) -> str:
    """The failure's text, including OpenSSL's error queue, lower-cased."""
    return f"{failure.type.__name__}: {failure.value}".lower()  # type: ignore[union-attr]


class TLSRefusalTests(TestCase):
    """Each defect makes the handshake fail with a clear reason and no data sent."""

    timeout = 20

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.ca_file = Path(self.mktemp())
        self.ca_file.write_bytes(self.ca.cert_pem.bytes())
        self.received: list[bytes] = []

    async def _listen(self, context: object, protocol: type[Recorder] = Recorder) -> int:
        received = self.received
        factory = Factory.forProtocol(lambda: protocol(received))
        endpoint = SSL4ServerEndpoint(reactor, 0, context, interface="127.0.0.1")  # type: ignore[arg-type]
        port: IListeningPort = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[attr-defined, no-any-return]

    async def _probe(self, port: int, host: str = "localhost") -> Probe:
        probe = Probe()
        endpoint = tls_endpoint(reactor, host, port, ca_file=self.ca_file)  # type: ignore[arg-type]
        await endpoint.connect(Factory.forProtocol(lambda: probe))
        await probe.ended
        return probe

    async def _refused(self, context: object, *clues: str) -> None:
        port = await self._listen(context)
        probe = await self._probe(port)
        assert probe.reason is not None
        text = _messages(probe.reason)
        self.assertTrue(any(clue in text for clue in clues), text)
        self.assertEqual(probe.answer, b"")
        # Give the server a moment of reactor turns to process anything in flight.
        await _turns(5)
        self.assertEqual(b"".join(self.received), b"", "application data reached the server")

    async def test_baseline_trusted_server_gets_the_request(self) -> None:
        """The harness itself works: a valid server receives the probe's bytes."""
        port = await self._listen(_options(self.ca.issue_cert("localhost")), Echo)
        probe = await self._probe(port)
        self.assertEqual(b"".join(self.received), HELLO)
        self.assertEqual(probe.answer, b"ok")

    async def test_untrusted_ca(self) -> None:
        other = trustme.CA()
        await self._refused(_options(other.issue_cert("localhost")), "certificate verify failed")

    async def test_wrong_hostname(self) -> None:
        leaf = self.ca.issue_cert("elsewhere.example")
        await self._refused(_options(leaf), "dnsmismatch")

    async def test_expired_certificate(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        leaf = self.ca.issue_cert(
            "localhost",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        await self._refused(_options(leaf), "certificate verify failed")

    async def test_tls_below_1_2(self) -> None:
        context = LegacyServerContext(self.ca.issue_cert("localhost"))
        await self._refused(context, "protocol version")

    async def test_legacy_server_really_speaks_tls_1_1(self) -> None:
        """Control for the test above: a client that allows TLS 1.1 does get through."""
        port = await self._listen(LegacyServerContext(self.ca.issue_cert("localhost")), Echo)
        probe = Probe()
        reactor.connectSSL(  # type: ignore[attr-defined]
            "127.0.0.1", port, ClientFactory.forProtocol(lambda: probe), PermissiveClientContext()
        )
        await probe.ended
        self.assertEqual(probe.answer, b"ok")
        self.assertEqual(b"".join(self.received), HELLO)


async def _turns(count: int) -> None:
    for _ in range(count):
        waiter: Deferred[None] = Deferred()
        reactor.callLater(0.01, waiter.callback, None)  # type: ignore[attr-defined]
        await waiter


class ClientOverTLSTests(TestCase):
    """The real client against an impostor: it keeps refusing, and the secret never leaves."""

    timeout = 20

    async def test_client_never_sends_its_secret_to_an_impostor(self) -> None:
        from ctrader_twisted import Client
        from tests.hostile import LogCapture, leaks

        trusted, impostor = trustme.CA(), trustme.CA()
        ca_file = Path(self.mktemp())
        ca_file.write_bytes(trusted.cert_pem.bytes())
        received: list[bytes] = []
        factory = Factory.forProtocol(lambda: Recorder(received))
        context = _options(impostor.issue_cert("localhost"))
        endpoint = SSL4ServerEndpoint(reactor, 0, context, interface="127.0.0.1")  # type: ignore[arg-type]
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        client = Client(
            tls_endpoint(reactor, "localhost", port.getHost().port, ca_file=ca_file),  # type: ignore[arg-type, attr-defined]
            client_id="impostor-test",
            client_secret=SECRET,
            reactor=reactor,  # type: ignore[arg-type]
            reconnect_initial_delay=0.1,
            reconnect_max_delay=0.2,
        )
        with LogCapture() as log:
            client.startService()
            await _turns(60)  # several attempts
            self.assertFalse(client.is_ready)
            await client.stopService()
        self.assertEqual(b"".join(received), b"")
        text = "\n".join(log.formatted()).lower()
        self.assertIn("certificate verify failed", text)
        self.assertEqual(leaks(log.texts(), [SECRET]), [])
