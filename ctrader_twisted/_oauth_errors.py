"""The OAuth error types (re-exported by :mod:`ctrader_twisted.oauth`)."""

from __future__ import annotations

from ctrader_twisted.errors import CTraderError

__all__ = [
    "OAuthConnectionError",
    "OAuthError",
    "OAuthHTTPError",
    "OAuthTimeout",
    "StateMismatch",
]


class OAuthError(CTraderError):
    """The OAuth server refused a request, or its answer could not be used.

    :ivar code: the server's ``errorCode``, or one of ours (``INVALID_RESPONSE``, ``HTTP_<status>``,
        ``TIMEOUT``, ``CONNECTION_FAILED``, ``STATE_MISMATCH``, or an ``error`` from the redirect).
    :ivar description: human-readable detail; never contains a secret.
    """

    def __init__(self, code: str, description: str = "") -> None:
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}" if description else code)


class OAuthHTTPError(OAuthError):
    """The token endpoint answered with an HTTP status other than 200.

    :ivar status: the HTTP status code.
    """

    def __init__(self, status: int, code: str, description: str = "") -> None:
        self.status = status
        super().__init__(code, description)


class OAuthTimeout(OAuthError):
    """The token endpoint did not answer within the timeout."""


class OAuthConnectionError(OAuthError):
    """The token endpoint could not be reached, or the connection broke mid-answer."""


class StateMismatch(OAuthError):
    """The redirect carried a ``state`` other than the one we sent: it was refused."""
