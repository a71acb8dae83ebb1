"""A small scripted Open API server for the client's tests, built on OpenApiProtocol.

:class:`FakeServer` answers the common requests like the real server would (app auth, account
auth, version, subscriptions, token refresh, orders) and records every frame it receives.
Tests override answers per request type with :attr:`FakeServer.handlers`, or hold them back with
:attr:`FakeServer.silent`.  :class:`MemoryEndpoint` connects a client to it in memory through
``twisted.test.iosim`` (call :meth:`MemoryEndpoint.flush` to move bytes); the same server can also
listen on a real TLS port (see ``tests/test_client_tls.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.test import iosim

from ctrader_twisted import messages as m
from ctrader_twisted.errors import MalformedMessage
from ctrader_twisted.protocol import OpenApiProtocol

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-value"
TOKEN = "access-token-1"
ACCOUNTS = (1001, 1002)

Handler = Callable[["FakeConnection", "str | None", Any], None]


class FakeConnection:
    """The server side of one connection."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.protocol: OpenApiProtocol | None = None
        self.app_authorized = False
        self.accounts: set[int] = set()
        self.lost: Failure | None = None

    # MessageHandler

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.protocol = protocol
        self.server.connections.append(self)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        message = envelope.message
        self.server.received.append((envelope.client_msg_id, message))
        if isinstance(message, (m.UnknownMessage, m.ProtoHeartbeatEvent)):
            return
        if type(message) in self.server.silent:
            return
        handler = self.server.handlers.get(type(message), _default)
        handler(self, envelope.client_msg_id, message)

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        pass

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.lost = reason

    # Helpers for tests

    def send(self, message: Message, client_msg_id: str | None = None) -> None:
        assert self.protocol is not None
        self.protocol.send(message, client_msg_id)

    def error(self, client_msg_id: str | None, code: str, **fields: Any) -> None:
        self.send(m.ProtoOAErrorRes(errorCode=code, **fields), client_msg_id)

    def drop(self) -> None:
        """Close the connection from the server side."""
        assert self.protocol is not None
        assert self.protocol.transport is not None
        self.protocol.transport.loseConnection()


def _default(conn: FakeConnection, cid: str | None, message: Any) -> None:
    server = conn.server
    if isinstance(message, m.ProtoOAApplicationAuthReq):
        if (message.clientId, message.clientSecret) != (server.client_id, server.client_secret):
            conn.error(cid, "CH_CLIENT_AUTH_FAILURE", description="clientId or secret is wrong")
            conn.drop()
            return
        conn.app_authorized = True
        conn.send(m.ProtoOAApplicationAuthRes(), cid)
    elif not conn.app_authorized:
        conn.error(cid, "CH_CLIENT_NOT_AUTHENTICATED")
    elif isinstance(message, m.ProtoOAAccountAuthReq):
        account = message.ctidTraderAccountId
        if server.tokens.get(message.accessToken) is None or account not in server.tokens.get(
            message.accessToken, ()
        ):
            conn.error(cid, "CH_ACCESS_TOKEN_INVALID", ctidTraderAccountId=account)
            return
        conn.accounts.add(account)
        conn.send(m.ProtoOAAccountAuthRes(ctidTraderAccountId=account), cid)
    elif isinstance(message, m.ProtoOARefreshTokenReq):
        conn.send(
            m.ProtoOARefreshTokenRes(
                accessToken=server.new_token,
                tokenType="bearer",
                expiresIn=2628000,
                refreshToken="refresh-2",
            ),
            cid,
        )
    elif isinstance(message, tuple(m.TRADING_REQUESTS)):
        conn.send(
            m.ProtoOAExecutionEvent(
                ctidTraderAccountId=message.ctidTraderAccountId,
                executionType=m.ProtoOAExecutionType.ORDER_ACCEPTED,
            ),
            cid,
        )
    else:
        answer = m.response_type(message)()
        if "ctidTraderAccountId" in answer.DESCRIPTOR.fields_by_name:
            answer.ctidTraderAccountId = message.ctidTraderAccountId
        if isinstance(answer, m.ProtoOAVersionRes):
            answer.version = "91"
        if answer.IsInitialized():
            conn.send(answer, cid)


class FakeServer:
    """Scripted server state shared by all its connections.

    :ivar received: every (clientMsgId, message) received, in order, over all connections.
    :ivar handlers: per request class, ``handler(connection, client_msg_id, message)``
        replacing the default answer.
    :ivar silent: request classes that get no answer at all.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.client_id = CLIENT_ID
        self.client_secret = CLIENT_SECRET
        self.tokens: dict[str, tuple[int, ...]] = {TOKEN: ACCOUNTS, "access-token-2": ACCOUNTS}
        self.new_token = "access-token-2"
        self.received: list[tuple[str | None, Any]] = []
        self.handlers: dict[type[Message], Handler] = {}
        self.silent: set[type[Message]] = set()
        self.connections: list[FakeConnection] = []

    def build(self) -> OpenApiProtocol:
        return OpenApiProtocol(FakeConnection(self), self.clock)

    def factory(self) -> Factory:
        return Factory.forProtocol(self.build)

    @property
    def current(self) -> FakeConnection:
        return self.connections[-1]

    def names(self) -> list[str]:
        """Names of the received messages, heartbeats left out."""
        return [
            type(msg).__name__
            for _, msg in self.received
            if not isinstance(msg, m.ProtoHeartbeatEvent)
        ]

    def clear(self) -> None:
        del self.received[:]


def memory_link(client: Any, server: Any) -> iosim.IOPump:
    """Connect two protocols through iosim (no greeting); pump the result to move bytes."""
    return iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
        greet=False,
    )


class MemoryEndpoint:
    """An IStreamClientEndpoint that connects to a :class:`FakeServer` through iosim."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.pumps: list[iosim.IOPump] = []
        self.refuse = 0
        self.attempts = 0
        self.hang = False
        self.hanging: list[Deferred[Any]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError("refused by the test"))
        if self.hang:
            waiting: Deferred[Any] = Deferred()
            self.hanging.append(waiting)
            return waiting
        client = factory.buildProtocol(None)
        self.pumps.append(memory_link(client, self.server.build()))
        return succeed(client)

    def flush(self) -> None:
        """Move bytes both ways until nothing is left to move (bounded by iosim)."""
        for _ in range(100):
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            if not moved:
                return
        raise AssertionError("traffic did not settle")
