"""Connecting the ``ctrader-twisted`` command: a started client, the account, the catalogue.

:func:`connect` starts a :class:`~ctrader_twisted.client.Client` and waits until it is ready,
but, unlike a long-running service, gives up after a few failed attempts so that a command
fails fast with exit code 4 when the server is unreachable or its certificate is not trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from . import messages as m
from ._cli_config import Settings
from ._cli_errors import CliError, ExitCode
from ._cli_output import Output
from ._cli_reactor import CliReactor
from ._failure import failure_of
from ._models_symbols import SymbolCatalog
from .client import Client
from .errors import AccountAuthError
from .tls import tls_endpoint

__all__ = ["CONNECT_ATTEMPTS", "Context", "certificate_problem", "connect"]

#: Failed connection attempts after which a command gives up.
CONNECT_ATTEMPTS = 3


class _LossWatcher:
    """Stands between the TLS layer and the client's protocol to see why the connection
    ended: a failed certificate check reaches only the protocol's ``connectionLost``."""

    def __init__(self, protocol: IProtocol, lost: Callable[[Failure], None]) -> None:
        self.protocol = protocol
        self._lost = lost

    def makeConnection(self, transport: ITransport) -> None:
        self.protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost(reason)
        self.protocol.connectionLost(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.protocol, name)


@implementer(IProtocolFactory)
class _WatchingFactory:
    def __init__(self, factory: IProtocolFactory, lost: Callable[[Failure], None]) -> None:
        self._factory = factory
        self._lost = lost

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        return cast(IProtocol, _LossWatcher(protocol, self._lost))

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """Wrap an endpoint to remember why the last connection attempt failed: the connection
    could not be made, or the TLS handshake refused the server's certificate."""

    def __init__(self, endpoint: IStreamClientEndpoint, host: str) -> None:
        self._endpoint = endpoint
        self._host = host
        self.last_error: str = ""

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = self._endpoint.connect(_WatchingFactory(protocolFactory, self._lost))
        attempt.addCallbacks(_unwatched, self._record)
        return attempt

    def _record(self, failure: Failure) -> Failure:
        self.last_error = " ".join(str(failure.value).split()) or type(failure.value).__name__
        return failure

    def _lost(self, reason: Failure) -> None:
        problem = certificate_problem(reason.value, self._host) if reason.value else ""
        if problem:
            self.last_error = problem


def _unwatched(protocol: IProtocol) -> IProtocol:
    return cast(_LossWatcher, protocol).protocol


def certificate_problem(error: BaseException, host: str) -> str:
    """A sentence for a TLS handshake that failed on the server's certificate; empty for
    any other error.

    OpenSSL refuses a certificate that does not chain to a trusted CA (or has expired) during
    the handshake (``certificate verify failed``); service-identity then refuses one that does
    not name ``host``.
    """
    hint = "; pass the CA that issued the server's certificate with --ca-file"
    if isinstance(error, VerificationError):
        return f"certificate verification failed: the certificate is not valid for {host!r}"
    if isinstance(error, SSLError) and "certificate verify failed" in str(error):
        return (
            f"certificate verification failed for {host!r}: the certificate is not "
            f"signed by a trusted CA, or has expired{hint}"
        )
    return ""


@dataclass
class Context:
    """What a command works with."""

    reactor: CliReactor
    client: Client
    settings: Settings
    out: Output
    timeout: float
    catalog: SymbolCatalog = field(init=False)
    _account: int | None = None

    def __post_init__(self) -> None:
        self.catalog = SymbolCatalog(self.client, timeout=self.timeout)

    async def account(self) -> int:
        """The account to act for, authorized: ``--account`` or else the token's first."""
        if self._account is not None:
            return self._account
        self.settings.require_access_token()
        account = self.settings.account_id
        if account is None:
            accounts = await self.list_accounts()
            if not accounts:
                raise CliError("the access token grants no trading account", ExitCode.NOT_FOUND)
            account = int(accounts[0].ctidTraderAccountId)
        try:
            await self.client.authorize_account(account, self.settings.access_token)
        except AccountAuthError as error:
            if error.code == "CH_CTID_TRADER_ACCOUNT_NOT_FOUND":
                message = (
                    f"account {account} not found: the access token does not grant it "
                    "('ctrader-twisted accounts' lists those it does)"
                )
                raise CliError(message, ExitCode.NOT_FOUND) from None
            raise
        self._account = account
        return account

    async def list_accounts(self) -> list[m.ProtoOACtidTraderAccount]:
        """The accounts the access token grants."""
        self.settings.require_access_token()
        request = m.ProtoOAGetAccountListByAccessTokenReq(accessToken=self.settings.access_token)
        response = await self.client.request(request, timeout=self.timeout)
        return list(response.ctidTraderAccount)


def _where(settings: Settings) -> str:
    return f"{settings.host}:{settings.port}"


async def connect(
    reactor: CliReactor, settings: Settings, *, timeout: float, connect_timeout: float
) -> Client:
    """Start a client for ``settings`` and wait until it is ready.

    :raises CliError: exit 4 when no session could be established (after
        :data:`CONNECT_ATTEMPTS` failed attempts or ``connect_timeout`` seconds), exit 3 for
        missing credentials; ``ApplicationAuthError`` when the server refuses them.
    """
    settings.require_app_credentials()
    _check_ca_file(settings)
    endpoint = _RecordingEndpoint(_tls_endpoint(reactor, settings), settings.host)
    ready: Deferred[None] = Deferred()

    def fail() -> None:
        if not ready.called:
            reason = endpoint.last_error or "no session could be established (TLS or protocol)"
            message = f"cannot connect to {_where(settings)}: {reason}"
            ready.errback(failure_of(CliError(message, ExitCode.CONNECTION)))

    def give_up(attempt: int) -> float:
        if attempt >= CONNECT_ATTEMPTS:
            reactor.callLater(0, fail)  # not from inside the ClientService's state machine
        return min(0.25 * 2.0**attempt, 2.0)

    client = Client(
        endpoint,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        reactor=reactor,
        request_timeout=timeout,
        retry_policy=give_up,
    )
    client.startService()
    client.when_ready().addBoth(_settle, ready)
    ready.addTimeout(connect_timeout, reactor)
    try:
        await ready
    except BaseException as error:
        await client.stopService()
        if isinstance(error, DeferredTimeout):
            message = f"cannot connect to {_where(settings)} within {connect_timeout:g} s"
            raise CliError(message, ExitCode.CONNECTION) from None
        raise
    return client


def _tls_endpoint(reactor: CliReactor, settings: Settings) -> IStreamClientEndpoint:
    """:raises CliError: (usage) for a CA file that cannot be read or holds no certificate."""
    try:
        return tls_endpoint(reactor, settings.host, settings.port, ca_file=settings.ca_file)
    except OSError as error:
        raise CliError(f"cannot read CA file {settings.ca_file}: {error.strerror}") from None
    except ValueError:
        raise CliError(f"CA file {settings.ca_file} holds no PEM certificate") from None


def _check_ca_file(settings: Settings) -> None:
    if settings.ca_file is not None and not settings.ca_file.exists():
        hint = " (is the sandbox running? start it with 'ctrader-twisted sandbox')"
        extra = hint if settings.env == "sandbox" else ""
        raise CliError(f"CA file {settings.ca_file} does not exist{extra}", ExitCode.CONNECTION)


def _settle(result: Failure | None, ready: Deferred[None]) -> None:
    if not ready.called:
        ready.callback(None) if not isinstance(result, Failure) else ready.errback(result)
