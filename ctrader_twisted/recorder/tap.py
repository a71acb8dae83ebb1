"""``twistd ctrader-record``: the recorder as a twistd plugin (``Options`` + ``makeService``).

``ctrader-twisted record`` takes exactly these options too (:func:`record_main`).

Environments:

- ``sandbox`` (default): with ``--port``, connect to a sandbox already listening on
  127.0.0.1 (``--ca-file`` names its CA); without it, run an embedded sandbox in the same
  process.  Sandbox credentials are built in.
- ``demo`` / ``live``: connect to Spotware's servers with the application's credentials
  (``$CTRADER_CLIENT_ID`` / ``$CTRADER_CLIENT_SECRET``) and the OAuth token stored by
  ``ctrader-twisted auth``; the token is refreshed on the socket ahead of expiry (at once when
  it has expired already), the account is authorized again with each new token, and the new
  token is saved to the same file.

A permanent start-up error (see :mod:`ctrader_twisted.recorder._fatal`) stops the process:
``ctrader-twisted record`` prints one ``error:`` line on stderr and exits with the CLI's exit
status for it; ``twistd ctrader-record`` logs it at critical level, stops the reactor, and the
process exits with the same status.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorCore,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from ctrader_twisted._cli_config import resolve_settings
from ctrader_twisted._cli_errors import CliError, ExitCode
from ctrader_twisted._cli_validate import INT64_MAX, MAX_SECONDS, Rule
from ctrader_twisted._oauth_refresh import TokenRefresher, socket_refresh
from ctrader_twisted.client import DEMO_HOST, LIVE_HOST, PORT, Client, tls_endpoint
from ctrader_twisted.recorder._fatal import exit_status
from ctrader_twisted.recorder._rows import period_from_name
from ctrader_twisted.recorder.service import Recorder, RecorderConfig
from ctrader_twisted.recorder.storage import (
    MarketStore,
    StorageError,
    check_postgres,
    open_postgres,
    open_sqlite,
)
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SANDBOX_ACCOUNTS,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from ctrader_twisted.tokens import TokenFileError, TokenStore, default_token_path

__all__ = ["Options", "StartError", "build_service", "makeService", "record_main", "stop_on_fatal"]

_ENVIRONMENTS = ("sandbox", "demo", "live")
#: The most ``--history`` accepts: ten years of minutes.
_MAX_HISTORY: Final = 10 * 366 * 1440


class Options(usage.Options):
    """Command-line options of ``twistd ctrader-record`` and ``ctrader-twisted record``."""

    synopsis = "[options]"
    longdesc = "Record spots, closed trendbars and optionally depth into SQLite or PostgreSQL."
    optParameters = [
        ["environment", "e", "sandbox", "sandbox, demo or live"],
        ["account", "a", None, "ctidTraderAccountId (sandbox default: its first account)"],
        ["symbols", "s", "EURUSD", "comma-separated symbol names or ids"],
        ["periods", "p", "M1", "comma-separated trendbar periods (M1, M5, H1, ...)"],
        ["database", "d", "ctrader-market.sqlite3", "SQLite database file"],
        ["postgres", None, None, "PostgreSQL connection string (needs psycopg); replaces -d"],
        ["token-file", None, None, "OAuth token file for demo/live (default: the auth one)"],
        ["history", None, "60", "minutes of history to fetch into an empty database"],
        ["status-interval", None, "60", "seconds between status lines in the log"],
        ["stop-timeout", None, "30", "seconds a stop waits for the database before giving up"],
        ["host", None, None, "server host (default: per environment; sandbox: localhost)"],
        ["port", None, None, "server port (sandbox: connect to a running sandbox)"],
        ["ca-file", None, None, "PEM CA to trust (for a local sandbox)"],
        ["sandbox-tick-interval", None, "1.0", "embedded sandbox: seconds between ticks"],
        ["sandbox-state-dir", None, None, "embedded sandbox: where its TLS certificates live"],
    ]
    optFlags = [["depth", None, "also record depth of market"]]

    def opt_env(self, value: str) -> None:
        """the same as --environment (sandbox, demo or live)"""
        self["environment"] = value

    def postOptions(self) -> None:
        """Check and convert every value (numbers finite and in range).

        :raises usage.UsageError: for a bad value.  Run by ``twistd`` (the options then have a
            parent), the error is instead one ``ctrader-record: error: ...`` line on stderr and
            exit status 2, as for ``ctrader-twisted record``.
        """
        try:
            self._check()
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(f"ctrader-record: error: {error}\n")
            sys.stderr.flush()
            raise SystemExit(int(ExitCode.USAGE)) from None

    def _check(self) -> None:
        if self["environment"] not in _ENVIRONMENTS:
            raise usage.UsageError(f"--env must be one of {', '.join(_ENVIRONMENTS)}")
        try:
            self["periods"] = tuple(period_from_name(p) for p in _split(self["periods"]))
        except ValueError as error:
            raise usage.UsageError(f"--periods: {error}") from None
        for name, rule in _NUMBERS.items():
            if self[name] is not None:
                self[name] = _number(name, rule, self[name])
        if self["ca-file"] is not None:
            self["ca-file"] = str(Path(self["ca-file"]).expanduser())
            if not Path(self["ca-file"]).is_file():
                raise usage.UsageError(f"--ca-file {self['ca-file']} is not a file")
        self["symbols"] = tuple(_split(self["symbols"]))
        if not self["symbols"]:
            raise usage.UsageError("--symbols must name at least one symbol")
        if self["environment"] != "sandbox" and self["account"] is None:
            raise usage.UsageError("--account is required for demo and live")
        if self["postgres"]:
            try:
                check_postgres(self["postgres"])
            except StorageError as error:
                raise usage.UsageError(f"--postgres: {error}") from None


#: The numeric options, their ranges and whether they are whole numbers.
_NUMBERS: Final[dict[str, tuple[Rule, bool]]] = {
    "history": (Rule("--history", 0, _MAX_HISTORY, low_included=True, unit="minutes"), False),
    "status-interval": (Rule("--status-interval", 0, MAX_SECONDS, True, "seconds"), False),
    "stop-timeout": (Rule("--stop-timeout", 0, MAX_SECONDS, True, "seconds"), False),
    "sandbox-tick-interval": (Rule("--sandbox-tick-interval", 0, 60, unit="seconds"), False),
    "port": (Rule("--port", 1, 65_535, low_included=True), True),
    "account": (Rule("--account", 1, INT64_MAX, low_included=True), True),
}


def _number(name: str, rule: tuple[Rule, bool], text: str) -> float | int:
    """``text`` as a number in ``rule``'s range (a whole number when it says so)."""
    limits, whole = rule
    try:
        value: float | int = int(text) if whole else float(text)
    except (TypeError, ValueError):
        kind = "a whole number" if whole else "a number"
        raise usage.UsageError(f"--{name} must be {kind}, not {text!r}") from None
    try:
        limits.check(value)
    except CliError as error:
        raise usage.UsageError(str(error)) from None
    return value


class StartError(usage.UsageError):
    """The recorder cannot be built: missing credentials, no token, an unreadable token file.

    :ivar code: the exit status (``docs/cli.md``): 3 for missing credentials or token, 2 for an
        unreadable token file.
    """

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class _EmbeddedSandbox(Service):
    """Runs a sandbox inside the recorder process (``--environment sandbox`` without --port)."""

    def __init__(
        self, reactor: IReactorSSL, config: SandboxConfig, state_dir: str | None = None
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._state_dir = state_dir
        self._running: RunningSandbox | None = None
        self._waiters: list[Deferred[RunningSandbox]] = []

    def when_running(self) -> Deferred[RunningSandbox]:
        """A fresh Deferred that fires with the running sandbox."""
        d: Deferred[RunningSandbox] = Deferred()
        if self._running is not None:
            d.callback(self._running)
        else:
            self._waiters.append(d)
        return d

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]

        def up(running: RunningSandbox) -> None:
            self._running = running
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(running)

        start_sandbox(self._reactor, self._config, state_dir=self._state_dir).addCallback(up)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        running, self._running = self._running, None
        return running.stop() if running is not None else None


class _StopInOrder(MultiService):
    """Stops its children one after the other, the last started first.

    ``MultiService`` stops them all at once: the embedded sandbox would then close its
    listener and abort the client's connection while the client was still closing it (a
    "non-clean" connection loss in the log), and the client would stop under a recorder still
    flushing.  Here the recorder stops (and flushes) first, then the client closes its
    connection cleanly, then the sandbox stops.
    """

    _log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self._log.failure("Stopping {service!r} failed", service=child)


@implementer(IStreamClientEndpoint)
class _WarningEndpoint:
    """Logs every failed connection attempt as a warning (the client retries it)."""

    _log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, where: str) -> None:
        self._endpoint = endpoint
        self._where = where
        self.failures = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self.failures += 1
            self._log.warn(
                "Cannot connect to {where} ({error}); failed attempt {attempt}, retrying",
                where=self._where,
                error=failure.getErrorMessage(),
                attempt=self.failures,
            )
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


@implementer(IStreamClientEndpoint)
class _EmbeddedSandboxEndpoint:
    """Connects to the embedded sandbox once it listens."""

    def __init__(self, reactor: IReactorTCP, sandbox: _EmbeddedSandbox) -> None:
        self._reactor = reactor
        self._sandbox = sandbox

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        async def connect() -> IProtocol:
            running = await self._sandbox.when_running()
            return await running.endpoint(self._reactor).connect(factory)

        return Deferred.fromCoroutine(connect())


def makeService(options: Options) -> IService:
    """Build the (unstarted) recorder service from parsed options, for ``twistd``.

    A :class:`StartError` is printed as one line on stderr and ends the process with its exit
    status.  A permanent error at start-up stops the reactor, and the process then exits
    with that error's status (twistd alone would exit with 0).
    """
    from twisted.internet import reactor as global_reactor

    try:
        service = build_service(options, cast(IReactorSSL, global_reactor))
    except StartError as error:
        sys.stderr.write(f"ctrader-record: error: {error}\n")
        raise SystemExit(int(error.code)) from None
    stop_on_fatal(service, cast(IReactorCore, global_reactor), _exit_status_at_exit)
    return service


def _exit_status_at_exit(code: ExitCode, message: str) -> None:
    """Make the process exit with ``code`` once twistd is done (the recorder logged why)."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))

    atexit.register(leave)


def stop_on_fatal(
    service: MultiService, reactor: IReactorCore, report: Callable[[ExitCode, str], object]
) -> None:
    """When the recorder's start fails for good, ``report(status, message)`` and stop.

    :param service: a service made by :func:`build_service`.
    :param reactor: the reactor to stop.
    :param report: receives the exit status and the one-line message.
    """

    def fatal(error: BaseException) -> None:
        code, message = exit_status(error)
        report(code, message)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    recorder_of(service).on_fatal(fatal)


def recorder_of(service: MultiService) -> Recorder:
    """The :class:`Recorder` in a service made by :func:`build_service`."""
    return next(child for child in service if isinstance(child, Recorder))


def build_service(options: Options, reactor: IReactorSSL) -> MultiService:
    """Build the recorder service on ``reactor`` (used by :func:`makeService` and tests).

    :raises StartError: missing credentials or token for demo/live, or an unreadable token
        file.
    """
    top = _StopInOrder()  # type: ignore[no-untyped-call]
    clock = cast(IReactorTime, reactor)
    tcp = cast(IReactorTCP, reactor)
    if options["environment"] == "sandbox":
        client = _sandbox_client(options, reactor, top)
        account = options["account"] or min(SANDBOX_ACCOUNTS)
        access_token = DEFAULT_ACCESS_TOKEN
        refresher = None
    else:
        client_id = os.environ.get("CTRADER_CLIENT_ID", "")
        secret = os.environ.get("CTRADER_CLIENT_SECRET", "")
        if not client_id or not secret:
            raise StartError("set CTRADER_CLIENT_ID and CTRADER_CLIENT_SECRET", ExitCode.AUTH)
        store = TokenStore(
            options["token-file"] or default_token_path(), cast(IReactorThreads, reactor)
        )
        try:
            token = store.read()  # a small file, read once before the reactor runs
        except TokenFileError as error:
            raise StartError(str(error), ExitCode.USAGE) from None
        if token is None:
            message = f"no token in {store.path}; run 'ctrader-twisted auth' first"
            raise StartError(message, ExitCode.AUTH)
        host = options["host"] or (DEMO_HOST if options["environment"] == "demo" else LIVE_HOST)
        port = options["port"] or PORT
        endpoint = _tls(tcp, host, port, options["ca-file"], implied=False)
        logged = _WarningEndpoint(endpoint, f"{host}:{port}")
        client = Client(logged, client_id=client_id, client_secret=secret, reactor=clock)
        _adopt(top, client)
        refresher = TokenRefresher(clock, socket_refresh(client, clock), token, store=store)
        _adopt(top, refresher)
        account, access_token = options["account"], token.access_token
    config = RecorderConfig(
        account_id=account,
        access_token=access_token,
        symbols=options["symbols"],
        periods=options["periods"],
        depth=bool(options["depth"]),
        history_minutes=int(options["history"]),
        status_interval=options["status-interval"],
        stop_timeout=options["stop-timeout"],
    )
    recorder = Recorder(client, _store_opener(options, reactor), config, clock, refresher=refresher)
    _adopt(top, recorder)
    return top


def _sandbox_client(options: Options, reactor: IReactorSSL, top: MultiService) -> Client:
    tcp = cast(IReactorTCP, reactor)
    endpoint: IStreamClientEndpoint
    if options["port"] is not None:
        # A running sandbox: its CA is found as the other commands find it (--ca-file, the
        # config file's [sandbox] section, then the sandbox's state folder).
        try:
            target = resolve_settings(
                env="sandbox",
                host=options["host"],
                port=options["port"],
                ca_file=options["ca-file"],
            )
        except CliError as error:
            raise StartError(str(error), error.code) from None
        implied = options["ca-file"] is None
        plain = _tls(tcp, target.host, target.port, target.ca_file, implied=implied)
        endpoint = _WarningEndpoint(plain, f"{target.host}:{target.port}")
    else:
        config = SandboxConfig(tick_interval=options["sandbox-tick-interval"])
        sandbox = _EmbeddedSandbox(reactor, config, options["sandbox-state-dir"])
        _adopt(top, sandbox)
        endpoint = _EmbeddedSandboxEndpoint(tcp, sandbox)
    client = Client(
        endpoint,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        reactor=cast(IReactorTime, reactor),
    )
    _adopt(top, client)
    return client


def _tls(
    tcp: IReactorTCP, host: str, port: int, ca_file: str | Path | None, *, implied: bool
) -> IStreamClientEndpoint:
    """A TLS endpoint; an unusable CA file is a :class:`StartError`.

    :param implied: ``ca_file`` was not given with ``--ca-file`` but found (the running
        sandbox's own): when it is missing, the sandbox has probably never been started.
    """
    try:
        return tls_endpoint(tcp, host, port, ca_file=ca_file)
    except (OSError, ValueError) as error:
        if implied and isinstance(error, FileNotFoundError):
            hint = "is the sandbox running? start it with 'ctrader-twisted sandbox'"
            message = f"CA file {ca_file} does not exist ({hint})"
            raise StartError(message, ExitCode.CONNECTION) from None
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StartError(f"cannot use the CA file {ca_file}: {reason}", ExitCode.USAGE) from None


def _adopt(parent: MultiService, child: IService) -> None:
    child.setServiceParent(parent)  # type: ignore[no-untyped-call]


def _store_opener(options: Options, reactor: IReactorSSL) -> Callable[[], Deferred[MarketStore]]:
    core = cast(IReactorCore, reactor)
    if options["postgres"]:
        dsn = options["postgres"]
        return lambda: open_postgres(core, dsn)
    path = Path(options["database"]).expanduser()
    return lambda: open_sqlite(core, path)


def record_main(argv: Sequence[str] | None = None) -> int:
    """``ctrader-twisted record [options]``: run the recorder in the foreground until Ctrl-C.

    Bad options, missing credentials and permanent start-up errors are printed as one
    ``error:`` line on stderr.

    :returns: the exit status (``docs/cli.md``): 0 after Ctrl-C, 2 for bad options or an
        unusable database, 3 for missing or refused credentials or token, 5 for an unknown
        symbol, 1 for anything else that stopped the start.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    stderr = sys.stderr  # logging redirects sys.stderr into the log once it begins
    options = Options()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(  # type: ignore[no-untyped-call]
            list(argv) if argv is not None else sys.argv[1:]
        )
        service = build_service(options, cast(IReactorSSL, global_reactor))
    except StartError as error:
        stderr.write(f"error: {error}\n")
        return int(error.code)
    except usage.UsageError as error:
        stderr.write(f"error: {error} (see ctrader-twisted record --help)\n")
        return int(ExitCode.USAGE)
    info = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [info])
    globalLogBeginner.beginLoggingTo([observer])
    core = cast(IReactorCore, global_reactor)
    status: list[int] = []

    def report(code: ExitCode, message: str) -> None:
        if not status:
            status.append(int(code))
            stderr.write(f"error: {message}\n")
            stderr.flush()

    stop_on_fatal(service, core, report)
    core.callWhenRunning(service.startService)
    core.addSystemEventTrigger("before", "shutdown", service.stopService)
    core.run()
    return status[0] if status else 0
