"""The package's public surface and the typed request overloads."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
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

    def test_every_tuning_keyword_is_documented(self) -> None:
        guide = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
        table = guide[guide.index("## Tuning keywords") :]
        keywords = [
            name
            for name, parameter in inspect.signature(Client).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
            and name not in ("client_id", "client_secret")
        ]
        self.assertIn("reconnect_reset_after", keywords)
        missing = [name for name in keywords if f"| `{name}` |" not in table]
        self.assertEqual(missing, [])


class OverloadTests(SynchronousTestCase):
    def test_overloads_match_the_registry(self) -> None:
        # Read from the source (typing.get_overloads needs Python 3.11; we support 3.10).
        source = Path(inspect.getfile(TypedRequests)).read_text(encoding="utf-8")
        pairs = set()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or node.name != "request":
                continue
            if not any(ast.unparse(d) == "overload" for d in node.decorator_list):
                continue
            message = next(a for a in node.args.args if a.arg == "message")
            assert message.annotation is not None
            assert node.returns is not None
            request = ast.unparse(message.annotation).removeprefix("m.")
            answer = ast.unparse(node.returns).removeprefix("Deferred[m.").removesuffix("]")
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
