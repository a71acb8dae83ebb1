"""Which start-up errors end the recorder, and the exit status and message each one gets.

Permanent errors (retrying cannot help) end the recorder: a database that cannot be opened
for good, refused application credentials, a refused account or token, an unknown symbol, a
token refresh the OAuth server refused.  Everything else that can pass (a server not up yet or
unreachable, a lost connection, a timeout, a rate limit) is retried.
"""

from __future__ import annotations

from ctrader_twisted._cli_errors import ExitCode, describe_failure
from ctrader_twisted._models_symbols import UnknownSymbol
from ctrader_twisted._oauth_errors import (
    OAuthConnectionError,
    OAuthError,
    OAuthHTTPError,
    OAuthTimeout,
)
from ctrader_twisted.errors import AccountAuthError, ApplicationAuthError, CTraderError
from ctrader_twisted.recorder.storage import StorageError

__all__ = ["exit_status", "is_fatal"]

_TRANSIENT_HTTP = frozenset({408, 425, 429})


def is_fatal(error: BaseException) -> bool:
    """Whether a start-up ``error`` is permanent, so that retrying cannot help.

    Errors that are not the library's own (a bug, an unexpected driver error) count as
    permanent too: retrying them would only repeat the traceback.
    """
    if isinstance(error, StorageError):
        return error.permanent
    if isinstance(error, ApplicationAuthError | AccountAuthError | UnknownSymbol):
        return True
    if isinstance(error, OAuthConnectionError | OAuthTimeout):
        return False
    if isinstance(error, OAuthHTTPError):
        return error.status < 500 and error.status not in _TRANSIENT_HTTP
    if isinstance(error, OAuthError):
        return True  # the token endpoint refused the refresh token
    return not isinstance(error, CTraderError)


def exit_status(error: BaseException) -> tuple[ExitCode, str]:
    """The exit status (see ``docs/cli.md``) and the one-line message for a fatal ``error``.

    An unusable database is a bad option value (2); refused credentials, accounts, tokens and
    token refreshes are authentication failures (3); an unknown symbol is "not found" (5).
    """
    if isinstance(error, StorageError):
        return ExitCode.USAGE, " ".join(str(error).split())
    if isinstance(error, OAuthError):
        return ExitCode.AUTH, f"token refresh failed: {' '.join(str(error).split())}"
    return describe_failure(error)
