"""Hostile peers for reliability tests: a scripted Open API server and an in-memory network.

:class:`ScriptedServer` answers like a minimal, well-behaved Open API server (application and
account auth, version, subscriptions, orders) unless a test replaces the answer for a payload
type with a *behaviour* of its own: write corrupt frames, send unknown payload types, repeat a
clientMsgId, go silent, close mid-frame...

:class:`MemoryNetwork` connects any number of client connections to a server factory through
``iosim`` transports driven by a :class:`~twisted.internet.task.Clock`: no sockets, no sleeps,
and whole minutes of simulated time run in milliseconds.  A link can be dropped (FIN), stalled
(no bytes and no FIN in either direction, like a dead route) or refused (server down).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf.message import Message
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogBeginner, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from zope.interface import implementer

from ctrader_twisted import messages as m
from ctrader_twisted.errors import MalformedMessage
from ctrader_twisted.protocol import OpenApiProtocol

__all__ = [
    "Behaviour",
    "Link",
    "LogCapture",
    "forget_buffered_log",
    "MemoryNetwork",
    "Peer",
    "ScriptedServer",
    "ServerConnection",
    "leaks",
    "partial_frame",
    "raw_frame",
]

_PREFIX = struct.Struct("!I")

#: A behaviour answers one request: ``behaviour(connection, envelope)``.
Behaviour = Callable[["ServerConnection", m.Envelope], None]


def raw_frame(payload_type: int, payload: bytes = b"", client_msg_id: str | None = None) -> bytes:
    """A complete frame with any payload type and payload bytes (no validation at all)."""
    envelope = m.ProtoMessage(payloadType=payload_type, payload=payload)
    if client_msg_id is not None:
        envelope.clientMsgId = client_msg_id
    body = envelope.SerializeToString()
    return _PREFIX.pack(len(body)) + body


def partial_frame(message: Message, client_msg_id: str | None = None) -> bytes:
    """Frame ``message`` even when required fields are missing (servers may do that)."""
    return raw_frame(m.payload_type_of(message), message.SerializePartialToString(), client_msg_id)


# ---------------------------------------------------------------------------------------------
# The scripted server


class ServerConnection:
    """The server side of one connection: a MessageHandler with a few helpers for behaviours."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.protocol: OpenApiProtocol | None = None
        self.received: list[m.Envelope] = []
        self.open = False
        #: While true the server sends nothing of its own accord (no heartbeats).
        self.silent = False
        self._beat: IDelayedCall | None = None

    # MessageHandler

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.protocol = protocol
        self.open = True
        self.server.connections.append(self)
        self._schedule_beat()

    def _schedule_beat(self) -> None:
        interval = self.server.heartbeat_interval
        if interval > 0:
            self._beat = self.server.clock.callLater(interval, self._heartbeat)

    def _heartbeat(self) -> None:
        if self.open and not self.silent:
            self.send(m.ProtoHeartbeatEvent())
        self._schedule_beat()

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        self.received.append(envelope)
        self.server.received.append(envelope)
        behaviour = self.server.behaviours.get(envelope.payload_type, ScriptedServer.answer)
        behaviour(self, envelope)

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        self.server.undecodable += 1

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.open = False
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None

    # Helpers for behaviours

    def send(self, message: Message, client_msg_id: str | None = None) -> None:
        """Write ``message`` (required fields may be missing)."""
        self.write(partial_frame(message, client_msg_id))

    def write(self, data: bytes) -> None:
        """Write raw bytes: anything at all."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.write(data)

    def drop(self) -> None:
        """Close the connection (FIN)."""
        if self.protocol is not None:
            self.protocol.close()


@dataclass
class ScriptedServer:
    """A minimal Open API server whose answer to any payload type can be replaced.

    :ivar behaviours: payload type -> behaviour; types not listed get :meth:`answer`.
    :ivar heartbeat_interval: seconds between the server's heartbeats (0: none).
    :ivar connections: every connection ever made, in order.
    :ivar received: every envelope received, on any connection, in order.
    """

    clock: Clock
    behaviours: dict[int, Behaviour] = field(default_factory=dict)
    heartbeat_interval: float = 1.0
    connections: list[ServerConnection] = field(default_factory=list)
    received: list[m.Envelope] = field(default_factory=list)
    undecodable: int = 0

    def factory(self) -> Factory:
        """A protocol factory building one :class:`OpenApiProtocol` per connection."""
        return Factory.forProtocol(lambda: OpenApiProtocol(ServerConnection(self), self.clock))

    def count(self, cls: type[Message]) -> int:
        """How many requests of ``cls`` arrived, over all connections."""
        number = m.payload_type_of(cls)
        return sum(1 for envelope in self.received if envelope.payload_type == number)

    @property
    def current(self) -> ServerConnection:
        """The newest open connection."""
        open_ones = [c for c in self.connections if c.open]
        assert open_ones, "no open connection"
        return open_ones[-1]

    @staticmethod
    def answer(connection: ServerConnection, envelope: m.Envelope) -> None:
        """The well-behaved answer: an empty response of the matching type, or nothing."""
        request = envelope.message
        if isinstance(request, m.UnknownMessage) or envelope.payload_type == 51:
            return
        if m.is_trading(request):
            connection.send(_accepted(request), envelope.client_msg_id)
            return
        try:
            response = m.response_type(request)()
        except (KeyError, ValueError):
            return
        _copy_account(request, response)
        if isinstance(response, m.ProtoOAVersionRes):
            response.version = "91"
        if isinstance(response, m.ProtoOARefreshTokenRes):
            response.accessToken = "fresh-access-token-for-tests"
            response.refreshToken = "fresh-refresh-token-for-tests"
            response.tokenType = "bearer"
            response.expiresIn = 2628000
        connection.send(response, envelope.client_msg_id)


def _copy_account(request: Message, response: Message) -> None:
    name = "ctidTraderAccountId"
    if name in response.DESCRIPTOR.fields_by_name and name in request.DESCRIPTOR.fields_by_name:
        response.ctidTraderAccountId = request.ctidTraderAccountId  # type: ignore[attr-defined]


def _accepted(request: Message) -> m.ProtoOAExecutionEvent:
    event = m.ProtoOAExecutionEvent(executionType=m.ProtoOAExecutionType.ORDER_ACCEPTED)
    event.ctidTraderAccountId = request.ctidTraderAccountId  # type: ignore[attr-defined]
    event.order.orderId = 1
    event.order.tradeData.symbolId = getattr(request, "symbolId", 1)
    event.order.tradeData.volume = getattr(request, "volume", 100000)
    event.order.tradeData.tradeSide = getattr(request, "tradeSide", 1) or 1
    event.order.orderStatus = m.ProtoOAOrderStatus.ORDER_STATUS_ACCEPTED
    return event


# ---------------------------------------------------------------------------------------------
# The in-memory network


class Link:
    """One client connection through the memory network."""

    def __init__(self, client: IProtocol, server: IProtocol, clock: Clock) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 5035)
        self.client_io = FakeTransport(client, isServer=False, peerAddress=address)
        self.server_io = FakeTransport(server, isServer=True)
        self.client = client
        self.server = server
        self.stalled = False
        server.makeConnection(self.server_io)
        client.makeConnection(self.client_io)
        self._pump = IOPump(client, server, self.client_io, self.server_io, False, clock)

    @property
    def closed(self) -> bool:
        return bool(self.client_io.disconnected and self.server_io.disconnected)

    def pump(self) -> bool:
        """Move pending bytes and disconnects once; return whether anything happened."""
        if not self.stalled:
            return bool(self._pump.pump(advanceClock=False))
        # A dead route: nothing crosses, but a side that closes its own socket learns of it.
        moved = False
        for io in (self.client_io, self.server_io):
            if io.disconnecting and not io.disconnected:
                io.disconnected = True
                io.stream = []
                io.reportDisconnect()
                moved = True
        return moved

    def drop(self) -> None:
        """The server closes the connection (FIN): both sides see it on the next pump."""
        self.server_io.loseConnection()

    def kill(self) -> None:
        """Both ends vanish at once (used to clean up stalled links)."""
        self.stalled = True
        self.client_io.disconnecting = True
        self.server_io.disconnecting = True
        self.pump()


@implementer(IStreamClientEndpoint)
class MemoryNetwork:
    """A client endpoint whose connections reach ``server_factory`` through memory.

    :ivar refusing: while true, connection attempts fail with ``ConnectionRefusedError``.
    :ivar links: the links not yet closed (closed ones are let go, so leak checks can count
        the objects a client keeps alive).
    :ivar connections: how many links were ever made.
    :ivar attempts: how many connection attempts were made, refused ones included.
    """

    def __init__(self, server_factory: IProtocolFactory, clock: Clock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.refusing = False
        self.links: list[Link] = []
        self.connections = 0
        self.attempts = 0

    def connect(self, protocol_factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError("server down"))
        address = IPv4Address("TCP", "127.0.0.1", 5035)
        client = protocol_factory.buildProtocol(address)
        server = self.server_factory.buildProtocol(address)
        if client is None or server is None:
            return fail(ConnectionRefusedError("no protocol"))
        self.links.append(Link(client, server, self.clock))
        self.connections += 1
        return succeed(client)

    @property
    def open_links(self) -> list[Link]:
        return [link for link in self.links if not link.closed]

    def pump(self, rounds: int = 10_000) -> None:
        """Deliver everything in flight on every link, until quiet (bounded)."""
        for _ in range(rounds):
            moved = False
            for link in list(self.links):
                if not link.closed:
                    moved = link.pump() or moved
            if not moved:
                self.links = [link for link in self.links if not link.closed]
                return
        raise AssertionError(f"traffic did not settle within {rounds} rounds")

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Let ``seconds`` of simulated time pass, delivering traffic after each step."""
        self.pump()
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.pump()

    def run_until(self, condition: Callable[[], bool], limit: float, step: float = 0.05) -> float:
        """Run until ``condition()`` holds; fail after ``limit`` simulated seconds.

        :returns: the simulated seconds it took.
        """
        start = self.clock.seconds()
        self.pump()
        while not condition():
            if self.clock.seconds() - start > limit:
                raise AssertionError(f"condition not met within {limit} simulated seconds")
            self.clock.advance(step)
            self.pump()
        return self.clock.seconds() - start

    def drop_all(self) -> None:
        for link in self.open_links:
            link.drop()

    def stall_all(self) -> None:
        for link in self.open_links:
            link.stalled = True

    def close_all(self) -> None:
        """Tear down every link (test cleanup)."""
        for link in self.links:
            if not link.closed:
                link.kill()


# ---------------------------------------------------------------------------------------------
# Log capture


_OBJECT_KEYS = frozenset({"log_source", "log_logger", "log_legacy"})


def forget_buffered_log() -> None:
    """Empty Twisted's start-up log buffer (it keeps the last 65536 events, with their
    sources, until logging begins, which never happens under pytest)."""
    globalLogBeginner._initialBuffer._buffer.clear()  # type: ignore[attr-defined]


class LogCapture:
    """Every event published on the global log between :meth:`start` and :meth:`stop`.

    Use as a context manager.  :meth:`texts` renders each event every way a log observer could
    (formatted message, all fields' ``repr``, attached tracebacks) for leak checks.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __enter__(self) -> LogCapture:
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def _observe(self, event: LogEvent) -> None:
        # Keep a copy without the emitting objects, so captured logs do not keep
        # connections alive and leak checks stay meaningful.
        self.events.append({k: v for k, v in event.items() if k not in _OBJECT_KEYS})

    def at(self, *levels: str) -> list[LogEvent]:
        """Events logged at any of ``levels`` ("debug", "info", "warn", "error", "critical")."""
        return [e for e in self.events if e.get("log_level") and e["log_level"].name in levels]

    def formatted(self, *levels: str) -> list[str]:
        """The formatted text of the events at ``levels`` (all levels when none given)."""
        events = self.at(*levels) if levels else self.events
        return [formatEvent(e) for e in events]

    def texts(self) -> Iterator[str]:
        for event in self.events:
            yield formatEvent(event)
            yield repr(event)
            failure = event.get("log_failure")
            if failure is not None:
                yield failure.getTraceback()
                yield repr(failure.value)


def leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """Every (secret, text) pair where ``secret`` occurs in ``text``."""
    wanted = [s for s in secrets if s]
    return [(s, t) for t in texts for s in wanted if s in t]


# ---------------------------------------------------------------------------------------------
# A raw peer: any bytes, any message, answers collected by clientMsgId


class Peer:
    """A bare Open API connection (MessageHandler) for hostile clients.

    :ivar received: every envelope received, in order.
    :ivar closed: fires with ``None`` when the connection ends; :attr:`reason` says why.
    """

    def __init__(self) -> None:
        self.protocol: OpenApiProtocol | None = None
        self.received: list[m.Envelope] = []
        self.closed: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.is_closed = False
        self._waiting: dict[str, Deferred[m.Envelope]] = {}

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.protocol = protocol

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        self.received.append(envelope)
        waiter = self._waiting.pop(envelope.client_msg_id or "", None)
        if waiter is not None:
            waiter.callback(envelope)

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        self.received.append(m.Envelope(-1, error.client_msg_id, m.UnknownMessage(-1, b"")))

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.is_closed = True
        self.reason = reason
        for waiter in self._waiting.values():
            waiter.errback(reason)
        self._waiting.clear()
        self.closed.callback(None)

    def ask(self, message: Message, client_msg_id: str) -> Deferred[m.Envelope]:
        """Send ``message`` and get the first envelope carrying ``client_msg_id`` back."""
        waiter: Deferred[m.Envelope] = Deferred()
        self._waiting[client_msg_id] = waiter
        assert self.protocol is not None
        self.protocol.send(message, client_msg_id)
        return waiter

    def write(self, data: bytes) -> None:
        assert self.protocol is not None
        assert self.protocol.transport is not None
        self.protocol.transport.write(data)

    def close(self) -> None:
        if self.protocol is not None and not self.is_closed:
            self.protocol.close(abort=True)
