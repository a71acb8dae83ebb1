"""Command-line start-up of the sandbox: ``twistd -n ctrader-sandbox [options]`` and
:func:`run_sandbox` (used by ``ctrader-twisted sandbox``), with one set of options.

This is the only sandbox module that touches the global reactor, and only inside
:func:`makeService` and :func:`run_sandbox`.

Start-up errors are one line and an exit status (``docs/cli.md``): a bad option, ``--listen``
endpoint, certificate file or ``--state-dir`` gives :data:`EXIT_USAGE`; a listen that fails
(port taken) gives :data:`EXIT_FAILED`.  ``ctrader-twisted sandbox`` prints them as an
``error:`` line on stderr; ``twistd ctrader-sandbox`` prints the first kind on stderr and logs
the second at critical level, then exits with the status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO, cast

from OpenSSL import SSL, crypto
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure

from .certs import ensure_certificates, server_tls_options
from .config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PORT,
    DEFAULT_REFRESH_TOKEN,
    ConfigError,
    SandboxConfig,
    default_state_dir,
)
from .server import SandboxFactory, tls_server_endpoint

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "Options",
    "SandboxService",
    "SandboxStartError",
    "makeService",
    "run_sandbox",
]

#: Exit status for a bad option, ``--listen`` endpoint, certificate file or ``--state-dir``.
EXIT_USAGE: Final = 2
#: Exit status when listening failed (port taken, no permission, unknown interface).
EXIT_FAILED: Final = 1

_DEFAULTS = SandboxConfig()


class _Number:
    """Parses one option's value as ``kind`` (int or float), naming the option on failure."""

    def __init__(self, option: str, kind: type[int] | type[float]) -> None:
        self.option = option
        self.kind = kind
        self.coerceDoc = ""

    def __call__(self, value: str) -> int | float:
        try:
            return self.kind(value)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise ValueError(f"--{self.option} must be {what} (got {value!r})") from None


def _named(parameters: list[list[Any]]) -> list[list[Any]]:
    """``parameters`` with every int/float converter replaced by one naming its option."""
    out = []
    for entry in parameters:
        if len(entry) == 5 and entry[4] in (int, float):
            entry = [*entry[:4], _Number(str(entry[0]), entry[4])]
        out.append(entry)
    return out


def usage_message(error: usage.UsageError) -> str:
    """The one-line text of a usage error (without Twisted's type-enforcement prefix)."""
    return str(error).removeprefix("Parameter type enforcement failed: ")


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("--port must be 0 to 65535 (0: any free port)")
    return number


class Options(usage.Options):
    """Options of ``twistd ctrader-sandbox`` and ``ctrader-twisted sandbox``."""

    synopsis = "[options]"
    longdesc = (
        "Serve a local cTrader Open API 2.0 sandbox.  Without --listen it serves TLS on "
        "127.0.0.1:PORT with a self-signed CA generated into --state-dir and prints the CA "
        "file to trust.  Credentials default to sandbox-only values that are printed at start."
    )
    optFlags = [["always-open", None, "Ignore trading hours (markets never close)."]]
    optParameters: list[list[Any]] = [
        [
            "listen",
            "l",
            None,
            "Twisted server endpoint, e.g. ssl:5035:privateKey=k.pem:certKey=c.pem",
        ],
        ["port", "p", DEFAULT_PORT, "Port of the default TLS listener (0: any free one).", _port],
        ["state-dir", None, None, "Folder for the generated CA and certificate."],
        ["client-id", None, DEFAULT_CLIENT_ID, "Accepted application client id."],
        ["client-secret", None, DEFAULT_CLIENT_SECRET, "Accepted application secret."],
        ["access-token", None, DEFAULT_ACCESS_TOKEN, "Initial access token."],
        ["refresh-token", None, DEFAULT_REFRESH_TOKEN, "Initial refresh token."],
        ["seed", None, _DEFAULTS.seed, "Seed of the price walk.", int],
        ["tick-interval", None, _DEFAULTS.tick_interval, "Seconds between price ticks.", float],
        [
            "heartbeat-interval",
            None,
            _DEFAULTS.heartbeat_interval,
            "Seconds between server heartbeats (0: none).",
            float,
        ],
        [
            "idle-timeout",
            None,
            _DEFAULTS.idle_timeout,
            "Close connections silent this long (0: never).",
            float,
        ],
        [
            "rate-limit",
            None,
            _DEFAULTS.rate_limit,
            "Requests per second per connection (0: off).",
            int,
        ],
        [
            "historical-rate-limit",
            None,
            _DEFAULTS.historical_rate_limit,
            "Historical requests per second (0: off).",
            int,
        ],
        [
            "rate-limit-mode",
            None,
            _DEFAULTS.rate_limit_mode,
            "'frequency' or 'blocked' (BLOCKED_PAYLOAD_TYPE + retryAfter).",
        ],
        ["max-frame", None, _DEFAULTS.max_frame, "Largest inbound frame in bytes.", int],
        [
            "slow-reader-timeout",
            None,
            _DEFAULTS.slow_reader_timeout,
            "Abort a connection whose client reads nothing for this long (0: never).",
            float,
        ],
        [
            "slow-reader-backlog",
            None,
            _DEFAULTS.slow_reader_backlog,
            "Abort a non-reading client after this many more bytes (0: no limit).",
            int,
        ],
        [
            "close-timeout",
            None,
            _DEFAULTS.close_timeout,
            "Abort a connection still closing after this long (0: never).",
            float,
        ],
        [
            "app-auth-timeout",
            None,
            _DEFAULTS.app_auth_timeout,
            "Close connections not application-authorized this long after opening (0: never).",
            float,
        ],
        [
            "max-connections",
            None,
            _DEFAULTS.max_connections,
            "Most connections at once; more get CONNECTIONS_LIMIT_EXCEEDED (0: no cap).",
            int,
        ],
        [
            "pre-auth-max-frame",
            None,
            _DEFAULTS.pre_auth_max_frame,
            "Largest inbound frame in bytes before application auth.",
            int,
        ],
        [
            "work-slice-minutes",
            None,
            _DEFAULTS.work_slice_minutes,
            "Minutes of history generated before other connections are served.",
            int,
        ],
        [
            "max-pending-work",
            None,
            _DEFAULTS.max_pending_work,
            "History requests one connection may have in progress.",
            int,
        ],
        ["response-delay", None, None, "Fault: delay every answer by this many seconds.", float],
        [
            "drop-after-messages",
            None,
            None,
            "Fault: close each connection after N inbound messages.",
            int,
        ],
        ["drop-after-seconds", None, None, "Fault: abort each connection after T seconds.", float],
        [
            "stall-after-messages",
            None,
            None,
            "Fault: stall each connection after N inbound messages.",
            int,
        ],
        [
            "corrupt-frame-after",
            None,
            None,
            "Fault: send one corrupt frame after N inbound messages.",
            int,
        ],
    ]

    optParameters = _named(optParameters)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``options``; every value is checked here (finite, in range).

        Under ``twistd`` (as its subcommand) a bad option is one ``ctrader-sandbox: error:``
        line on stderr and exit status :data:`EXIT_USAGE`; otherwise it raises
        :class:`twisted.python.usage.UsageError`.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(f"ctrader-sandbox: error: {usage_message(error)}\n")
            raise SystemExit(EXIT_USAGE) from None

    def postOptions(self) -> None:
        try:
            self._config = self._make_config()
        except ConfigError as error:
            option = "--" + error.field.replace("_", "-")
            raise usage.UsageError(f"{option} {error.requirement}") from None

    def config(self) -> SandboxConfig:
        """The :class:`SandboxConfig` these options describe (checked when parsed)."""
        return self._make_config()

    def _make_config(self) -> SandboxConfig:
        return SandboxConfig(
            client_id=self["client-id"],
            client_secret=self["client-secret"],
            access_token=self["access-token"],
            refresh_token=self["refresh-token"],
            seed=self["seed"],
            tick_interval=self["tick-interval"],
            always_open=bool(self["always-open"]),
            heartbeat_interval=self["heartbeat-interval"],
            idle_timeout=self["idle-timeout"],
            rate_limit=self["rate-limit"],
            historical_rate_limit=self["historical-rate-limit"],
            rate_limit_mode=self["rate-limit-mode"],
            max_frame=self["max-frame"],
            slow_reader_timeout=self["slow-reader-timeout"],
            slow_reader_backlog=self["slow-reader-backlog"],
            close_timeout=self["close-timeout"],
            app_auth_timeout=self["app-auth-timeout"],
            max_connections=self["max-connections"],
            pre_auth_max_frame=self["pre-auth-max-frame"],
            work_slice_minutes=self["work-slice-minutes"],
            max_pending_work=self["max-pending-work"],
            response_delay=self["response-delay"],
            drop_after_messages=self["drop-after-messages"],
            drop_after_seconds=self["drop-after-seconds"],
            stall_after_messages=self["stall-after-messages"],
            corrupt_frame_after=self["corrupt-frame-after"],
        )

    def state_dir(self) -> Path:
        return Path(self["state-dir"]) if self["state-dir"] else default_state_dir()


class SandboxStartError(Exception):
    """The sandbox cannot start; the message is one line, fit to show the user.

    :ivar message: that line.
    :ivar code: the exit status (see ``docs/cli.md``): :data:`EXIT_USAGE` for a bad
        ``--listen`` endpoint or unusable certificate files, :data:`EXIT_FAILED` when
        listening failed (port taken, no permission, unknown interface).
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _AbortStart(SystemExit, Exception):
    """Ends ``twistd`` after a failed listen was logged.

    twistd handles an ``Exception`` raised while it starts the application: it removes its
    PID file, tells a daemonizing parent what failed, and raises it again.  Being also a
    :class:`SystemExit` with ``code``, it then ends the process with that status and no
    traceback.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _plain(reason: str) -> str:
    """``reason`` as the tail of a one-line message ("address already in use")."""
    reason = reason.strip().rstrip(".")
    return reason[:1].lower() + reason[1:] if reason[1:2].islower() else reason


def _server_endpoint(reactor: IReactorTime, description: str, what: str) -> IStreamServerEndpoint:
    """Parse ``description`` (this reads an ``ssl:`` endpoint's key and certificate).

    :raises SandboxStartError: with :data:`EXIT_USAGE`, naming ``what`` failed.
    """
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except OSError as error:
        reason = f"cannot read {error.filename}: {_plain(error.strerror or str(error))}"
        raise SandboxStartError(f"{what}: {reason}", EXIT_USAGE) from None
    except (crypto.Error, SSL.Error):
        reason = "no valid PEM private key and certificate"
        raise SandboxStartError(f"{what}: {reason}", EXIT_USAGE) from None
    except (ValueError, TypeError) as error:
        raise SandboxStartError(f"{what}: {error}", EXIT_USAGE) from None
    return endpoint


def _listen_error(failure: Failure, where: str) -> str:
    """One line for a failed listen ("cannot listen on 127.0.0.1:5035: address already in use")."""
    error = failure.value
    if isinstance(error, CannotListenError):
        socket_error = error.socketError
        reason = getattr(socket_error, "strerror", None) or str(socket_error)
        if error.interface is not None:
            where = f"{error.interface or '*'}:{error.port}"
        return f"cannot listen on {where}: {_plain(reason)}"
    return f"cannot listen on {where}: {_plain(failure.getErrorMessage())}"


class SandboxService(Service):
    """Listens for the sandbox while running.

    The endpoint is parsed (and the default TLS certificates generated) when the service is
    made; it listens in :meth:`privilegedStartService`, so that ``twistd`` can bind a low
    port before it sheds privileges.

    :ivar factory: the sandbox (stats, sessions, faults).
    :ivar ca_file: the CA to trust when the default TLS listener is used, else ``None``.
    :ivar listening: the listening port once started.
    :ivar error: the one-line reason why listening failed, else ``None``.
    :raises SandboxStartError: (when made) a bad ``--listen`` endpoint, unusable certificate
        files or an unusable ``--state-dir``.
    """

    _log = Logger()

    def __init__(self, options: Options, reactor: IReactorTime, out: TextIO | None = None) -> None:
        self.config = options.config()
        self.reactor = reactor
        self.factory = SandboxFactory(self.config, reactor)
        self.ca_file: Path | None = None
        self.listening: IListeningPort | None = None
        self.error: str | None = None
        self._out = out
        self._listened: Deferred[IListeningPort] | None = None
        self._starting = False
        self._where = ""
        self._endpoint = self._make_endpoint(options)

    def _make_endpoint(self, options: Options) -> IStreamServerEndpoint:
        listen = options["listen"]
        if listen is not None:
            self._where = listen
            return _server_endpoint(self.reactor, listen, f"bad --listen endpoint {listen!r}")
        state_dir = options.state_dir()
        try:
            certs = ensure_certificates(state_dir)
        except OSError as error:
            reason = _plain(error.strerror or str(error))
            message = f"cannot prepare the TLS certificates in {state_dir}: {reason}"
            raise SandboxStartError(message, EXIT_USAGE) from None
        self.ca_file = certs.ca_file
        self._where = f"127.0.0.1:{options['port']}"
        try:
            tls = server_tls_options(certs.server_file.read_bytes())
        except OSError as error:
            reason = _plain(error.strerror or str(error))
            raise SandboxStartError(f"bad file {certs.server_file}: {reason}", EXIT_USAGE) from None
        except ValueError as error:
            raise SandboxStartError(f"bad file {certs.server_file}: {error}", EXIT_USAGE) from None
        reactor = cast(IReactorTCP, self.reactor)
        return tls_server_endpoint(reactor, options["port"], tls, "127.0.0.1")

    def privilegedStartService(self) -> None:
        """Start listening; the banner is written once the port is open.

        :raises SandboxStartError: if listening failed at once (it does for TCP, TLS and UNIX
            endpoints); :attr:`error` tells why.  A listen that fails later is logged at
            critical level and stops the reactor.
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self._listened is not None:
            return
        self._starting = True
        try:
            self._listened = self._endpoint.listen(self.factory)
            self._listened.addCallbacks(self._listening, self._failed)
        finally:
            self._starting = False
        if self.error is not None:
            raise SandboxStartError(self.error, EXIT_FAILED)

    def startService(self) -> None:
        """Listen unless :meth:`privilegedStartService` did, then mark the service running.

        :raises SandboxStartError: as :meth:`privilegedStartService`.
        """
        if self._listened is None:
            self.privilegedStartService()
        super().startService()  # type: ignore[no-untyped-call]

    def _listening(self, port: IListeningPort) -> None:
        self.listening = port
        self._banner(port)

    def _failed(self, failure: Failure) -> None:
        self.error = _listen_error(failure, self._where)
        if self._starting:
            return  # privilegedStartService raises it
        self._log.critical("{error}", error=self.error)
        reactor = self.reactor
        if not IReactorCore.providedBy(reactor):
            return
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    def _banner(self, port: IListeningPort) -> None:
        config = self.config
        address = port.getHost()
        lines = [
            f"cTrader Open API sandbox listening on {address.host}:{address.port}",  # type: ignore[attr-defined]
            f"  client id:     {config.client_id}",
            f"  client secret: {config.client_secret}   (sandbox-only credentials)",
            f"  access token:  {config.access_token}",
            f"  refresh token: {config.refresh_token}",
            "  accounts:      5000001 (USD), 5000002 (EUR); EURUSD is symbol 1",
            f"  seed:          {config.seed}, tick interval {config.tick_interval:g} s",
        ]
        if self.ca_file is not None:
            lines.append(f"  CA file:       {self.ca_file}")
            lines.append(
                "  connect with:  tls_endpoint(reactor, 'localhost', port, ca_file=CA file)"
            )
        out = self._out or sys.stdout
        out.write("\n".join(lines) + "\n")
        out.flush()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.factory.drop_all()
        self.factory.feed.stop()
        if self.listening is None:
            if self._listened is not None and not self._listened.called:
                self._listened.cancel()
            return None
        stopped = self.listening.stopListening()
        return stopped if isinstance(stopped, Deferred) else None


class _TwistdSandboxService(SandboxService):
    """The service ``twistd`` runs: a failed listen is one critical log line, then twistd
    ends with :data:`EXIT_FAILED` (see :class:`_AbortStart`)."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except SandboxStartError as error:
            self._log.critical("{error}", error=error.message)
            raise _AbortStart(error.message, error.code) from None


def makeService(options: Options) -> IService:
    """Build the (not yet started) sandbox service for parsed ``options``, for ``twistd``.

    A bad ``--listen`` endpoint or unusable certificate files are printed as one line on
    stderr and end the process with :data:`EXIT_USAGE`.  A failed listen (port taken) is
    logged as one critical line when twistd starts the service, and twistd exits with
    :data:`EXIT_FAILED`, without a traceback.
    """
    from twisted.internet import reactor

    try:
        return _TwistdSandboxService(options, reactor)
    except SandboxStartError as error:
        sys.stderr.write(f"ctrader-sandbox: error: {error}\n")
        raise SystemExit(error.code) from None


class _CommandOptions(Options):
    """The same options, with the usage line of ``ctrader-twisted sandbox``."""

    synopsis = (
        "Usage: ctrader-twisted sandbox [--port N | --listen ENDPOINT] [--state-dir DIR]\n"
        "         [--seed N] [--client-id ID] [--client-secret SECRET] [options]"
    )


def _log_to(stream: TextIO) -> None:
    """Send log events at info level and above to ``stream`` (stdout and stderr are left
    alone: the banner stays on stdout)."""
    info = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(stream), [info])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_sandbox(argv: Sequence[str], out: TextIO | None = None) -> int:
    """``ctrader-twisted sandbox [options]``: serve until SIGINT or SIGTERM.

    Runs the global reactor.  The banner (address, credentials, CA file) goes to ``out``
    (default stdout); the sandbox's log (connections opened and closed, idle closes, aborted
    connections) goes to stderr at info level.  Errors are one ``error:`` line on stderr.

    :returns: 0 after a stop by signal; :data:`EXIT_USAGE` (2) for a bad option, ``--listen``
        endpoint, certificate file or ``--state-dir``; :data:`EXIT_FAILED` (1) when
        listening failed.
    """
    stderr = sys.stderr
    options = _CommandOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as error:
        message = usage_message(error)
        stderr.write(f"error: {message} (see ctrader-twisted sandbox --help)\n")
        return EXIT_USAGE
    from twisted.internet import reactor

    try:
        service = SandboxService(options, reactor, out or sys.stdout)
        service.startService()
    except SandboxStartError as error:
        stderr.write(f"error: {error}\n")
        return error.code
    _log_to(stderr)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return EXIT_FAILED if service.error is not None else 0
