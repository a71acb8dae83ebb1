"""The ``auth`` and ``token`` command flows, end to end on 127.0.0.1 (real reactor)."""

from __future__ import annotations

import argparse
import io
import json
import re
from typing import cast
from urllib.parse import parse_qs, urlsplit

from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.protocol import ServerFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ctrader_twisted import _oauth_cli as cli
from ctrader_twisted.tokens import Token, TokenStore
from tests.test_oauth import GOOD, SECRET, TokenEndpoint, listen, reactor, temp_path

REACTOR = cast("cli._Reactor", _global_reactor)


async def free_port() -> int:
    port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    number = cast(int, port.getHost().port)  # type: ignore[attr-defined]
    await port.stopListening()
    return number


def parse(parser_builder: str, argv: list[str]) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="ctrader-twisted")
    sub = top.add_subparsers(dest="command")
    cli.add_auth_parser(sub)
    cli.add_token_parser(sub)
    return top.parse_args([parser_builder, *argv])


class CliFlowTests(TestCase):
    def setUp(self) -> None:
        self.endpoint = TokenEndpoint()
        self.base = f"http://127.0.0.1:{listen(self, self.endpoint)}"
        self.token_file = temp_path(self)
        self.common = [
            "--client-id=app",
            f"--client-secret={SECRET}",
            f"--base-url={self.base}",
            f"--token-file={self.token_file}",
        ]

    async def test_auth_catches_redirect_and_stores_token(self) -> None:
        redirect = f"http://127.0.0.1:{await free_port()}/callback"
        options = parse("auth", [*self.common, "--no-browser", f"--redirect-uri={redirect}"])
        self.assertIs(options.handler, cli.auth_main_namespace)
        out = io.StringIO()
        flow = cli.auth_flow(REACTOR, options, out)
        url = re.search(r"https?://\S+/apps/auth\?\S+", out.getvalue())
        assert url is not None
        query = parse_qs(urlsplit(url.group(0)).query)
        self.assertEqual(query["redirect_uri"], [redirect])
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.get(f"{redirect}?code=the-code&state={query['state'][0]}")
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(await flow, 0)
        self.assertEqual(self.endpoint.seen[0]["code"], "the-code")
        self.assertEqual(self.endpoint.seen[0]["redirect_uri"], redirect)
        stored = TokenStore(self.token_file).read()
        assert stored is not None
        self.assertEqual(stored.access_token, GOOD["accessToken"])
        self.assertNotIn(GOOD["accessToken"], out.getvalue())
        self.assertNotIn(SECRET, out.getvalue().split("Token saved")[1])

    async def test_token_show_and_refresh(self) -> None:
        TokenStore(self.token_file).write(Token("old-access-123456", "old-refresh-123456", 9e9, 0))
        out = io.StringIO()
        options = parse("token", ["show", "--json", *self.common])
        self.assertEqual(await cli.token_flow(REACTOR, options, out), 0)
        shown = json.loads(out.getvalue())
        self.assertEqual(shown["access_token"], "old-...<17 chars>")
        self.assertEqual(self.endpoint.seen, [])
        out = io.StringIO()
        options = parse("token", ["refresh", *self.common])
        self.assertEqual(await cli.token_flow(REACTOR, options, out), 0)
        self.assertEqual(self.endpoint.seen[0]["refresh_token"], "old-refresh-123456")
        stored = TokenStore(self.token_file).read()
        assert stored is not None
        self.assertEqual(stored.refresh_token, GOOD["refreshToken"])
        self.assertNotIn(GOOD["refreshToken"], out.getvalue())

    async def test_errors_are_reported(self) -> None:
        """One line on the error stream; exit codes as in docs/cli.md."""

        async def run(argv: list[str]) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = await cli.token_flow(REACTOR, parse("token", argv), out, err)
            self.assertEqual(len(err.getvalue().splitlines()), 1)
            return code, out.getvalue(), err.getvalue()

        code, out, err = await run(["show", f"--token-file={self.token_file}"])
        self.assertEqual((code, out), (3, ""))  # missing credentials
        hint = "run 'ctrader-twisted auth' first"
        self.assertEqual(err, f"error: no token in {self.token_file}; {hint}\n")
        TokenStore(self.token_file).write(Token("a" * 10, "r" * 10, 9e9, 0))
        self.endpoint.answers.append((200, json.dumps({"errorCode": "INVALID_GRANT"}).encode()))
        code, _, err = await run(["refresh", *self.common])
        self.assertEqual(code, 3)  # refused by the OAuth server: authentication failed
        self.assertIn("error: INVALID_GRANT", err)
        code, _, err = await run(["refresh", f"--token-file={self.token_file}", "--client-id="])
        self.assertEqual(code, 3)
        self.assertIn("MISSING_CREDENTIALS", err)
        self.endpoint.answers.append((503, b"down"))
        code, _, err = await run(["refresh", *self.common])
        self.assertEqual(code, 3)
        self.assertIn("HTTP_503", err)
        unreachable = f"--base-url=http://127.0.0.1:{await free_port()}"
        code, _, err = await run(["refresh", *self.common, unreachable])
        self.assertEqual(code, 4)  # connection failed
        self.assertIn("CONNECTION_FAILED", err)
        self.token_file.write_text("{not json")
        code, _, err = await run(["show", f"--token-file={self.token_file}"])
        self.assertEqual(code, 2)  # unreadable token file
        self.assertNotIn("r" * 10, err)

    async def test_auth_refuses_a_non_loopback_redirect(self) -> None:
        options = parse("auth", [*self.common, "--redirect-uri=https://example.com/cb"])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await cli.auth_flow(REACTOR, options, out, err), 2)
        self.assertIn("http://127.0.0.1:<port>", err.getvalue())
        self.assertEqual(self.endpoint.seen, [])
