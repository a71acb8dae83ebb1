"""The whole exception hierarchy of ctrader-twisted.

Everything raised or failed with by the library derives from :class:`CTraderError`.  Server-side
errors (``ProtoOAErrorRes``, ``ProtoErrorRes``, ``ProtoOAOrderErrorEvent``, and execution events
that report a rejection) become :class:`OpenApiError` or one of its subclasses, picked from the
server's error code by :func:`error_from_message`.  Local failures have their own types:
:class:`RequestTimeout`, :class:`NotConnected`, :class:`ConnectionLost` and the framing errors
under :class:`ProtocolError`.

No exception message produced here ever contains a client secret or a token: the request that
failed is named by its payload type only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Final

from google.protobuf.message import Message

__all__ = [
    "AccountAuthError",
    "ApplicationAuthError",
    "CTraderError",
    "ConnectionLost",
    "FrameTooLarge",
    "MalformedMessage",
    "NotConnected",
    "OpenApiError",
    "OrderError",
    "ProtocolError",
    "RateLimited",
    "RequestTimeout",
    "error_from_message",
    "RATE_LIMIT_CODES",
]


class CTraderError(Exception):
    """Base class of every error raised by ctrader-twisted."""


class OpenApiError(CTraderError):
    """The server answered a request with an error.

    :ivar code: the server's error code name, e.g. ``"CH_ACCESS_TOKEN_INVALID"``.
    :ivar description: the server's human-readable text, or ``""``.
    :ivar account_id: the ``ctidTraderAccountId`` the error names, if any.
    :ivar retry_after: seconds to wait before the payload type may be sent again, if given.
    :ivar maintenance_end: end of a server maintenance window (UTC), if given.
    :ivar payload_type: payload type of the error message itself (2142, 50, 2132 or 2126).
    """

    def __init__(
        self,
        code: str,
        description: str = "",
        *,
        account_id: int | None = None,
        retry_after: float | None = None,
        maintenance_end: datetime | None = None,
        payload_type: int | None = None,
    ) -> None:
        self.code = code
        self.description = description
        self.account_id = account_id
        self.retry_after = retry_after
        self.maintenance_end = maintenance_end
        self.payload_type = payload_type
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.code
        if self.description:
            text += f": {self.description}"
        if self.account_id:
            text += f" (account {self.account_id})"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        if self.maintenance_end is not None:
            text += f" (maintenance until {self.maintenance_end.isoformat()})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.description!r})"


class ApplicationAuthError(OpenApiError):
    """The application's client id or secret was refused.  Retrying cannot help."""


class AccountAuthError(OpenApiError):
    """A trading account could not be authorized (bad or expired token, unknown account)."""


class RateLimited(OpenApiError):
    """The server refused a request for exceeding its rate limit."""


class OrderError(OpenApiError):
    """A trading request was refused (``ProtoOAOrderErrorEvent`` or a rejecting execution event).

    :ivar order_id: the order the server named, or ``None`` (the server sometimes sends 0).
    :ivar position_id: the position the server named, or ``None``.
    """

    def __init__(
        self,
        code: str,
        description: str = "",
        *,
        account_id: int | None = None,
        order_id: int | None = None,
        position_id: int | None = None,
        payload_type: int | None = None,
    ) -> None:
        self.order_id = order_id
        self.position_id = position_id
        super().__init__(code, description, account_id=account_id, payload_type=payload_type)


class RequestTimeout(CTraderError):
    """A request got no answer in time.

    :ivar request_name: the request's message type name, e.g. ``"ProtoOAVersionReq"``.
    :ivar timeout: the bound that ran out, in seconds.
    :ivar sent: ``True`` if the frame was written (then the server may still act on it),
        ``False`` if it timed out still waiting to be sent (then it never reached the server).
    """

    def __init__(self, request_name: str, timeout: float, *, sent: bool) -> None:
        self.request_name = request_name
        self.timeout = timeout
        self.sent = sent
        where = "no answer" if sent else "not sent (not connected or rate-limited)"
        super().__init__(f"{request_name}: {where} within {timeout:g} s")


class NotConnected(CTraderError):
    """The request could not be sent: the client is not connected and ready."""


class ConnectionLost(CTraderError):
    """The connection closed while the request was written and awaiting its answer.

    :ivar reason: a short text saying why the connection ended.
    """

    def __init__(self, reason: str = "connection lost") -> None:
        self.reason = reason
        super().__init__(reason)


class ProtocolError(CTraderError):
    """The peer broke the wire protocol."""


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeded the allowed maximum; the connection is closed."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")


class MalformedMessage(ProtocolError):
    """A frame could not be decoded.

    :ivar raw: the frame's bytes (the envelope, or the payload when only that failed).
    :ivar payload_type: the payload type, if the envelope could be read.
    :ivar client_msg_id: the envelope's clientMsgId, if it could be read.
    """

    def __init__(
        self,
        reason: str,
        raw: bytes,
        *,
        payload_type: int | None = None,
        client_msg_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.raw = raw
        self.payload_type = payload_type
        self.client_msg_id = client_msg_id
        text = reason if payload_type is None else f"payload type {payload_type}: {reason}"
        super().__init__(text)


#: Error codes that mean "too many requests, slow down".
RATE_LIMIT_CODES: Final = frozenset({"REQUEST_FREQUENCY_EXCEEDED", "BLOCKED_PAYLOAD_TYPE"})

_APP_AUTH_CODES: Final = frozenset({"CH_CLIENT_AUTH_FAILURE", "CH_OA_CLIENT_NOT_FOUND"})
_ACCOUNT_AUTH_CODES: Final = frozenset(
    {
        "CH_ACCESS_TOKEN_INVALID",
        "OA_AUTH_TOKEN_EXPIRED",
        "CH_CTID_TRADER_ACCOUNT_NOT_FOUND",
        "RET_NO_SUCH_LOGIN",
        "RET_ACCOUNT_DISABLED",
        "ACCOUNT_NOT_AUTHORIZED",
    }
)


def _class_for(code: str) -> type[OpenApiError]:
    if code in RATE_LIMIT_CODES:
        return RateLimited
    if code in _APP_AUTH_CODES:
        return ApplicationAuthError
    if code in _ACCOUNT_AUTH_CODES:
        return AccountAuthError
    return OpenApiError


def _from_epoch(value: float) -> datetime | None:
    # A timestamp no calendar can hold (a server bug or a hostile peer) reads as "not given".
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def error_from_message(message: Message) -> OpenApiError | None:
    """Turn a server error message into an exception, or return ``None`` if it reports no error.

    Handles ``ProtoOAErrorRes`` (``maintenanceEndTimestamp`` in seconds), ``ProtoErrorRes``
    (in milliseconds), ``ProtoOAOrderErrorEvent`` and ``ProtoOAExecutionEvent`` of type
    ``ORDER_REJECTED`` / ``ORDER_CANCEL_REJECTED`` (its ``errorCode`` is the code when given).
    """
    name = message.DESCRIPTOR.name
    if name == "ProtoOAErrorRes":
        code = str(getattr(message, "errorCode"))
        end = (
            _from_epoch(int(getattr(message, "maintenanceEndTimestamp")))
            if message.HasField("maintenanceEndTimestamp")
            else None
        )
        return _class_for(code)(
            code,
            str(getattr(message, "description")),
            account_id=int(getattr(message, "ctidTraderAccountId")) or None,
            retry_after=float(getattr(message, "retryAfter"))
            if message.HasField("retryAfter")
            else None,
            maintenance_end=end,
            payload_type=2142,
        )
    if name == "ProtoErrorRes":
        code = str(getattr(message, "errorCode"))
        end = (
            _from_epoch(int(getattr(message, "maintenanceEndTimestamp")) / 1000.0)
            if message.HasField("maintenanceEndTimestamp")
            else None
        )
        return _class_for(code)(
            code, str(getattr(message, "description")), maintenance_end=end, payload_type=50
        )
    if name == "ProtoOAOrderErrorEvent":
        return OrderError(
            str(getattr(message, "errorCode")),
            str(getattr(message, "description")),
            account_id=int(getattr(message, "ctidTraderAccountId")) or None,
            order_id=int(getattr(message, "orderId")) or None,
            position_id=int(getattr(message, "positionId")) or None,
            payload_type=2132,
        )
    if name == "ProtoOAExecutionEvent":
        return _execution_error(message)
    return None


_REJECTED: Final = {7: "ORDER_REJECTED", 8: "ORDER_CANCEL_REJECTED"}


def _execution_error(message: Message) -> OrderError | None:
    kind = _REJECTED.get(int(getattr(message, "executionType")))
    if kind is None:
        return None
    code = str(getattr(message, "errorCode")) if message.HasField("errorCode") else kind
    order = getattr(message, "order")
    position = getattr(message, "position")
    return OrderError(
        code,
        kind,
        account_id=int(getattr(message, "ctidTraderAccountId")) or None,
        order_id=int(order.orderId) if message.HasField("order") else None,
        position_id=int(position.positionId) if message.HasField("position") else None,
        payload_type=2126,
    )
