"""Hostile servers over real TLS on 127.0.0.1 (trustme certificates, the real reactor): a server
that trickles one frame a byte at a time, and one that authorizes the application and drops
the connection at once.

Run as a program to measure the second over real time with the client's default backoff::

    .venv/bin/python -m tests.test_client_loopback_hostile --seconds 30
"""

from __future__ import annotations

import argparse
import struct
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import trustme
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.trial.unittest import TestCase

from ctrader_twisted import Client, tls_endpoint
from ctrader_twisted import messages as m
from ctrader_twisted.errors import ConnectionLost
from ctrader_twisted.sandbox.certs import server_tls_options
from tests.hostile import ScriptedServer, ServerConnection

_PREFIX = struct.Struct("!I")
VERSION = m.payload_type_of(m.ProtoOAVersionReq)
APP_AUTH = m.payload_type_of(m.ProtoOAApplicationAuthReq)
SECRET = "loopback-hostile-secret-0123456789"


def _listen(ca: trustme.CA, server: ScriptedServer) -> IListeningPort:
    cert = ca.issue_cert("localhost")
    options = server_tls_options(cert.private_key_and_cert_chain_pem.bytes())
    port: IListeningPort = reactor.listenSSL(  # type: ignore[attr-defined]
        0, server.factory(), options, interface="127.0.0.1"
    )
    return port


def _client(ca: trustme.CA, port: IListeningPort, folder: Path, **options: Any) -> Client:
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    endpoint = tls_endpoint(reactor, "localhost", port.getHost().port, ca_file=ca_file)
    return Client(
        endpoint,
        client_id="loopback",
        client_secret=SECRET,
        reactor=reactor,  # type: ignore[arg-type]
        **options,
    )


def _accept_and_drop(connection: ServerConnection, envelope: m.Envelope) -> None:
    ScriptedServer.answer(connection, envelope)
    connection.drop()


class LoopbackHostileTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.ca = trustme.CA()
        clock: IReactorTime = reactor  # type: ignore[assignment]
        self.server = ScriptedServer(clock, heartbeat_interval=0.3)  # type: ignore[arg-type]
        self.port = _listen(self.ca, self.server)
        self.addCleanup(self.port.stopListening)
        self.timers: list[IDelayedCall] = []
        self.addCleanup(self._cancel_timers)

    def _cancel_timers(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()

    def client(self, **options: Any) -> Client:
        folder = Path(self.mktemp())
        folder.mkdir()
        client = _client(self.ca, self.port, folder, **options)
        client.startService()
        self.addCleanup(self._close_server_side)
        self.addCleanup(client.stopService)
        return client

    def _close_server_side(self) -> None:
        for connection in self.server.connections:
            if connection.open and connection.protocol is not None:
                connection.protocol.close(abort=True)

    def _ready_count(self, client: Client) -> list[Deferred[None]]:
        """One Deferred per future ready session, fired in turn."""
        waiters: list[Deferred[None]] = [Deferred() for _ in range(20)]

        def ready() -> None:
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)
                    return

        client.on_ready(ready)
        return waiters

    @defer.inlineCallbacks
    def test_trickling_server_is_dropped_and_left(self) -> Any:
        """Before: the bytes kept the link "alive", every request timed out, no reconnect."""

        def trickle(connection: ServerConnection, envelope: m.Envelope) -> None:
            connection.silent = True
            connection.write(_PREFIX.pack(100_000) + b"\x08")

            def one_more() -> None:
                if connection.open:
                    connection.write(b"\x00")
                    self.timers.append(reactor.callLater(0.1, one_more))  # type: ignore[attr-defined]

            one_more()

        dead_link = 1.5
        client = self.client(
            heartbeat_interval=0.3,
            dead_link_timeout=dead_link,
            request_timeout=10.0,
            reconnect_initial_delay=0.1,
        )
        sessions = self._ready_count(client)
        yield sessions[0]
        self.server.behaviours[VERSION] = trickle
        started = reactor.seconds()  # type: ignore[attr-defined]
        with self.assertRaises(ConnectionLost):
            yield client.request(m.ProtoOAVersionReq())
        dropped_after = reactor.seconds() - started  # type: ignore[attr-defined]
        self.assertGreaterEqual(dropped_after, dead_link - 0.05)
        self.assertLess(dropped_after, dead_link + 1.0)
        self.server.behaviours.clear()
        yield sessions[1]
        self.assertLess(reactor.seconds() - started, dead_link + 2.0)  # type: ignore[attr-defined]
        self.assertEqual(client.reconnect_count, 1)
        answer = yield client.request(m.ProtoOAVersionReq())
        self.assertEqual(answer.version, "91")

    @defer.inlineCallbacks
    def test_authorized_then_dropped_backs_off(self) -> Any:
        """Before: a new session every initial delay, for ever (about 2 a second by default)."""
        self.server.behaviours[APP_AUTH] = _accept_and_drop
        initial = 0.1
        client = self.client(reconnect_initial_delay=initial, reconnect_jitter=0.2)
        sessions = self._ready_count(client)
        times = []
        for index in range(5):  # the first session and four reconnects
            yield sessions[index]
            times.append(reactor.seconds())  # type: ignore[attr-defined]
        gaps = [b - a for a, b in pairwise(times)]
        for number, gap in enumerate(gaps):  # 0.1, 0.2, 0.4, 0.8 s, each -20 % at worst
            self.assertGreaterEqual(gap, 0.8 * initial * 2**number, gaps)
        self.assertGreaterEqual(times[-1] - times[0], 0.8 * initial * (1 + 2 + 4 + 8), gaps)


def measure(seconds: float) -> None:
    """Print the sessions a client with default settings opens in ``seconds`` of real time
    against a server that authorizes the application and drops the connection at once."""
    from twisted.internet import task

    async def run(_reactor: Any) -> None:
        ca = trustme.CA()
        server = ScriptedServer(reactor, heartbeat_interval=0)  # type: ignore[arg-type]
        server.behaviours[APP_AUTH] = _accept_and_drop
        port = _listen(ca, server)
        with tempfile.TemporaryDirectory() as folder:
            client = _client(ca, port, Path(folder))
            client.startService()
            await task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]
            await client.stopService()
        await port.stopListening()
        sessions = len(server.connections)
        print(f"{sessions} sessions in {seconds:g} s: {max(0, sessions - 1)} reconnects")

    task.react(lambda r: Deferred.fromCoroutine(run(r)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    measure(parser.parse_args().seconds)
