"""Verified TLS client endpoints for the Open API servers.

:func:`tls_endpoint` is the only way this library builds a connection to a server: it always
checks the server certificate against a trust root and the host name against the certificate
(``optionsForClientTLS`` with service-identity).  There is deliberately no switch to turn
verification off; to talk to a local test server, give its CA in ``ca_file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

__all__ = ["DEMO_HOST", "LIVE_HOST", "PORT", "tls_endpoint", "trust_root_from_pem"]

#: Host of the demo environment (demo accounts only).
DEMO_HOST: Final = "demo.ctraderapi.com"
#: Host of the live environment (live accounts only).
LIVE_HOST: Final = "live.ctraderapi.com"
#: Port of the Protobuf interface on both hosts.
PORT: Final = 5035

_PEM_CERTIFICATE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def trust_root_from_pem(pem: bytes) -> IOpenSSLTrustRoot:
    """Build a trust root from one or more PEM certificates.

    :param pem: the PEM text; every ``CERTIFICATE`` block in it becomes a trusted CA.
    :raises ValueError: if ``pem`` holds no certificate.
    """
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    certificates = [Certificate.loadPEM(block) for block in blocks]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]
    return root


def tls_endpoint(
    reactor: IReactorTCP,
    host: str,
    port: int = PORT,
    *,
    ca_file: str | Path | None = None,
) -> IStreamClientEndpoint:
    """Return an endpoint that connects to ``host:port`` over verified TLS (1.2 or newer).

    The server certificate must chain to a trusted CA and name ``host``; otherwise the
    handshake fails and the connection is closed before any message is exchanged.

    :param reactor: a reactor providing ``IReactorTCP`` and ``IReactorTime``.
    :param host: the server's DNS name, used to connect, for SNI and for verification.
    :param port: the server's port (:data:`PORT` for the Protobuf interface).
    :param ca_file: a PEM file whose certificates replace the platform's trust store (for
        test servers with their own CA).  ``None`` trusts the platform's CAs.  The file is
        read once, here.
    :raises ValueError: if ``ca_file`` holds no certificate.
    :raises OSError: if ``ca_file`` cannot be read.
    """
    trust: IOpenSSLTrustRoot = (
        platformTrust()  # type: ignore[no-untyped-call]
        if ca_file is None
        else trust_root_from_pem(Path(ca_file).read_bytes())
    )
    options: IOpenSSLClientConnectionCreator = optionsForClientTLS(
        host,
        trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )
    return wrapClientTLS(options, HostnameEndpoint(reactor, host, port))
