"""``ctrader-twisted sandbox`` and ``twistd -n ctrader-sandbox`` as real processes (serve,
answer a TLS client, stop on a signal; a taken port ends them at once with one line), and
the start-up errors and usage text in-process."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.client import Client, tls_endpoint
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxConfig
from ctrader_twisted.sandbox.server import SandboxFactory
from ctrader_twisted.sandbox.tap import (
    EXIT_FAILED,
    EXIT_USAGE,
    Options,
    SandboxService,
    SandboxStartError,
    makeService,
    run_sandbox,
)

reactor: IReactorCore = global_reactor  # type: ignore[assignment]
BIN = Path(sys.executable).parent
#: Seconds a child may take to print its banner or to exit (bounds every wait).
WAIT = 15.0
SEE_HELP = "(see ctrader-twisted sandbox --help)"
NOPE = "bad --listen endpoint 'nope:1': Unknown endpoint type: 'nope'"


def _temp_dir(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="ctrader-sandbox-cli-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


def _hold_port(case: SynchronousTestCase) -> int:
    """A loopback port this process listens on (so a child cannot)."""
    port: IListeningPort = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
    case.addCleanup(port.stopListening)
    return int(port.getHost().port)  # type: ignore[attr-defined]


class Child(ProcessProtocol):
    """A child process: its output, a Deferred for a complete banner, one for its exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.banner: Deferred[str] = Deferred()
        self.ended: Deferred[int | None] = Deferred()
        self.code: int | None = None
        self.signal: int | None = None
        self.finished = False

    def outReceived(self, data: bytes) -> None:
        self.out += data
        text = self.out.decode(errors="replace")
        if not self.banner.called and re.search(r"connect with:.*\n", text):
            self.banner.callback(text)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.finished = True
        if isinstance(reason.value, ProcessDone | ProcessTerminated):
            self.code = reason.value.exitCode
            self.signal = getattr(reason.value, "signal", None)
        if not self.banner.called:
            self.banner.errback(RuntimeError(f"ended without a banner: {self.output()}"))
        self.ended.callback(self.code)

    def output(self) -> str:
        out, err = self.out.decode(errors="replace"), self.err.decode(errors="replace")
        return f"stdout={out!r} stderr={err!r}"


def _spawn(case: TestCase, argv: list[str], cwd: Path) -> Child:
    child = Child()
    transport = reactor.spawnProcess(  # type: ignore[attr-defined]
        child, argv[0], argv, env=dict(os.environ), path=str(cwd)
    )

    def reap() -> Deferred[int | None] | None:
        if child.finished:
            return None
        transport.signalProcess("KILL")
        return child.ended

    case.addCleanup(reap)
    child.banner.addTimeout(WAIT, reactor)  # type: ignore[arg-type]
    child.ended.addTimeout(WAIT, reactor)  # type: ignore[arg-type]
    child.transport = transport
    return child


def _where(banner: str) -> tuple[int, str]:
    """The port and CA file named in a banner (plain or in twistd's log lines)."""
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
    ca_file = re.search(r"CA file:\s+(\S+)", banner)
    assert port is not None, banner
    assert ca_file is not None, banner
    return int(port.group(1)), ca_file.group(1)


class ProcessTests(TestCase):
    """Both start-ups as real processes."""

    timeout = 60

    async def _version_over_tls(self, banner: str) -> None:
        port, ca_file = _where(banner)
        endpoint = tls_endpoint(reactor, "localhost", port, ca_file=ca_file)  # type: ignore[arg-type]
        client = Client(
            endpoint,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=DEFAULT_CLIENT_SECRET,
            reactor=reactor,  # type: ignore[arg-type]
        )
        client.startService()
        try:
            await client.when_ready().addTimeout(WAIT, reactor)  # type: ignore[arg-type]
            answer = await client.request(m.ProtoOAVersionReq())
            self.assertTrue(answer.version)
        finally:
            await client.stopService()

    def test_cli_serves_and_stops_on_sigint(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cli_serves())

    async def _cli_serves(self) -> None:
        where = _temp_dir(self)
        argv = [str(BIN / "ctrader-twisted"), "sandbox", "--port", "0"]
        child = _spawn(self, [*argv, "--state-dir", str(where / "state")], where)
        banner = await child.banner
        self.assertIn(str(where / "state" / "sandbox-ca.pem"), banner)
        await self._version_over_tls(banner)
        child.transport.signalProcess("INT")
        self.assertEqual(await child.ended, 0, child.output())
        log = child.err.decode()
        self.assertRegex(log, r"connection from 127\.0\.0\.1:\d+ opened")
        self.assertNotIn(DEFAULT_CLIENT_SECRET, log)
        self.assertNotIn("Traceback", log)

    def test_twistd_serves_and_stops_on_sigterm(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._twistd_serves())

    async def _twistd_serves(self) -> None:
        where = _temp_dir(self)
        argv = [str(BIN / "twistd"), "-n", "ctrader-sandbox", "--port", "0"]
        child = _spawn(self, [*argv, "--state-dir", str(where / "state")], where)
        banner = await child.banner
        self.assertTrue((where / "twistd.pid").exists())
        await self._version_over_tls(banner)
        child.transport.signalProcess("TERM")
        await child.ended
        # twistd stops cleanly, then ends itself with the signal it got (as it always does)
        self.assertEqual(child.signal, signal.SIGTERM, child.output())
        log = child.out.decode()
        self.assertRegex(log, r"connection from 127\.0\.0\.1:\d+ opened")
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        self.assertFalse((where / "twistd.pid").exists())

    def test_cli_port_taken(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cli_port_taken())

    async def _cli_port_taken(self) -> None:
        where, port = _temp_dir(self), _hold_port(self)
        argv = [str(BIN / "ctrader-twisted"), "sandbox", "--port", str(port)]
        child = _spawn(self, [*argv, "--state-dir", str(where / "state")], where)
        child.banner.addErrback(lambda _: None)
        self.assertEqual(await child.ended, EXIT_FAILED, child.output())
        self.assertEqual(
            child.err.decode(),
            f"error: cannot listen on 127.0.0.1:{port}: address already in use\n",
        )
        self.assertEqual(child.out, b"")

    def test_twistd_port_taken(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._twistd_port_taken())

    async def _twistd_port_taken(self) -> None:
        where, port = _temp_dir(self), _hold_port(self)
        argv = [str(BIN / "twistd"), "-n", "ctrader-sandbox", "--port", str(port)]
        child = _spawn(self, [*argv, "--state-dir", str(where / "state")], where)
        child.banner.addErrback(lambda _: None)
        self.assertEqual(await child.ended, EXIT_FAILED, child.output())
        output = (child.out + child.err).decode()
        errors = [line for line in output.splitlines() if "#critical]" in line or "rror" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertTrue(
            errors[0].endswith(f"cannot listen on 127.0.0.1:{port}: address already in use")
        )
        self.assertNotIn("Traceback", output)
        self.assertFalse((where / "twistd.pid").exists())  # twistd cleaned up


class StartErrorTests(SynchronousTestCase):
    """One line and the exit status for every way the start can fail, in-process."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.where = _temp_dir(self)

    def _start(self, *argv: str) -> tuple[int, str]:
        self.stderr.seek(0)
        self.stderr.truncate()
        code = run_sandbox([*argv, "--state-dir", str(self.where / "state")], io.StringIO())
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        return code, lines[0]

    def test_bad_option_is_one_line(self) -> None:
        self.assertEqual(
            self._start("--nope"),
            (
                EXIT_USAGE,
                "error: option --nope not recognized (see ctrader-twisted sandbox --help)",
            ),
        )

    def test_bad_option_value(self) -> None:
        code, line = self._start("--rate-limit-mode", "nope")
        self.assertEqual(code, EXIT_USAGE)
        self.assertIn("--rate-limit-mode must be 'frequency' or 'blocked'", line)
        code, line = self._start("--port", "70000")
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(line, f"error: --port must be 0 to 65535 (0: any free port) {SEE_HELP}")

    def test_bad_listen_endpoint(self) -> None:
        code, line = self._start("--listen", "nope:1")
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(
            line, "error: bad --listen endpoint 'nope:1': Unknown endpoint type: 'nope'"
        )

    def test_missing_certificate_file(self) -> None:
        missing = self.where / "missing.pem"
        code, line = self._start("--listen", f"ssl:0:privateKey={missing}")
        self.assertEqual(code, EXIT_USAGE)
        self.assertTrue(line.endswith(f"cannot read {missing}: no such file or directory"), line)

    def test_invalid_certificate_file(self) -> None:
        garbage = self.where / "garbage.pem"
        garbage.write_text("not a certificate\n")
        code, line = self._start("--listen", f"ssl:0:privateKey={garbage}")
        self.assertEqual(code, EXIT_USAGE)
        self.assertTrue(line.endswith("no valid PEM private key and certificate"), line)

    def test_unusable_state_dir(self) -> None:
        blocker = self.where / "file"
        blocker.write_text("")
        code = run_sandbox(["--state-dir", str(blocker / "state")], io.StringIO())
        self.assertEqual(code, EXIT_USAGE)
        self.assertIn(
            f"cannot prepare the TLS certificates in {blocker / 'state'}", self.stderr.getvalue()
        )

    def test_twistd_bad_listen_exits_with_usage_status(self) -> None:
        options = Options()
        options.parseOptions(["--listen", "nope:1"])
        with self.assertRaises(SystemExit) as raised:
            makeService(options)
        self.assertEqual(raised.exception.code, EXIT_USAGE)
        self.assertEqual(
            self.stderr.getvalue(),
            f"ctrader-sandbox: error: {NOPE}\n",
        )

    def test_twistd_port_taken_aborts_the_start(self) -> None:
        """twistd sees an Exception (so it cleans up) that is also a SystemExit(1)."""
        port = _hold_port(self)
        options = Options()
        options.parseOptions(["--port", str(port), "--state-dir", str(self.where / "state")])
        service = makeService(options)
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        with self.assertRaises(Exception) as raised:
            service.privilegedStartService()
        self.assertIsInstance(raised.exception, SystemExit)
        self.assertEqual(raised.exception.code, EXIT_FAILED)  # type: ignore[attr-defined]
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertEqual(
            critical[0]["error"], f"cannot listen on 127.0.0.1:{port}: address already in use"
        )

    def test_help_shows_the_command(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as raised:
            run_sandbox(["--help"])
        self.assertEqual(raised.exception.code, 0)
        self.assertTrue(out.getvalue().startswith("Usage: ctrader-twisted sandbox [--port N"))
        self.assertIn("--client-secret", out.getvalue())


class LateListenFailureTests(SynchronousTestCase):
    """An endpoint that fails after the reactor runs: logged once, the reactor stops."""

    def test_late_failure_stops_the_reactor(self) -> None:
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
        memory = MemoryReactorClock()
        service = SandboxService(options, memory, io.StringIO())
        pending: Deferred[IListeningPort] = Deferred()

        class Later:
            def listen(self, factory: object) -> Deferred[IListeningPort]:
                return pending

        service._endpoint = Later()  # type: ignore[assignment]
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service.startService()
        self.assertIsNone(service.error)
        memory.running = True
        pending.errback(SandboxStartError("x", 1))
        self.assertEqual(service.error, "cannot listen on tcp:0:interface=127.0.0.1: x")
        self.assertTrue(memory.hasStopped)
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual([e["error"] for e in critical], [service.error])
        service.stopService()


class ActivityLogTests(SynchronousTestCase):
    """What the sandbox logs about connections (shown by ``ctrader-twisted sandbox``)."""

    def _connect(self, factory: SandboxFactory, peer_port: int) -> OpenApiProtocol:
        protocol = factory.buildProtocol(None)
        peer = IPv4Address("TCP", "127.0.0.1", peer_port)
        protocol.makeConnection(StringTransport(peerAddress=peer))
        return protocol

    def test_connections_opened_and_closed(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = SandboxFactory(SandboxConfig(), Clock())
        refused = self._connect(factory, 40001)
        quiet = self._connect(factory, 40002)
        wrong = m.ProtoOAApplicationAuthReq(clientId=DEFAULT_CLIENT_ID, clientSecret="wrong-one")
        refused.dataReceived(m.encode_frame(wrong, "c1"))
        refused.connectionLost(Failure(ConnectionDone()))
        quiet.connectionLost(Failure(ConnectionDone()))
        lines = [formatEvent(e) for e in events if "connection from" in str(e["log_format"])]
        self.assertEqual(
            lines,
            [
                "connection from 127.0.0.1:40001 opened (1 open)",
                "connection from 127.0.0.1:40002 opened (2 open)",
                "connection from 127.0.0.1:40001 closed "
                "(1 frames received, application not authorized; 1 open)",
                "connection from 127.0.0.1:40002 closed (0 frames received; 0 open)",
            ],
        )
        self.assertNotIn("wrong-one", repr(events))
