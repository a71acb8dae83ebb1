"""The package's public surface and the typed request overloads."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import ctrader_twisted
from ctrader_twisted import messages as m
from ctrader_twisted._requests_typed import TypedRequests
from ctrader_twisted.client import Client
from ctrader_twisted.tls import DEMO_HOST, LIVE_HOST, PORT, tls_endpoint

ROOT = Path(__file__).resolve().parent.parent


class PublicSurfaceTests(SynchronousTestCase):
    def test_exports(self) -> None:
        self.assertEqual(
            sorted(ctrader_twisted.__all__),
            sorted(["Client", "DEMO_HOST", "LIVE_HOST", "PORT", "__version__", "tls_endpoint"]),
        )
        self.assertIs(ctrader_twisted.Client, Client)
        self.assertIs(ctrader_twisted.tls_endpoint, tls_endpoint)
        self.assertEqual(
            (ctrader_twisted.DEMO_HOST, ctrader_twisted.LIVE_HOST, ctrader_twisted.PORT),
            (DEMO_HOST, LIVE_HOST, PORT),
        )
        self.assertEqual(
            (DEMO_HOST, LIVE_HOST, PORT), ("demo.ctraderapi.com", "live.ctraderapi.com", 5035)
        )

    def test_client_api_names(self) -> None:
        for name in (
            "request",
            "when_ready",
            "on",
            "on_ready",
            "authorize_account",
            "subscribe_spots",
            "unsubscribe_spots",
            "subscribe_live_trendbars",
            "unsubscribe_live_trendbars",
            "subscribe_depth",
            "unsubscribe_depth",
            "refresh_token",
            "startService",
            "stopService",
            "is_ready",
            "reconnect_count",
            "authorized_accounts",
        ):
            self.assertTrue(hasattr(Client, name) or name == "reconnect_count", name)


class OverloadTests(SynchronousTestCase):
    def test_overloads_match_the_registry(self) -> None:
        pairs = set()
        for overload in typing.get_overloads(TypedRequests.request):
            hints = overload.__annotations__
            request = hints["message"].removeprefix("m.")
            answer = hints["return"].removeprefix("Deferred[m.").removesuffix("]")
            pairs.add((request, answer))
        expected = {(req.__name__, res.__name__) for req, res in m.RESPONSE_TYPES.items()}
        self.assertEqual(pairs, expected)
        self.assertEqual(len(pairs), len(m.RESPONSE_TYPES))

    def test_generated_file_is_current(self) -> None:
        result = subprocess.run(  # noqa: S603 - our own generator script
            [sys.executable, str(ROOT / "tools" / "gen_request_overloads.py"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
