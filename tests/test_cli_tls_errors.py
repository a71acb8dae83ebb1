"""What the CLI says when the server's certificate is refused (loopback TLS, trustme).

Before, every such case read ``no session could be established (TLS or protocol)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import trustme
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ctrader_twisted import _cli_session
from ctrader_twisted._cli_errors import ExitCode
from ctrader_twisted._cli_output import Output
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted.cli import build_parser, execute
from ctrader_twisted.sandbox.certs import server_tls_options

reactor: CliReactor = global_reactor  # type: ignore[assignment]


class CertificateErrorTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.ca = trustme.CA()
        home = Path(self.mktemp()).absolute()
        home.mkdir()
        self.home = home
        self.patch(os, "environ", {"HOME": str(home), "CTRADER_CONFIG": str(home / "no.ini")})
        self.patch(_cli_session, "CONNECT_ATTEMPTS", 1)

    def listen(self, *names: str) -> int:
        """A TLS server on 127.0.0.1 with a certificate of ``self.ca`` for ``names``."""
        pem = self.ca.issue_cert(*names).private_key_and_cert_chain_pem.bytes()
        options = server_tls_options(pem)
        port: IListeningPort = reactor.listenSSL(
            0, Factory.forProtocol(Protocol), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    def ca_file(self, ca: trustme.CA) -> str:
        path = self.home / f"ca-{id(ca)}.pem"
        path.write_bytes(ca.cert_pem.bytes())
        return str(path)

    async def accounts(self, port: int, ca_file: str) -> tuple[int, str]:
        argv = ["accounts", "--env", "sandbox", "--host", "localhost", "--port", str(port)]
        options = build_parser().parse_args([*argv, "--ca-file", ca_file])
        stderr = io.StringIO()
        out = Output(json_mode=False, stdout=io.StringIO(), stderr=stderr)
        code = await execute(reactor, options, out)
        self.flushLoggedErrors()  # the server side logs the refused handshake
        return code, stderr.getvalue()

    async def test_untrusted_ca(self) -> None:
        port = self.listen("localhost")
        code, err = await self.accounts(port, self.ca_file(trustme.CA()))
        self.assertEqual(code, ExitCode.CONNECTION)
        self.assertEqual(
            err,
            f"error: cannot connect to localhost:{port}: certificate verification failed for "
            "'localhost': the certificate is not signed by a trusted CA, or has expired; pass "
            "the CA that issued the server's certificate with --ca-file\n",
        )

    async def test_certificate_for_another_name(self) -> None:
        port = self.listen("example.org")
        code, err = await self.accounts(port, self.ca_file(self.ca))
        self.assertEqual(code, ExitCode.CONNECTION)
        self.assertEqual(
            err,
            f"error: cannot connect to localhost:{port}: certificate verification failed: "
            "the certificate is not valid for 'localhost'\n",
        )

    async def test_trusted_certificate_gets_past_tls(self) -> None:
        """The right CA and name: TLS works, and the silent server is a plain timeout."""
        port = self.listen("localhost")
        argv = ["accounts", "--env", "sandbox", "--host", "localhost", "--port", str(port)]
        options = build_parser().parse_args(
            [*argv, "--ca-file", self.ca_file(self.ca), "--connect-timeout", "0.5"]
        )
        stderr = io.StringIO()
        out = Output(json_mode=False, stdout=io.StringIO(), stderr=stderr)
        code = await execute(reactor, options, out)
        self.assertEqual(code, ExitCode.CONNECTION)
        self.assertNotIn("certificate", stderr.getvalue())
