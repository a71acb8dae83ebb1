"""The code examples in README.md and docs/client.md, run as written against a sandbox.

Each example is cut out of its document, pointed at a sandbox on a free loopback port (host,
port, CA file and sandbox credentials substituted for the placeholders), and run in a fresh
Python process with a bounded timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)

ROOT = Path(__file__).resolve().parent.parent
reactor: IReactorProcess = global_reactor  # type: ignore[assignment]


def python_block(document: Path, heading: str) -> str:
    """The first ```python block after ``heading`` in ``document``."""
    text = document.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, f"no python block after {heading!r} in {document.name}"
    return match.group(1)


def substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.ended: Deferred[tuple[int, str]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    def errReceived(self, data: bytes) -> None:
        self.output.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else 1
        if reason.check(ProcessTerminated):
            code = int(getattr(reason.value, "exitCode", None) or 1)
        self.ended.callback((code, b"".join(self.output).decode(errors="replace")))


class DocExampleTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred[None]:
        self.state = Path(tempfile.mkdtemp(prefix="ctrader-docs-"))
        self.addCleanup(shutil.rmtree, self.state, True)
        started = start_sandbox(
            reactor,  # type: ignore[arg-type]
            SandboxConfig(seed=3, tick_interval=0.1, always_open=True),
            state_dir=self.state,
        )

        def keep(sandbox: RunningSandbox) -> None:
            self.sandbox = sandbox
            self.addCleanup(sandbox.stop)

        return started.addCallback(keep)

    def run_example(self, code: str) -> Deferred[tuple[int, str]]:
        script = self.state / "example.py"
        script.write_text(code, encoding="utf-8")
        collect = _Collect()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = reactor.spawnProcess(
            collect, sys.executable, [sys.executable, str(script)], env=env, path=str(self.state)
        )
        timer = global_reactor.callLater(45, process.signalProcess, "KILL")  # type: ignore[attr-defined]

        def done(result: tuple[int, str]) -> tuple[int, str]:
            if timer.active():
                timer.cancel()
            return result

        return collect.ended.addCallback(done)

    async def test_readme_client_example(self) -> None:
        code = substitute(
            python_block(ROOT / "README.md", "## Using the client"),
            {
                'ca_file="sandbox-ca.pem"': f"ca_file={str(self.sandbox.ca_file)!r}",
                '"localhost", 5035': f'"localhost", {self.sandbox.port}',
                # The feed sends only price changes, and EURUSD's walk may keep one price
                # for tens of seconds; BTCUSD's moves at least every 1.6 s (checked over a week)
                # for this seed, so three seconds of streaming always bring a second quote.
                '"EURUSD"': '"BTCUSD"',
                "deferLater(reactor, 5,": "deferLater(reactor, 3,",
            },
        )
        code_, output = await self.run_example(code)
        self.assertEqual(code_, 0, output)
        quotes = [line for line in output.splitlines() if line.startswith("Quote(")]
        self.assertGreaterEqual(len(quotes), 2, output)
        self.assertIn("symbol_id=16,", quotes[0])

    async def test_client_guide_asyncio_example(self) -> None:
        code = substitute(
            python_block(ROOT / "docs" / "client.md", "## From asyncio code"),
            {
                "tls_endpoint(reactor, DEMO_HOST)": (
                    f'tls_endpoint(reactor, "localhost", {self.sandbox.port}, '
                    f"ca_file={str(self.sandbox.ca_file)!r})"
                ),
                'client_id="..."': f"client_id={DEFAULT_CLIENT_ID!r}",
                'client_secret="..."': f"client_secret={DEFAULT_CLIENT_SECRET!r}",
            },
        )
        code_, output = await self.run_example(code)
        self.assertEqual(code_, 0, output)
        self.assertTrue(output.strip().splitlines()[-1].startswith("91"), output)
        self.assertNotIn(DEFAULT_ACCESS_TOKEN, output)
