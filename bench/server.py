"""The bench server: the sandbox on 127.0.0.1 plus a control channel and a spot-event burst mode.

Run as its own process (``python -m bench.server``) so that it does not share a core with the
client under test.  It prints one JSON line with ``host``, ``port``, ``ca_file`` and
``control_port``, then serves until its standard input closes or it gets ``{"op": "quit"}``.

Control commands (see :mod:`bench._control`):

- ``burst`` ``count``: push ``count`` pre-encoded ``ProtoOASpotEvent`` frames to every open
  session as fast as each socket takes them (a push producer on the session's transport that
  honours back-pressure); answers when all of them have been handed to the transports.
- ``drop``: ``factory.drop_all()``, a server-side drop of every session.
- ``stats``: request counters by payload type and connection counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from bench.ceiling import build_frames
from ctrader_twisted.sandbox import SandboxConfig, SandboxFactory, start_sandbox

__all__ = ["BenchServer", "SpotBurst", "main"]

#: Frames written per ``transport.write`` (about 16 KiB, one TLS record).
FRAMES_PER_WRITE = 512


@implementer(IPushProducer)
class SpotBurst:
    """Writes ``count`` frames to one transport, pausing whenever the transport asks it to.

    :param flow: the session's own producer (the sandbox's ``OutputFlow``): a transport holds
        a single producer, so the flow relays the pause and resume signals to the burst.
    """

    def __init__(
        self, transport: ITransport, frames: Sequence[bytes], count: int, flow: Any
    ) -> None:
        self._transport: Any = transport
        self._flow = flow
        self._frames = frames
        self._remaining = count
        self._next = 0
        self._paused = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """Register for flow control and start writing; the Deferred fires when all are written."""
        self._flow.attach(self)  # pauses the burst at once if the client is not reading
        if not self._paused:
            self.resumeProducing()
        return self.done

    def resumeProducing(self) -> None:
        self._paused = False
        frames = self._frames
        while not self._paused and self._remaining > 0:
            take = min(FRAMES_PER_WRITE, self._remaining, len(frames) - self._next)
            self._transport.write(b"".join(frames[self._next : self._next + take]))
            self._next = (self._next + take) % len(frames)
            self._remaining -= take
        if self._remaining == 0 and not self.done.called:
            self._flow.detach(self)
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._remaining = 0
        if not self.done.called:
            self.done.callback(None)


class ControlServer(LineReceiver):
    """The bench server's end of the control channel."""

    delimiter = b"\n"

    def __init__(self, bench: BenchServer) -> None:
        self.bench = bench

    def lineReceived(self, line: bytes) -> None:
        command = json.loads(line)
        self.bench.handle(command).addCallback(self._answer)

    def _answer(self, reply: dict[str, object]) -> None:
        self.sendLine(json.dumps(reply).encode())


class BenchServer:
    """The running sandbox and what the control commands do to it."""

    def __init__(self, reactor: Any, factory: SandboxFactory) -> None:
        self.reactor = reactor
        self.factory = factory
        self.frames = build_frames()
        self.stopped: Deferred[None] = Deferred()

    def handle(self, command: dict[str, Any]) -> Deferred[dict[str, object]]:
        op = command.get("op")
        if op == "burst":
            return self._burst(int(command["count"]))
        if op == "drop":
            self.factory.drop_all()
            return Deferred.fromCoroutine(self._reply({"dropped": True}))
        if op == "stats":
            stats = self.factory.stats
            reply = {
                "requests_by_payload_type": dict(stats.requests_by_payload_type),
                "connections_total": stats.connections_total,
                "connections_open": stats.connections_open,
            }
            return Deferred.fromCoroutine(self._reply(reply))
        if op == "quit":
            self.reactor.callLater(0, self._stop)
            return Deferred.fromCoroutine(self._reply({"quitting": True}))
        return Deferred.fromCoroutine(self._reply({"error": f"unknown op {op!r}"}))

    async def _reply(self, reply: dict[str, object]) -> dict[str, object]:
        return reply

    def _burst(self, count: int) -> Deferred[dict[str, object]]:
        started = self.reactor.seconds()
        sessions = list(self.factory.sessions)
        pushes = []
        for session in sessions:
            protocol = session.protocol
            transport = protocol.transport if protocol is not None else None
            if transport is not None:
                pushes.append(SpotBurst(transport, self.frames, count, session.flow).start())

        def finished(_: object) -> dict[str, object]:
            return {"sessions": len(pushes), "seconds": self.reactor.seconds() - started}

        return DeferredList(pushes).addCallback(finished)

    def _stop(self) -> None:
        if not self.stopped.called:
            self.stopped.callback(None)


class _StdinWatcher(Protocol):
    def __init__(self, bench: BenchServer) -> None:
        self.bench = bench

    def connectionLost(self, reason: object = None) -> None:
        self.bench._stop()


async def serve(reactor: Any, tick_interval: float) -> None:
    """Start the sandbox and the control port, announce them, serve until told to stop."""
    from twisted.internet.stdio import StandardIO

    config = SandboxConfig(tick_interval=tick_interval, always_open=True, idle_timeout=0)
    with tempfile.TemporaryDirectory(prefix="ctrader-bench-") as state_dir:
        running = await start_sandbox(reactor, config, port=0, state_dir=state_dir)
        bench = BenchServer(reactor, running.factory)
        control_factory = Factory.forProtocol(lambda: ControlServer(bench))
        control = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            control_factory
        )
        announce = {
            "host": running.host,
            "port": running.port,
            "ca_file": str(running.ca_file),
            "control_port": control.getHost().port,
        }
        sys.stdout.write(json.dumps(announce) + "\n")
        sys.stdout.flush()
        StandardIO(_StdinWatcher(bench), reactor=reactor)
        await bench.stopped
        await control.stopListening()
        await running.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m bench.server [--tick-interval SECONDS]``."""
    from twisted.internet.task import react

    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--tick-interval", type=float, default=0.02)
    args = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(serve(reactor, args.tick_interval)))


if __name__ == "__main__":
    main()
