"""A reader that closes stdout early (``ctrader-twisted bars ... --json | head -1``).

The command must stop quietly with status 141 (128 + SIGPIPE, what a shell shows for a tool
that SIGPIPE ended): no ``error: [Errno 32] Broken pipe``, no traceback, no status 2.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IReactorProcess
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted._cli_errors import ExitCode
from ctrader_twisted._cli_output import Column, Output, StdoutClosed
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted.cli import main
from ctrader_twisted.sandbox import RunningSandbox, SandboxConfig, start_sandbox

from .process_support import CollectingProcess

reactor: CliReactor = global_reactor  # type: ignore[assignment]
CLI = "import sys; from ctrader_twisted.cli import main; sys.exit(main())"


class _ClosesAfterOneLine(CollectingProcess):
    """Read the child's stdout until the first complete line, then close our end of the pipe
    (as ``head -1`` does); keep stderr; fire ``ended`` with the exit status."""

    def __init__(self, lines: int = 1) -> None:
        super().__init__()
        self.wanted = lines
        self.closed = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1 and self.closed:
            return
        super().childDataReceived(childFD, data)
        if childFD == 1 and self.out.count(b"\n") >= self.wanted:
            self.closed = True
            assert self.transport is not None
            self.transport.closeChildFD(1)


class ClosedPipeTests(TestCase):
    timeout = 60

    async def _sandbox(self) -> RunningSandbox:
        config = SandboxConfig(always_open=True, tick_interval=0.05)
        running = await start_sandbox(reactor, config, port=0, state_dir=self.mktemp())
        self.addCleanup(running.stop)
        return running

    async def run_closing(self, running: RunningSandbox, *args: str) -> _ClosesAfterOneLine:
        home = Path(self.mktemp()).absolute()
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "CTRADER_CONFIG": str(home / "none.ini")}
        where = ["--env", "sandbox", "--host", "localhost", "--port", str(running.port)]
        argv = [sys.executable, "-c", CLI, *args, *where, "--ca-file", str(running.ca_file)]
        protocol = _ClosesAfterOneLine()
        spawn: IReactorProcess = global_reactor  # type: ignore[assignment]
        spawn.spawnProcess(protocol, sys.executable, argv, env=env, path=str(home))
        protocol.ended.addTimeout(50, reactor)
        return protocol

    async def test_bars_json_into_head(self) -> None:
        running = await self._sandbox()
        # 30 days of M1 bars is about 43,000 lines: far more than a pipe's buffer holds
        protocol = await self.run_closing(running, "bars", "EURUSD", "--from", "30d", "--json")
        status = await protocol.ended
        err = protocol.err.decode()
        self.assertEqual(status, ExitCode.STDOUT_CLOSED, err)
        self.assertTrue(protocol.out.startswith(b'{"type":"bar"'), protocol.out[:200])
        self.assertNotIn("error", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Broken pipe", err)

    async def test_quotes_into_head(self) -> None:
        running = await self._sandbox()
        protocol = await self.run_closing(running, "quotes", "EURUSD")  # no --count: endless
        status = await protocol.ended
        err = protocol.err.decode()
        self.assertEqual(status, ExitCode.STDOUT_CLOSED, err)
        self.assertIn(b"EURUSD", protocol.out)
        self.assertEqual(err, "")


class _BrokenAfter(io.StringIO):
    """A stream whose reader goes away after ``lines`` lines."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines

    def write(self, text: str) -> int:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return super().write(text)


class OutputTests(SynchronousTestCase):
    def test_every_stdout_write_reports_stdout_closed(self) -> None:
        column = [Column("a", "A")]
        writes: list[tuple[bool, Callable[[Output], None]]] = [
            (True, lambda out: out.emit({"a": 1})),
            (True, lambda out: out.line("text", {"a": 1})),
            (True, lambda out: out.table("title", column, [{"a": 1}])),
            (False, lambda out: out.line("text", {"a": 1})),
            (False, lambda out: out.table("title", column, [{"a": 1}])),
            (False, lambda out: out.note("x")),
            (False, lambda out: out.heading("x")),
        ]
        for json_mode, write in writes:
            out = Output(json_mode=json_mode, stdout=_BrokenAfter(0), stderr=io.StringIO())
            with self.assertRaises(StdoutClosed):
                write(out)

    def test_errors_to_a_closed_stderr_are_dropped(self) -> None:
        out = Output(json_mode=False, stdout=io.StringIO(), stderr=_BrokenAfter(0))
        out.error("nobody reads this")
        out.interrupt()

    def test_sandbox_help_into_a_closed_pipe(self) -> None:
        """``ctrader-twisted sandbox --help | head -1`` (Twisted's usage printing)."""
        self.patch(sys, "stdout", _BrokenAfter(0))
        self.assertEqual(main(["sandbox", "--help"], stdout=io.StringIO()), ExitCode.STDOUT_CLOSED)
