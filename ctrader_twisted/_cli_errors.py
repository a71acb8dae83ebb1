"""Exit codes of the ``ctrader-twisted`` command and the mapping from exceptions to them."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from .errors import (
    AccountAuthError,
    ApplicationAuthError,
    ConnectionLost,
    CTraderError,
    NotConnected,
    OpenApiError,
    OrderError,
    ProtocolError,
    RequestTimeout,
)

if TYPE_CHECKING:
    from twisted.python.failure import Failure

__all__ = ["NOT_FOUND_CODES", "CliError", "ExitCode", "describe_failure"]


class ExitCode(enum.IntEnum):
    """Exit statuses of ``ctrader-twisted`` (documented in ``docs/cli.md``)."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    AUTH = 3
    CONNECTION = 4
    NOT_FOUND = 5
    ORDER_REJECTED = 6
    INTERRUPTED = 130
    #: stdout was closed by its reader (``... | head -1``): 128 + SIGPIPE, as a shell reports
    #: a tool that SIGPIPE ended; nothing is printed.
    STDOUT_CLOSED = 141


class CliError(CTraderError):
    """An error the CLI reports in one line with a given exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


#: Server error codes that mean "no such account, symbol, position or order" (exit 5).
NOT_FOUND_CODES: Final = frozenset(
    {
        "CH_CTID_TRADER_ACCOUNT_NOT_FOUND",
        "SYMBOL_NOT_FOUND",
        "UNKNOWN_SYMBOL",
        "POSITION_NOT_FOUND",
        "ORDER_NOT_FOUND",
    }
)


def _classes() -> tuple[tuple[type[BaseException], ExitCode], ...]:
    """Exception classes and their exit codes, most specific first.

    (Built on use: Twisted's modules are not imported by ``ctrader-twisted --help``.)
    """
    from twisted.internet.defer import CancelledError
    from twisted.internet.defer import TimeoutError as DeferredTimeout
    from twisted.internet.error import ConnectError, ConnectionClosed

    from ._models_symbols import UnknownSymbol

    return (
        (CliError, ExitCode.USAGE),  # replaced by the instance's own code below
        (UnknownSymbol, ExitCode.NOT_FOUND),
        (ApplicationAuthError, ExitCode.AUTH),
        (AccountAuthError, ExitCode.AUTH),
        (OrderError, ExitCode.ORDER_REJECTED),
        (OpenApiError, ExitCode.API_ERROR),
        (RequestTimeout, ExitCode.CONNECTION),
        (NotConnected, ExitCode.CONNECTION),
        (ConnectionLost, ExitCode.CONNECTION),
        (ConnectError, ExitCode.CONNECTION),
        (ConnectionClosed, ExitCode.CONNECTION),
        (DeferredTimeout, ExitCode.CONNECTION),
        (ProtocolError, ExitCode.API_ERROR),
        (ValueError, ExitCode.USAGE),
        (OSError, ExitCode.USAGE),
        (KeyboardInterrupt, ExitCode.INTERRUPTED),
        (CancelledError, ExitCode.INTERRUPTED),
    )


def describe_failure(error: BaseException | Failure) -> tuple[ExitCode, str]:
    """The exit code and the one-line message for an error.

    Messages never include credentials: library errors name payload types and server error
    codes only.
    """
    from twisted.python.failure import Failure

    exc = error.value if isinstance(error, Failure) else error
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, CliError):
        return exc.code, text
    if isinstance(exc, OpenApiError) and exc.code in NOT_FOUND_CODES:
        return ExitCode.NOT_FOUND, f"not found: {text}"
    for cls, code in _classes():
        if isinstance(exc, cls):
            if code is ExitCode.AUTH:
                text = f"authentication failed: {text}"
            if code is ExitCode.CONNECTION and not text.lower().startswith("connection"):
                text = f"connection failed: {text}"
            return code, text
    return ExitCode.API_ERROR, f"{type(exc).__name__}: {text}"
