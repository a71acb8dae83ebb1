"""Command-line start-up of the sandbox: ``twistd -n ctrader-sandbox [options]`` and
:func:`run_sandbox` (used by ``ctrader-twisted sandbox``), with one set of options.

This is the only sandbox module that touches the global reactor, and only inside
:func:`makeService` and :func:`run_sandbox`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .certs import ensure_certificates
from .config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PORT,
    DEFAULT_REFRESH_TOKEN,
    SandboxConfig,
    default_state_dir,
)
from .server import SandboxFactory

__all__ = ["Options", "SandboxService", "makeService", "run_sandbox"]

_DEFAULTS = SandboxConfig()


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
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
    optParameters = [
        [
            "listen",
            "l",
            None,
            "Twisted server endpoint, e.g. ssl:5035:privateKey=k.pem:certKey=c.pem",
        ],
        ["port", "p", DEFAULT_PORT, "Port of the default TLS listener.", _positive_int],
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
            _positive_int,
        ],
        [
            "historical-rate-limit",
            None,
            _DEFAULTS.historical_rate_limit,
            "Historical requests per second (0: off).",
            _positive_int,
        ],
        [
            "rate-limit-mode",
            None,
            _DEFAULTS.rate_limit_mode,
            "'frequency' or 'blocked' (BLOCKED_PAYLOAD_TYPE + retryAfter).",
        ],
        ["max-frame", None, _DEFAULTS.max_frame, "Largest inbound frame in bytes.", _positive_int],
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
            _positive_int,
        ],
        [
            "close-timeout",
            None,
            _DEFAULTS.close_timeout,
            "Abort a connection still closing after this long (0: never).",
            float,
        ],
        ["response-delay", None, None, "Fault: delay every answer by this many seconds.", float],
        [
            "drop-after-messages",
            None,
            None,
            "Fault: close each connection after N inbound messages.",
            _positive_int,
        ],
        ["drop-after-seconds", None, None, "Fault: abort each connection after T seconds.", float],
        [
            "stall-after-messages",
            None,
            None,
            "Fault: stall each connection after N inbound messages.",
            _positive_int,
        ],
        [
            "corrupt-frame-after",
            None,
            None,
            "Fault: send one corrupt frame after N inbound messages.",
            _positive_int,
        ],
    ]

    def postOptions(self) -> None:
        if self["rate-limit-mode"] not in ("frequency", "blocked"):
            raise usage.UsageError("--rate-limit-mode must be 'frequency' or 'blocked'")
        if self["tick-interval"] <= 0:
            raise usage.UsageError("--tick-interval must be positive")
        for name in ("slow-reader-timeout", "close-timeout"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")

    def config(self) -> SandboxConfig:
        """The :class:`SandboxConfig` these options describe."""
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
            response_delay=self["response-delay"],
            drop_after_messages=self["drop-after-messages"],
            drop_after_seconds=self["drop-after-seconds"],
            stall_after_messages=self["stall-after-messages"],
            corrupt_frame_after=self["corrupt-frame-after"],
        )

    def state_dir(self) -> Path:
        return Path(self["state-dir"]) if self["state-dir"] else default_state_dir()


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class SandboxService(Service):
    """Listens for the sandbox while running.

    :ivar factory: the sandbox (stats, sessions, faults).
    :ivar ca_file: the CA to trust when the default TLS listener is used, else ``None``.
    :ivar listening: the listening port once started.
    """

    _log = Logger()

    def __init__(self, options: Options, reactor: IReactorTime, out: TextIO | None = None) -> None:
        self.config = options.config()
        self.reactor = reactor
        self.factory = SandboxFactory(self.config, reactor)
        self.ca_file: Path | None = None
        self.listening: IListeningPort | None = None
        self._out = out
        self._description = options["listen"]
        if self._description is None:
            certs = ensure_certificates(options.state_dir())
            self.ca_file = certs.ca_file
            server = _escape(certs.server_file)
            self._description = (
                f"ssl:{options['port']}:interface=127.0.0.1:privateKey={server}:certKey={server}"
            )

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        endpoint = serverFromString(self.reactor, self._description)  # type: ignore[no-untyped-call]
        listened: Deferred[IListeningPort] = endpoint.listen(self.factory)
        listened.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.listening = port
        self._banner(port)

    def _failed(self, failure: Failure) -> None:
        self._log.failure("the sandbox could not listen", failure)
        if IReactorCore.providedBy(self.reactor):
            self.reactor.stop()

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
            return None
        stopped = self.listening.stopListening()
        return stopped if isinstance(stopped, Deferred) else None


def makeService(options: Options) -> IService:
    """Build the (not yet started) sandbox service for parsed ``options``."""
    from twisted.internet import reactor

    return SandboxService(options, reactor)


def run_sandbox(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Parse ``argv`` (the options after the command name) and serve until interrupted.

    Runs the global reactor.  :returns: 0 after a normal stop, 2 for bad options.
    """
    options = Options()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as error:
        sys.stderr.write(f"{error}\n\n{options}")
        return 2
    from twisted.internet import reactor

    service = SandboxService(options, reactor, out)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0
