"""The OAuth redirect catcher never lets the authorization code or ``state`` reach a log.

A real browser-like redirect over 127.0.0.1, with an observer on Twisted's global log
publisher (which also receives the legacy ``twisted.python.log`` messages, where
``twisted.web``'s access log goes).
"""

from __future__ import annotations

import io
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.client import HTTPClient
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from ctrader_twisted import _oauth_cli as cli
from ctrader_twisted.oauth import RedirectCatcher, StateMismatch, new_state
from tests.test_oauth import GOOD, SECRET, TokenEndpoint, listen, reactor, temp_path
from tests.test_oauth_cli import REACTOR, free_port, parse

CODE = "authcode-Zq81-must-not-be-logged"


class RedirectLoggingTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.state = new_state()
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def logged(self) -> str:
        """Everything the log saw: each event's formatted text and its raw fields, except the
        access log of the test's own fake token endpoint (in real use that server is remote)."""
        lines = (f"{formatEvent(event)} {event!r}" for event in self.events)
        return "\n".join(line for line in lines if '"GET /apps/token?' not in line)

    async def redirect(self, catcher: RedirectCatcher, query: str) -> int:
        response = await self.http.get(f"{catcher.redirect_uri}?{query}")
        await response.content()
        return int(response.code)

    async def test_code_and_state_are_not_logged(self) -> None:
        catcher = RedirectCatcher(reactor, self.state, port=0)
        catcher.listen()
        waiting = catcher.wait()
        try:
            status = await self.redirect(catcher, f"code={CODE}&state={self.state}")
            result = await waiting
            # a second request, refused as already handled, and one to another path
            again = await self.redirect(catcher, f"code={CODE}&state={self.state}")
            other = await self.http.get(
                catcher.redirect_uri.replace("/callback", "/other") + f"?code={CODE}"
            )
            await other.content()
        finally:
            await catcher.stop()
        self.assertEqual((status, again, other.code), (200, 410, 404))
        self.assertEqual(result.code, CODE)
        text = self.logged()
        self.assertIn("OAuth redirect received", text)  # the observer does see the catcher
        self.assertNotIn(CODE, text)
        self.assertNotIn(self.state, text)
        self.assertNotIn("/callback?", text)

    async def test_refused_redirect_is_not_logged_with_its_query(self) -> None:
        catcher = RedirectCatcher(reactor, self.state, port=0)
        catcher.listen()
        waiting = catcher.wait()
        wrong_state = "wrong-state-also-secret"
        try:
            status = await self.redirect(catcher, f"code={CODE}&state={wrong_state}")
            with self.assertRaises(StateMismatch):
                await waiting
        finally:
            await catcher.stop()
        self.assertEqual(status, 400)
        text = self.logged()
        self.assertIn("STATE_MISMATCH", text)
        for secret in (CODE, wrong_state, self.state):
            self.assertNotIn(secret, text)

    async def test_whole_auth_command_logs_no_secret(self) -> None:
        """``ctrader-twisted auth`` end to end: redirect, code exchange, token saved."""
        endpoint = TokenEndpoint()
        base = f"http://127.0.0.1:{listen(self, endpoint)}"
        redirect = f"http://127.0.0.1:{await free_port()}/callback"
        argv = [
            "--client-id=app",
            f"--client-secret={SECRET}",
            f"--base-url={base}",
            f"--token-file={temp_path(self)}",
            "--no-browser",
            f"--redirect-uri={redirect}",
        ]
        out = io.StringIO()
        flow = cli.auth_flow(REACTOR, parse("auth", argv), out)
        url = re.search(r"https?://\S+/apps/auth\?\S+", out.getvalue())
        assert url is not None
        state = parse_qs(urlsplit(url.group(0)).query)["state"][0]
        response = await self.http.get(f"{redirect}?code={CODE}&state={state}")
        await response.content()
        self.assertEqual(await flow, 0)
        self.assertEqual(endpoint.seen[0]["code"], CODE)
        text = self.logged()
        self.assertIn("OAuth authorization_code succeeded", text)
        for secret in (CODE, state, SECRET, GOOD["accessToken"], GOOD["refreshToken"]):
            self.assertNotIn(secret, text)
