"""Helpers for testing code that uses ctrader-twisted, against the built-in sandbox.

Two ways to get a :class:`~ctrader_twisted.Client` talking to a sandbox:

* :class:`MemorySandbox`: no sockets and no real time.  The client and the sandbox exchange
  bytes through :mod:`twisted.test.iosim` and share one :class:`~twisted.internet.task.Clock`;
  call :meth:`MemorySandbox.flush` to move bytes and :meth:`MemorySandbox.advance` to move
  time.  Use it from :class:`twisted.trial.unittest.SynchronousTestCase`::

      sandbox = MemorySandbox(SandboxConfig(seed=3))
      client = sandbox.client()
      client.startService()
      sandbox.result(client.when_ready())
      version = sandbox.result(client.request(m.ProtoOAVersionReq()))

* :func:`tls_client`: a client for a sandbox served by
  :func:`~ctrader_twisted.sandbox.start_sandbox` over real loopback TLS, verified against the
  sandbox's own CA (for :class:`twisted.trial.unittest.TestCase` with the real reactor).

For your own TLS test servers, :func:`server_tls_options` turns PEM text (a key and its
certificate chain, e.g. from ``trustme``) into server options without pyOpenSSL's deprecated
``PKey``/``X509`` objects.
"""

from __future__ import annotations

from typing import Final, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from .client import Client
from .sandbox import RunningSandbox, SandboxConfig, SandboxFactory
from .sandbox.certs import server_tls_options
from .tls import tls_endpoint

__all__ = ["DEFAULT_START", "MemoryEndpoint", "MemorySandbox", "server_tls_options", "tls_client"]

#: Default start time of a :class:`MemorySandbox` clock: Tuesday 2023-11-14 22:13:20 UTC,
#: when every sandbox market is open.
DEFAULT_START: Final = 1_700_000_000.0

_T = TypeVar("_T")


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """A client endpoint whose every connection is an in-memory pipe to ``factory``.

    :ivar pumps: one :class:`twisted.test.iosim.IOPump` per connection made so far.
    """

    def __init__(self, factory: SandboxFactory, clock: Clock) -> None:
        self.factory = factory
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []
        #: When true, connection attempts fail (to test reconnecting clients).
        self.refuse = False

    def connect(self, client_factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``client_factory`` to the sandbox.

        :returns: a Deferred that has already fired with the client protocol, or failed with
            :class:`twisted.internet.error.ConnectionRefusedError` while :attr:`refuse` is set.
        """
        if self.refuse:
            return fail(ConnectionRefusedError("refused by the test"))  # type: ignore[no-untyped-call]
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5035))
        if client is None:
            raise RuntimeError("the client factory built no protocol")
        server = self.factory.buildProtocol(None)
        pump = iosim.connect(  # type: ignore[no-untyped-call]
            server,
            iosim.FakeTransport(server, isServer=True),  # type: ignore[no-untyped-call]
            client,
            iosim.FakeTransport(client, isServer=False),  # type: ignore[no-untyped-call]
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)


class MemorySandbox:
    """A sandbox and the clock and pipes that connect clients to it, all in memory.

    :param config: the sandbox's configuration.
    :param start: Unix time the shared clock starts at (prices depend on it).
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, start: float = DEFAULT_START
    ) -> None:
        self.config = config or SandboxConfig()
        self.clock = Clock()
        self.clock.advance(start)
        self.factory = SandboxFactory(self.config, self.clock)
        self.endpoint = MemoryEndpoint(self.factory, self.clock)

    def client(self, **options: float) -> Client:
        """A new, not yet started :class:`~ctrader_twisted.Client` for this sandbox, with the
        sandbox's credentials, on the shared clock; ``options`` go to the client."""
        return Client(
            self.endpoint,
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            reactor=self.clock,
            **options,  # type: ignore[arg-type]
        )

    def flush(self) -> None:
        """Move bytes both ways on every connection until all are quiet (bounded)."""
        for _ in range(100):
            moved = False
            self.clock.advance(0)  # history work waiting for its next slice runs now
            for pump in list(self.endpoint.pumps):
                moved = bool(pump.flush()) or moved  # type: ignore[no-untyped-call]
            if not moved:
                self.endpoint.pumps = [p for p in self.endpoint.pumps if not _closed(p)]
                return
        raise AssertionError("connections did not become quiet")

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the clock forward by ``seconds`` in ``step`` increments, flushing each time."""
        remaining = seconds
        self.flush()
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            self.flush()

    def result(self, deferred: Deferred[_T], within: float = 30.0) -> _T:
        """Flush (and advance the clock by up to ``within`` seconds) until ``deferred`` fires.

        :returns: its result.
        :raises AssertionError: if it has not fired by then.
        :raises Exception: the failure's exception if it failed.
        """
        box: list[_T] = []
        errors: list[Failure] = []
        deferred.addCallbacks(box.append, errors.append)
        self.flush()
        waited = 0.0
        while not box and not errors and waited < within:
            self.clock.advance(0.05)
            waited += 0.05
            self.flush()
        if errors:
            errors[0].raiseException()
        if not box:
            raise AssertionError(f"no result after {within} s of sandbox time")
        return box[0]

    def drop_all(self) -> None:
        """Drop every connection (the sandbox's fault) and let the clients notice."""
        self.factory.drop_all()
        self.flush()


def _closed(pump: iosim.IOPump) -> bool:
    return bool(pump.clientIO.disconnected and pump.serverIO.disconnected)


def tls_client(running: RunningSandbox, reactor: IReactorTCP, **options: float) -> Client:
    """A new, not yet started client for ``running``, over verified loopback TLS.

    :param reactor: the reactor the sandbox runs on (also the client's clock).
    """
    endpoint = tls_endpoint(reactor, running.host, running.port, ca_file=running.ca_file)
    config = running.factory.config
    clock: IReactorTime = reactor  # type: ignore[assignment]
    return Client(
        endpoint,
        client_id=config.client_id,
        client_secret=config.client_secret,
        reactor=clock,
        **options,  # type: ignore[arg-type]
    )
