"""Connection floods against a real sandbox process over loopback TLS (issue 12 item 6).

* 150 unauthenticated clients each start a frame of about 1 MiB and never finish it: before
  the fix the sandbox held every partial frame (75 -> 244 MB); now a frame over
  ``pre_auth_max_frame`` (64 KiB) is refused at once with ``FRAME_TOO_LONG``.
* 200 clients that only send heartbeats: one over ``--max-connections`` is refused with
  ``CONNECTIONS_LIMIT_EXCEEDED``, the others are closed with ``CH_CLIENT_NOT_AUTHENTICATED``
  at the ``--app-auth-timeout``; none stays open.

The sandbox's resident memory is read from ``/proc`` while the flood runs.  Run this module
(``.venv/bin/python -m tests.test_sandbox_flood``) to print the figures.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from ctrader_twisted import Client
from ctrader_twisted import messages as m
from ctrader_twisted.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from ctrader_twisted.tls import tls_endpoint

reactor: Any = global_reactor
BIN = Path(sys.executable).parent
#: Bounds every wait, in seconds.
WAIT = 30.0
_PREFIX = struct.Struct("!I")


class Sandbox(ProcessProtocol):
    """``ctrader-twisted sandbox`` as a child process."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.banner: Deferred[tuple[int, str]] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.pid = 0

    def outReceived(self, data: bytes) -> None:
        self.out += data
        text = self.out.decode(errors="replace")
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        ca = re.search(r"CA file:\s+(\S+)", text)
        if port and ca and "connect with:" in text and not self.banner.called:
            self.banner.callback((int(port.group(1)), ca.group(1)))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if not self.banner.called:
            self.banner.errback(RuntimeError(f"no banner: {self.err.decode(errors='replace')}"))
        self.ended.callback(None)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found is not None, status
        return int(found.group(1)) / 1024


async def start_child(
    options: list[str], env: dict[str, str] | None = None
) -> tuple[Sandbox, int, str]:
    where = Path(tempfile.mkdtemp(prefix="ctrader-sandbox-flood-"))
    child = Sandbox()
    argv = [str(BIN / "ctrader-twisted"), "sandbox", "--port", "0", "--state-dir", str(where)]
    transport = reactor.spawnProcess(
        child, argv[0], [*argv, *options], env=env or dict(os.environ), path=str(where)
    )
    child.pid = transport.pid
    child.transport = transport  # type: ignore[attr-defined]
    child.ended.addBoth(lambda _: shutil.rmtree(where, True))
    port, ca = await child.banner.addTimeout(WAIT, reactor)
    return child, port, ca


async def stop_child(child: Sandbox) -> None:
    if not child.ended.called:
        child.transport.signalProcess("KILL")  # type: ignore[attr-defined]
        await child.ended


class Flooder(Protocol):
    """Writes ``data`` once connected, collects what the server says, notes when it ends."""

    def __init__(self, data: bytes, heartbeat: float | None = None) -> None:
        self.data = data
        self.heartbeat = heartbeat
        self.answer = b""
        self.opened: Deferred[None] = Deferred()
        self.ended: Deferred[float] = Deferred()
        self._beats: LoopingCall | None = None

    def connectionMade(self) -> None:
        self.opened.callback(None)
        if self.data:
            self.transport.write(self.data)  # type: ignore[union-attr]
        if self.heartbeat:
            self._beats = LoopingCall(self._beat)
            self._beats.start(self.heartbeat)

    def _beat(self) -> None:
        self.transport.write(m.encode_frame(m.ProtoHeartbeatEvent()))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._beats is not None and self._beats.running:
            self._beats.stop()
        if not self.opened.called:
            self.opened.callback(None)
        self.ended.callback(time.monotonic())

    def error_codes(self) -> list[str]:
        codes, offset = [], 0
        while offset + 4 <= len(self.answer):
            (length,) = _PREFIX.unpack_from(self.answer, offset)
            body = self.answer[offset + 4 : offset + 4 + length]
            if len(body) < length:
                break
            message = m.decode_envelope(body).message
            code = getattr(message, "errorCode", None)
            if code:
                codes.append(str(code))
            offset += 4 + length
        return codes


async def flood(
    port: int, ca: str, count: int, data: bytes, heartbeat: float | None = None
) -> list[Flooder]:
    trust = Certificate.loadPEM(Path(ca).read_bytes())
    options = optionsForClientTLS("localhost", trustRoot=trust)
    flooders = [Flooder(data, heartbeat) for _ in range(count)]
    for flooder in flooders:
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        endpoint.connect(Factory.forProtocol(lambda f=flooder: f)).addErrback(  # type: ignore[misc]
            lambda failure, f=flooder: f.ended.called or f.ended.callback(time.monotonic())
        )
    await gatherResults([f.opened for f in flooders]).addTimeout(WAIT, reactor)
    return flooders


async def peak_rss_until_closed(child: Sandbox, flooders: list[Flooder], limit: float) -> float:
    """Sample the child's RSS every 50 ms until every flooder was closed (bounded)."""
    peak = child.rss_mb()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not all(f.ended.called for f in flooders):
        peak = max(peak, child.rss_mb())
        await deferLater(reactor, 0.05, lambda: None)
    return max(peak, child.rss_mb())


async def good_client_works(port: int, ca: str) -> str:
    client = Client(
        tls_endpoint(reactor, "localhost", port, ca_file=ca),
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        reactor=reactor,
    )
    client.startService()
    try:
        await client.when_ready().addTimeout(WAIT, reactor)
        answer = await client.request(m.ProtoOAVersionReq())
        return str(answer.version)
    finally:
        await client.stopService()


def parked_frame(size: int) -> bytes:
    """A length prefix for ``size`` bytes and all but the last 16 of them."""
    return _PREFIX.pack(size) + b"\x00" * (size - 16)


async def measure_big_partial_frames(
    env: dict[str, str] | None = None, count: int = 150, hold: float = 5.0
) -> tuple[float, float, list[Flooder], int]:
    """Baseline and peak RSS (MB) of a sandbox while ``count`` clients park ~1 MiB each, and
    how many of them the sandbox closed within ``hold`` seconds."""
    child, port, ca = await start_child([], env)
    try:
        await deferLater(reactor, 0.5, lambda: None)
        baseline = child.rss_mb()
        flooders = await flood(port, ca, count, parked_frame(1024 * 1024 - 64))
        peak = await peak_rss_until_closed(child, flooders, hold)
        closed = sum(f.ended.called for f in flooders)
        for flooder in flooders:
            flooder.transport.loseConnection()  # type: ignore[union-attr]
        return baseline, peak, flooders, closed
    finally:
        await stop_child(child)


class FloodTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not Path("/proc/self/status").exists():
            raise SkipTest("needs /proc to read the sandbox's memory")

    async def test_big_partial_frames_are_refused_at_once(self) -> None:
        baseline, peak, flooders, closed = await measure_big_partial_frames(hold=WAIT)
        self.assertEqual(closed, len(flooders))
        codes = [f.error_codes() for f in flooders]
        self.assertEqual(codes, [["FRAME_TOO_LONG"]] * len(flooders))
        # Before the fix: +169 MB (75 -> 244 MB).  TLS buffers and 150 sessions remain.
        self.assertLess(peak - baseline, 60.0, (baseline, peak))

    async def test_heartbeat_only_clients_are_capped_and_closed(self) -> None:
        options = ["--max-connections", "150", "--app-auth-timeout", "2"]
        child, port, ca = await start_child(options)
        self.addCleanup(stop_child, child)
        started = time.monotonic()
        flooders = await flood(port, ca, 200, b"", heartbeat=0.5)
        ended = await gatherResults([f.ended for f in flooders]).addTimeout(WAIT, reactor)
        codes = sorted(tuple(f.error_codes()) for f in flooders)
        refused = codes.count(("CONNECTIONS_LIMIT_EXCEEDED",))
        expired = codes.count(("CH_CLIENT_NOT_AUTHENTICATED",))
        self.assertEqual((refused, expired), (50, 150), codes)
        self.assertLess(max(ended) - started, 2.0 + 10.0)
        self.assertTrue(await good_client_works(port, ca))
        self.assertNotIn(b"Traceback", child.err)


async def _report() -> None:
    before = os.environ.get("FLOOD_BEFORE_TREE")
    env = dict(os.environ)
    if before:
        env["PYTHONPATH"] = before
    baseline, peak, flooders, closed = await measure_big_partial_frames(env, hold=10.0)
    tree = before or "this tree"
    print(f"{tree}: sandbox RSS {baseline:.0f} MB -> peak {peak:.0f} MB with 150 clients")
    print(f"  parking ~1 MiB each; {closed} of {len(flooders)} closed by the sandbox in 10 s")


if __name__ == "__main__":
    from twisted.internet.task import react

    react(lambda _: Deferred.fromCoroutine(_report()))
