"""The bench server's control channel: JSON lines over plain TCP on 127.0.0.1.

A driver asks the bench server (:mod:`bench.server`) to push a burst of spot events, to drop
every session, or for its statistics.  Each command is one JSON object on a line with an
``op`` key; each answer is one JSON object on a line, in order.

Shared with the official SDK's driver (another virtual environment, older Twisted), so only
long-standing Twisted APIs are used here and nothing from ``ctrader_twisted``.
"""

from __future__ import annotations

import json
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

__all__ = ["ControlClient", "connect_control"]

Reply = dict[str, object]


class ControlClient(LineReceiver):
    """The driver's end of the control channel."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self._waiting: deque[Deferred[Reply]] = deque()

    def command(self, op: str, **arguments: object) -> Deferred[Reply]:
        """Send one command.

        :returns: a Deferred that fires with the server's JSON answer, or fails with
            ``ConnectionError`` if the channel closes first.
        """
        waiting: Deferred[Reply] = Deferred()
        self._waiting.append(waiting)
        self.sendLine(json.dumps({"op": op, **arguments}).encode())
        return waiting

    def lineReceived(self, line: bytes) -> None:
        if self._waiting:
            self._waiting.popleft().callback(json.loads(line))

    def connectionLost(self, reason: Failure | None = None) -> None:
        while self._waiting:
            self._waiting.popleft().errback(ConnectionError("control channel closed"))

    def close(self) -> None:
        """Close the channel."""
        if self.transport is not None:
            self.transport.loseConnection()


def connect_control(reactor: IReactorTCP, port: int) -> Deferred[ControlClient]:
    """Connect to the bench server's control port on 127.0.0.1.

    :returns: a Deferred firing with the connected :class:`ControlClient`, or failing with the
        connection error.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return connectProtocol(endpoint, ControlClient())
