"""Self-signed TLS material for the sandbox: a CA, and a server certificate it signs for
``localhost``, ``127.0.0.1`` and ``::1``, generated once into a state folder and then reused.

Both certificates follow RFC 5280 as strict verifiers read it (OpenSSL's ``-x509_strict``,
Python 3.13's default ``VERIFY_X509_STRICT``): the CA has a Subject Key Identifier and critical
basicConstraints and keyUsage; the server certificate has Authority and Subject Key
Identifiers, serverAuth extended key usage, subject alternative names and a keyUsage.  Files
from older versions that lack any of these are replaced on start.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions, TLSVersion

__all__ = [
    "CA_FILE",
    "SERVER_FILE",
    "SandboxCertificates",
    "ensure_certificates",
    "server_tls_options",
]

CA_FILE: Final = "sandbox-ca.pem"
SERVER_FILE: Final = "sandbox-server.pem"
_VALID_DAYS: Final = 3650
_CA_NAME: Final = "ctrader-twisted sandbox CA"
#: Names the server certificate is valid for.
SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_PRIVATE_KEY: Final = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\r?\n.+?\r?\n-----END \1PRIVATE KEY-----", re.DOTALL
)


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


def _key_usage(*, signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(_CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _generate(directory: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    ca_cert = (
        _builder(_CA_NAME, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .add_extension(authority, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_NAMES[1:]]
    cert = (
        _builder("localhost", key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority, critical=False)
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


def _load(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _extension(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def conforms(ca: x509.Certificate, server: x509.Certificate) -> bool:
    """Whether ``ca`` and the ``server`` certificate it signed carry every extension a strict
    RFC 5280 verifier needs (what this module generates)."""
    basic = _extension(ca, x509.BasicConstraints)
    usage = _extension(ca, x509.KeyUsage)
    ski = _extension(ca, x509.SubjectKeyIdentifier)
    if basic is None or not (basic.critical and basic.value.ca):
        return False
    if usage is None or not (usage.critical and usage.value.key_cert_sign) or ski is None:
        return False
    aki = _extension(server, x509.AuthorityKeyIdentifier)
    eku = _extension(server, x509.ExtendedKeyUsage)
    san = _extension(server, x509.SubjectAlternativeName)
    if aki is None or eku is None or san is None:
        return False
    if _extension(server, x509.SubjectKeyIdentifier) is None:
        return False
    if _extension(server, x509.KeyUsage) is None:
        return False
    ips = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
    return (
        aki.value.key_identifier == ski.value.digest
        and ExtendedKeyUsageOID.SERVER_AUTH in eku.value
        and "localhost" in san.value.get_values_for_type(x509.DNSName)
        and set(SERVER_NAMES[1:]) <= ips
    )


def _usable(ca_file: Path, server_file: Path) -> bool:
    ca, server = _load(ca_file), _load(server_file)
    if ca is None or server is None:
        return False
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    if min(ca.not_valid_after_utc, server.not_valid_after_utc) <= soon:
        return False
    return conforms(ca, server)


def ensure_certificates(directory: Path) -> SandboxCertificates:
    """Return the sandbox's TLS files in ``directory``, generating them if missing, expiring
    or made by an older version without the extensions strict verifiers require.

    This does blocking file I/O; call it at start-up, not while serving.
    """
    ca_file, server_file = directory / CA_FILE, directory / SERVER_FILE
    if not _usable(ca_file, server_file):
        _generate(directory)
    return SandboxCertificates(ca_file, server_file)


def server_tls_options(pem: bytes) -> CertificateOptions:
    """TLS options for a server from PEM text holding its private key, its certificate and
    any intermediate certificates (in any order; the first certificate is the server's).

    The key and certificates are loaded with ``cryptography`` and handed to pyOpenSSL as such
    (passing pyOpenSSL ``PKey``/``X509`` objects is deprecated).  TLS 1.2 is the minimum.

    :raises ValueError: if ``pem`` holds no private key or no certificate, or they do not load.
    """
    match = _PRIVATE_KEY.search(pem)
    if match is None:
        raise ValueError("no PEM private key found")
    key = serialization.load_pem_private_key(match.group(0), password=None)
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("no PEM certificate found") from None
    # Twisted's annotations name pyOpenSSL's types; its context calls pyOpenSSL, which takes
    # the cryptography objects (and warns only for its own).
    return CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, chain[0]),
        extraCertChain=cast(Any, chain[1:]),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
