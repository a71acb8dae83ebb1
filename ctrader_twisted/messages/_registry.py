"""Payload-type registry: which class each payload type number decodes to, and back.

Built once at import from the generated descriptors: a message class is registered under the
default value of its ``payloadType`` field.  The 91 messages with such a default are the ones that
travel inside the envelope; the 28 without one are model messages and the envelope itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from google.protobuf.message import Message

from . import (
    OpenApiCommonMessages_pb2,
    OpenApiCommonModelMessages_pb2,
    OpenApiMessages_pb2,
    OpenApiModelMessages_pb2,
)

__all__ = [
    "ALL_MESSAGE_TYPES",
    "HISTORICAL_REQUESTS",
    "PAYLOAD_TYPES",
    "RESPONSE_TYPES",
    "TRADING_REQUESTS",
    "is_historical",
    "is_trading",
    "message_class",
    "payload_type_of",
    "response_type",
]

_MODULES: Final = (
    OpenApiCommonModelMessages_pb2,
    OpenApiCommonMessages_pb2,
    OpenApiModelMessages_pb2,
    OpenApiMessages_pb2,
)


def _all_classes() -> dict[str, type[Message]]:
    found: dict[str, type[Message]] = {}
    for module in _MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            found[name] = getattr(module, name)
    return found


def _payload_types(classes: Mapping[str, type[Message]]) -> dict[int, type[Message]]:
    table: dict[int, type[Message]] = {}
    for cls in classes.values():
        field = cls.DESCRIPTOR.fields_by_name.get("payloadType")
        if field is None or not field.has_default_value:
            continue
        number = int(field.default_value)
        if number in table:  # pragma: no cover - guarded by the schema tests
            raise RuntimeError(f"payload type {number} registered twice")
        table[number] = cls
    return table


#: Every message class of the schema, by its schema name (119 of them).
ALL_MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = MappingProxyType(_all_classes())

#: Message class for each payload type number (91 of them).
PAYLOAD_TYPES: Final[Mapping[int, type[Message]]] = MappingProxyType(
    _payload_types(ALL_MESSAGE_TYPES)
)

_PAYLOAD_OF: Final[dict[type[Message], int]] = {cls: n for n, cls in PAYLOAD_TYPES.items()}

#: Trading requests: answered by execution events, never retried or re-sent by the client.
TRADING_REQUESTS: Final[frozenset[type[Message]]] = frozenset(
    {
        OpenApiMessages_pb2.ProtoOANewOrderReq,
        OpenApiMessages_pb2.ProtoOACancelOrderReq,
        OpenApiMessages_pb2.ProtoOAAmendOrderReq,
        OpenApiMessages_pb2.ProtoOAAmendPositionSLTPReq,
        OpenApiMessages_pb2.ProtoOAClosePositionReq,
    }
)

#: Requests that count against the server's historical rate limit (5 per second).
HISTORICAL_REQUESTS: Final[frozenset[type[Message]]] = frozenset(
    {
        OpenApiMessages_pb2.ProtoOAGetTrendbarsReq,
        OpenApiMessages_pb2.ProtoOAGetTickDataReq,
        OpenApiMessages_pb2.ProtoOADealListReq,
        OpenApiMessages_pb2.ProtoOACashFlowHistoryListReq,
        OpenApiMessages_pb2.ProtoOAOrderListReq,
        OpenApiMessages_pb2.ProtoOADealListByPositionIdReq,
        OpenApiMessages_pb2.ProtoOAOrderListByPositionIdReq,
    }
)


def _response_types() -> dict[type[Message], type[Message]]:
    pairs: dict[type[Message], type[Message]] = {}
    execution = OpenApiMessages_pb2.ProtoOAExecutionEvent
    for name, cls in ALL_MESSAGE_TYPES.items():
        if not name.endswith("Req"):
            continue
        if cls in TRADING_REQUESTS:
            pairs[cls] = execution
            continue
        answer = ALL_MESSAGE_TYPES.get(name[:-3] + "Res")
        if answer is None:  # pragma: no cover - guarded by the registry tests
            raise RuntimeError(f"no response type for {name}")
        pairs[cls] = answer
    return pairs


#: For every request class, the class of the message that answers it.
RESPONSE_TYPES: Final[Mapping[type[Message], type[Message]]] = MappingProxyType(_response_types())


def payload_type_of(message: Message | type[Message]) -> int:
    """Return the payload type number of a message class or instance.

    :raises KeyError: for a model message (such as ``ProtoOASymbol``), which has no payload type.
    """
    cls = message if isinstance(message, type) else type(message)
    try:
        return _PAYLOAD_OF[cls]
    except KeyError:
        raise KeyError(f"{cls.__name__} has no payload type") from None


def message_class(payload_type: int) -> type[Message]:
    """Return the message class for a payload type number.

    :raises KeyError: for a number the schema does not define.
    """
    try:
        return PAYLOAD_TYPES[payload_type]
    except KeyError:
        raise KeyError(f"unknown payload type {payload_type}") from None


def response_type(request: Message | type[Message]) -> type[Message]:
    """Return the class of the message that answers ``request`` (a class or an instance).

    :raises KeyError: if ``request`` is not a request type.
    """
    cls = request if isinstance(request, type) else type(request)
    try:
        return RESPONSE_TYPES[cls]
    except KeyError:
        raise KeyError(f"{cls.__name__} is not a request type") from None


def is_trading(request: Message | type[Message]) -> bool:
    """Whether ``request`` is a trading request (answered by an execution event)."""
    cls = request if isinstance(request, type) else type(request)
    return cls in TRADING_REQUESTS


def is_historical(request: Message | type[Message]) -> bool:
    """Whether ``request`` counts against the historical rate limit."""
    cls = request if isinstance(request, type) else type(request)
    return cls in HISTORICAL_REQUESTS
