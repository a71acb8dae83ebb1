"""The sandbox server: :class:`SandboxFactory` (no sockets needed) and :func:`start_sandbox`
(TLS on a loopback port)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, cast

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from .. import messages as m
from ..protocol import OpenApiProtocol
from . import auth, history, live, orders, queries, reference, trading
from .accounts import Broker
from .certs import SandboxCertificates, ensure_certificates, server_tls_options
from .config import SandboxConfig, default_state_dir
from .live import MarketFeed
from .market import PriceWalk
from .session import Handler, SandboxProtocol, Session
from .work import WorkQueue

__all__ = ["RunningSandbox", "SandboxFactory", "SandboxStats", "start_sandbox"]


def _handler_table() -> Mapping[int, Handler]:
    table: dict[int, Handler] = {}
    for module in (auth, reference, live, history, orders, queries):
        for cls, handler in module.HANDLERS.items():
            table[m.payload_type_of(cls)] = handler
    return MappingProxyType(table)


_HANDLERS: Final = _handler_table()


@dataclass(slots=True)
class SandboxStats:
    """Counters of a running sandbox (read them in tests and benchmarks).

    :ivar requests_by_payload_type: every inbound non-heartbeat frame, by payload type.
    :ivar market_events_dropped: spot and depth events not sent because the client was not
        reading (its transport was paused).
    :ivar slow_readers_aborted: connections aborted for not reading (``slow_reader_timeout``
        or ``slow_reader_backlog``).
    :ivar close_timeouts: connections aborted because closing them took ``close_timeout``.
    :ivar connections_refused: connections refused with ``CONNECTIONS_LIMIT_EXCEEDED``
        (``max_connections`` were open).
    :ivar app_auth_timeouts: connections closed because their application was not
        authorized within ``app_auth_timeout``.
    :ivar work_refused: history requests refused because the connection already had
        ``max_pending_work`` in progress.
    """

    connections_total: int = 0
    connections_open: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    spot_events_sent: int = 0
    executions_sent: int = 0
    rate_limited: int = 0
    market_events_dropped: int = 0
    slow_readers_aborted: int = 0
    close_timeouts: int = 0
    connections_refused: int = 0
    app_auth_timeouts: int = 0
    work_refused: int = 0
    requests_by_payload_type: dict[int, int] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)


class SandboxFactory(ServerFactory):
    """Builds one :class:`~ctrader_twisted.protocol.OpenApiProtocol` + :class:`Session` per
    connection; holds the state all connections share (accounts, tokens, market feed).

    Wire it to any transport: a listening port, ``twisted.test.iosim``, or a
    ``StringTransport``.

    :param config: the sandbox's behaviour.
    :param clock: drives every timer (heartbeats, idle checks, ticks, faults) and the time of
        the price walk (``clock.seconds()`` is taken as Unix time).
    """

    _log = Logger()

    def __init__(self, config: SandboxConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.stats = SandboxStats()
        #: Live sessions, oldest first.
        self.sessions: list[Session] = []
        self.walk = PriceWalk(config.seed, config.tick_ms, always_open=config.always_open)
        self.tokens = auth.TokenStore(config)
        self.broker = Broker(self.walk, self.now_ms)
        self.feed = MarketFeed(self)
        self.engine = trading.OrderEngine(self)
        #: Runs history requests in slices, round robin between connections.
        self.work = WorkQueue(clock, config.work_slice_minutes)
        self._peers: dict[Session, str] = {}

    def __repr__(self) -> str:
        return f"<SandboxFactory seed={self.config.seed} sessions={len(self.sessions)}>"

    def now_ms(self) -> int:
        """The sandbox's current time in Unix milliseconds."""
        return int(self.clock.seconds() * 1000)

    def buildProtocol(self, addr: IAddress | None) -> OpenApiProtocol:
        session = Session(self, dict(_HANDLERS))
        # Until the application is authorized, only small frames (see pre_auth_max_frame).
        limit = min(self.config.max_frame, self.config.pre_auth_max_frame)
        protocol = SandboxProtocol(session, self.clock, max_length=limit)
        protocol.factory = self
        return protocol

    # Session bookkeeping

    def session_opened(self, session: Session) -> None:
        self.sessions.append(session)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.feed.start()
        peer = self._peers[session] = _peer(session)
        self._log.info(
            "connection from {peer} opened ({open} open)",
            peer=peer,
            open=self.stats.connections_open,
        )

    def session_closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            self.stats.connections_open -= 1
            self._log.info(
                "connection from {peer} closed ({frames} frames received{note}; {open} open)",
                peer=self._peers.pop(session, "?"),
                frames=session.received,
                note=_close_note(session),
                open=self.stats.connections_open,
            )
        self.feed.remove(session)
        self.work.cancel(session)
        if not self.sessions:
            self.feed.stop()

    def end_account_session(self, session: Session, account_id: int) -> None:
        """Forget ``account_id`` on ``session`` (logout or invalidated token)."""
        session.accounts.pop(account_id, None)
        self.feed.remove(session, account_id)

    def invalidate_token(self, access_token: str, reason: str) -> None:
        """End every account session authorized with ``access_token`` and tell its client."""
        for session in list(self.sessions):
            ids = [a for a, token in session.accounts.items() if token == access_token]
            for account_id in ids:
                self.end_account_session(session, account_id)
            if ids:
                event = m.ProtoOAAccountsTokenInvalidatedEvent(
                    ctidTraderAccountIds=ids, reason=reason
                )
                session.reply(event, None)

    def to_account(
        self, account_id: int, message: Message, origin: Session | None, cmid: str | None
    ) -> None:
        """Send ``message`` to every session where ``account_id`` is authorized; ``origin``
        (the requester) gets it with ``cmid``, as an answer."""
        for session in self.sessions:
            if account_id not in session.accounts:
                continue
            if session is origin:
                session.reply(message, cmid)
            else:
                session.push(message)

    # Faults

    def drop_all(self) -> None:
        """Abort every open connection at once."""
        for session in list(self.sessions):
            session.drop()

    def stall_all(self) -> None:
        """Stall every open connection: no more reads or writes, and no FIN."""
        for session in list(self.sessions):
            session.stall()


def _peer(session: Session) -> str:
    """``host:port`` of the session's client, for the log."""
    transport = session.protocol.transport if session.protocol is not None else None
    if transport is None:
        return "?"
    address = transport.getPeer()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None and port is not None else str(address)


def _close_note(session: Session) -> str:
    """Why a connection may have ended, for the log: broken framing or no application auth."""
    reason = session.protocol.close_reason if session.protocol is not None else None
    if reason is not None:
        return f", {reason}"
    if session.refused:
        return ", refused: connection limit reached"
    if session.auth_expired:
        return ", application not authorized in time"
    refused = session.received and not session.app_authorized
    return ", application not authorized" if refused else ""


@dataclass
class RunningSandbox:
    """A sandbox listening with TLS on a loopback port.

    :ivar host: the name its certificate is valid for (``"localhost"``).
    :ivar ca_file: PEM file of the CA that signed the server certificate.
    """

    host: str
    port: int
    ca_file: Path
    factory: SandboxFactory
    listening: IListeningPort
    interface: str = "127.0.0.1"

    def endpoint(self, reactor: IReactorTCP) -> IStreamClientEndpoint:
        """A client endpoint to this sandbox that verifies its certificate and host name."""
        trust = Certificate.loadPEM(self.ca_file.read_bytes())
        tcp = TCP4ClientEndpoint(reactor, self.interface, self.port)
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust), tcp)

    def stop(self) -> Deferred[None]:
        """Stop listening and abort every connection.

        :returns: a Deferred that fires with ``None`` once the port is closed.
        """
        self.factory.drop_all()
        self.factory.feed.stop()
        result = self.listening.stopListening()
        if isinstance(result, Deferred):
            return result.addCallback(lambda _: None)
        return Deferred.fromCoroutine(_done())


async def _done() -> None:
    return None


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    """TLS over a TCP server endpoint, each write encrypted and handed to TCP at once.

    Twisted's own TLS server transport collects small writes until the next reactor turn
    (one delayed call per connection that wrote); the sandbox already writes a tick's frames
    to a connection in one write, so with thousands of subscribers that only added a timer
    per connection per tick.
    """

    def __init__(self, tcp: IStreamServerEndpoint, options: CertificateOptions) -> None:
        self._tcp = tcp
        self._options = options

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        tls = TLSMemoryBIOFactory(self._options, False, factory)
        tls.protocol = TLSMemoryBIOProtocol
        result: Deferred[IListeningPort] = self._tcp.listen(tls)
        return result


def tls_server_endpoint(
    reactor: IReactorTCP, port: int, options: CertificateOptions, interface: str
) -> IStreamServerEndpoint:
    """A TLS server endpoint on ``interface:port`` for a sandbox (see
    :class:`_TLSServerEndpoint`)."""
    tcp = TCP4ServerEndpoint(reactor, port, interface=interface)  # type: ignore[no-untyped-call]
    return _TLSServerEndpoint(tcp, options)


def start_sandbox(
    reactor: IReactorSSL,
    config: SandboxConfig | None = None,
    *,
    port: int = 0,
    interface: str = "127.0.0.1",
    state_dir: Path | str | None = None,
) -> Deferred[RunningSandbox]:
    """Serve a sandbox with TLS on ``interface:port`` (port 0 picks a free port).

    The CA and server certificate are generated into ``state_dir`` (default:
    :func:`~ctrader_twisted.sandbox.config.default_state_dir`) on first use.

    :param reactor: an SSL-capable reactor that is also the sandbox's clock.
    :returns: a Deferred that fires with a :class:`RunningSandbox` once listening, or fails
        with :class:`twisted.internet.error.CannotListenError` if the port is taken.
    """
    config = config or SandboxConfig()
    directory = Path(state_dir) if state_dir is not None else default_state_dir()
    return Deferred.fromCoroutine(_start(reactor, config, port, interface, directory))


def _load_certificates(directory: Path) -> tuple[SandboxCertificates, CertificateOptions]:
    certs = ensure_certificates(directory)
    return certs, server_tls_options(certs.server_file.read_bytes())


async def _start(
    reactor: IReactorSSL, config: SandboxConfig, port: int, interface: str, directory: Path
) -> RunningSandbox:
    # Key generation and file I/O stay off the reactor thread when the reactor has threads.
    if IReactorThreads.providedBy(reactor):
        threads = cast(IReactorThreads, reactor)
        certs, options = await deferToThreadPool(
            reactor,
            threads.getThreadPool(),
            _load_certificates,
            directory,
        )
    else:
        certs, options = _load_certificates(directory)
    factory = SandboxFactory(config, reactor)  # type: ignore[arg-type]
    endpoint = tls_server_endpoint(cast(IReactorTCP, reactor), port, options, interface)
    listening: IListeningPort = await endpoint.listen(factory)
    bound = listening.getHost().port  # type: ignore[attr-defined]
    return RunningSandbox("localhost", bound, certs.ca_file, factory, listening, interface)
