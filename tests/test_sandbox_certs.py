"""The sandbox's certificates follow RFC 5280 as strict verifiers read it.

A standard-library ``ssl`` client with ``VERIFY_X509_STRICT`` (the default of Python 3.13's
``ssl.create_default_context()``) verifies the sandbox over real loopback TLS, ``openssl verify
-x509_strict`` accepts the chain, the extensions and their critical flags are checked with
``cryptography``, and a state folder holding certificates of an older version (no key
identifiers) is regenerated on start.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import SandboxConfig, start_sandbox
from ctrader_twisted.sandbox.certs import (
    CA_FILE,
    SERVER_FILE,
    conforms,
    ensure_certificates,
    server_tls_options,
)
from ctrader_twisted.sandbox.server import _load_certificates

reactor: IReactorCore = global_reactor  # type: ignore[assignment]


def _extension(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def _chain(directory: Path) -> tuple[x509.Certificate, x509.Certificate]:
    ca = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    server = x509.load_pem_x509_certificate((directory / SERVER_FILE).read_bytes())
    return ca, server


def write_old_style(directory: Path) -> None:
    """Certificates as versions before 12.8 made them: no SKI/AKI, no server keyUsage."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("old CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=300))
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("old CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName([x509.DNSName("localhost")])
    server = (
        builder("localhost", key)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SERVER_FILE).write_bytes(server.public_bytes(pem) + key_pem)
    (directory / CA_FILE).write_bytes(ca.public_bytes(pem))


def strict_handshake(ca_file: Path, port: int, name: str) -> dict[str, Any]:
    """Connect with the standard library, strict X.509 checks on; return the peer certificate.

    Runs in a thread (blocking socket calls, bounded by a timeout)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(m.encode_frame(m.ProtoHeartbeatEvent()))
        peer = tls.getpeercert()
    assert peer is not None
    return peer


class CertificateExtensionTests(SynchronousTestCase):
    def test_ca_extensions(self) -> None:
        directory = Path(self.mktemp())
        ensure_certificates(directory)
        ca, _ = _chain(directory)
        basic = _extension(ca, x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertTrue(basic.value.ca)
        usage = _extension(ca, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign)
        self.assertTrue(usage.value.crl_sign)
        ski = _extension(ca, x509.SubjectKeyIdentifier)
        self.assertFalse(ski.critical)
        expected = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())  # type: ignore[arg-type]
        self.assertEqual(ski.value.digest, expected.digest)

    def test_server_extensions(self) -> None:
        directory = Path(self.mktemp())
        ensure_certificates(directory)
        ca, server = _chain(directory)
        aki = _extension(server, x509.AuthorityKeyIdentifier)
        ca_ski = _extension(ca, x509.SubjectKeyIdentifier).value
        self.assertEqual(aki.value.key_identifier, ca_ski.digest)
        self.assertFalse(aki.critical)
        _extension(server, x509.SubjectKeyIdentifier)
        eku = _extension(server, x509.ExtendedKeyUsage)
        self.assertEqual(list(eku.value), [ExtendedKeyUsageOID.SERVER_AUTH])
        usage = _extension(server, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_cert_sign)
        basic = _extension(server, x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertFalse(basic.value.ca)
        san = _extension(server, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        self.assertEqual(ips, {"127.0.0.1", "::1"})
        server.verify_directly_issued_by(ca)

    def test_openssl_verify_strict(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            self.skipTest("no openssl command")
        directory = Path(self.mktemp())
        ensure_certificates(directory)
        server_pem = directory / "leaf.pem"
        server_pem.write_bytes(_chain(directory)[1].public_bytes(serialization.Encoding.PEM))
        for name in ("localhost", "127.0.0.1"):
            check = "-verify_hostname" if name == "localhost" else "-verify_ip"
            ca = str(directory / CA_FILE)
            command = [openssl, "verify", "-x509_strict", "-purpose", "sslserver"]
            result = subprocess.run(  # noqa: S603 - our own arguments
                [*command, check, name, "-CAfile", ca, str(server_pem)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_old_style_folder_is_regenerated(self) -> None:
        directory = Path(self.mktemp())
        write_old_style(directory)
        old_ca = (directory / CA_FILE).read_bytes()
        self.assertFalse(conforms(*_chain(directory)))
        certs = ensure_certificates(directory)
        self.assertNotEqual(certs.ca_file.read_bytes(), old_ca)
        self.assertTrue(conforms(*_chain(directory)))
        kept = certs.ca_file.read_bytes()
        ensure_certificates(directory)  # conforming files are kept
        self.assertEqual(certs.ca_file.read_bytes(), kept)


class DeprecationTests(SynchronousTestCase):
    def test_server_context_without_pyopenssl_objects(self) -> None:
        """The sandbox's TLS context is built from cryptography objects: pyOpenSSL's
        PKey/X509 deprecation warnings (issue 13.12) do not fire."""
        directory = Path(self.mktemp())
        certs, options = _load_certificates(directory)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options.getContext()
            server_tls_options(certs.server_file.read_bytes()).getContext()
        self.assertEqual([str(w.message) for w in caught], [])

    def test_bad_pem(self) -> None:
        with self.assertRaises(ValueError):
            server_tls_options(b"no pem here")


class StrictClientTests(TestCase):
    """A standard-library client with VERIFY_X509_STRICT accepts the sandbox over loopback."""

    timeout = 30

    async def _serve(self, directory: Path) -> tuple[Path, int]:
        running = await start_sandbox(reactor, SandboxConfig(), state_dir=directory)  # type: ignore[arg-type]
        self.addCleanup(running.stop)
        return running.ca_file, running.port

    async def test_strict_client_by_name_and_address(self) -> None:
        ca_file, port = await self._serve(Path(self.mktemp()))
        for name in ("localhost", "127.0.0.1"):
            peer = await deferToThread(strict_handshake, ca_file, port, name)
            self.assertIn(("DNS", "localhost"), peer["subjectAltName"])

    async def test_old_state_folder_is_replaced_on_start(self) -> None:
        directory = Path(self.mktemp())
        write_old_style(directory)
        ca_file, port = await self._serve(directory)
        peer = await deferToThread(strict_handshake, ca_file, port, "localhost")
        self.assertIn(("IP Address", "127.0.0.1"), peer["subjectAltName"])
