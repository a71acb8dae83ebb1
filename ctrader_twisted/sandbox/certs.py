"""Self-signed TLS material for the sandbox: a CA, and a server certificate it signs for
``localhost`` and ``127.0.0.1``, generated once into a state folder and then reused."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_FILE", "SERVER_FILE", "SandboxCertificates", "ensure_certificates"]

CA_FILE: Final = "sandbox-ca.pem"
SERVER_FILE: Final = "sandbox-server.pem"
_VALID_DAYS: Final = 3650


@dataclass(frozen=True, slots=True)
class SandboxCertificates:
    """Paths of the generated files.

    :ivar ca_file: PEM certificate of the CA (give it to ``tls_endpoint(..., ca_file=...)``).
    :ivar server_file: PEM server certificate followed by its private key.
    """

    ca_file: Path
    server_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ctrader-twisted sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _generate(directory: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder("ctrader-twisted sandbox CA", "ctrader-twisted sandbox CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder("localhost", "ctrader-twisted sandbox CA", key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = directory / SERVER_FILE
    server.touch(mode=0o600)
    server.write_bytes(cert.public_bytes(pem) + key_pem)
    (directory / CA_FILE).write_bytes(ca_cert.public_bytes(pem))


def _still_valid(path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    return cert.not_valid_after_utc > soon


def ensure_certificates(directory: Path) -> SandboxCertificates:
    """Return the sandbox's TLS files in ``directory``, generating them if missing or expiring.

    This does blocking file I/O; call it at start-up, not while serving.
    """
    ca_file, server_file = directory / CA_FILE, directory / SERVER_FILE
    if not (server_file.exists() and _still_valid(ca_file) and _still_valid(server_file)):
        _generate(directory)
    return SandboxCertificates(ca_file, server_file)
