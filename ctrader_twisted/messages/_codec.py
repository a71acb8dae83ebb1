"""Envelope codec: a message and its clientMsgId to ``ProtoMessage`` bytes, and back.

The 4-byte length prefix is not added here; :mod:`ctrader_twisted.protocol` frames the bytes
(or use :func:`encode_frame` for a complete frame).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from google.protobuf.message import DecodeError, Message

from ..errors import MalformedMessage
from ._registry import PAYLOAD_TYPES, payload_type_of
from .OpenApiCommonMessages_pb2 import ProtoMessage

__all__ = ["Envelope", "UnknownMessage", "decode_envelope", "encode_frame", "encode_message"]

_LENGTH: Final = struct.Struct("!I")


class UnknownMessage(NamedTuple):
    """A message whose payload type this schema does not define, kept as raw bytes."""

    payload_type: int
    payload: bytes


class Envelope(NamedTuple):
    """One decoded frame.

    :ivar payload_type: the envelope's payload type number.
    :ivar client_msg_id: the envelope's clientMsgId, or ``None`` when absent.
    :ivar message: the parsed inner message, or :class:`UnknownMessage` for an unknown type.
    """

    payload_type: int
    client_msg_id: str | None
    message: Message | UnknownMessage


def encode_message(message: Message, client_msg_id: str | None = None) -> bytes:
    """Serialize ``message`` inside a ``ProtoMessage`` envelope (no length prefix).

    :raises KeyError: if ``message`` has no payload type (a model message).
    :raises google.protobuf.message.EncodeError: if a required field is not set.
    """
    envelope = ProtoMessage(
        payloadType=payload_type_of(message), payload=message.SerializeToString()
    )
    if client_msg_id is not None:
        envelope.clientMsgId = client_msg_id
    return envelope.SerializeToString()


def encode_frame(message: Message, client_msg_id: str | None = None) -> bytes:
    """Like :func:`encode_message`, with the 4-byte big-endian length prefix in front."""
    body = encode_message(message, client_msg_id)
    return _LENGTH.pack(len(body)) + body


def decode_envelope(data: bytes, *, strict: bool = False) -> Envelope:
    """Parse one frame body into an :class:`Envelope`.

    An unknown payload type is not an error: its payload comes back as :class:`UnknownMessage`.
    Missing required fields of the inner message are tolerated (they read as defaults) unless
    ``strict`` is true; the envelope's own ``payloadType`` is always required.

    :raises MalformedMessage: if the envelope or the payload of a known type cannot be parsed
        (the error carries the raw bytes, and the payload type and clientMsgId when known).
    """
    try:
        envelope = ProtoMessage.FromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"undecodable envelope ({exc})", data) from None
    if not envelope.HasField("payloadType"):
        raise MalformedMessage("envelope without a payload type", data)
    payload_type = envelope.payloadType
    client_msg_id = envelope.clientMsgId if envelope.HasField("clientMsgId") else None
    cls = PAYLOAD_TYPES.get(payload_type)
    if cls is None:
        return Envelope(payload_type, client_msg_id, UnknownMessage(payload_type, envelope.payload))
    try:
        message = cls.FromString(envelope.payload)
    except DecodeError as exc:
        raise MalformedMessage(
            f"undecodable {cls.__name__} ({exc})",
            envelope.payload,
            payload_type=payload_type,
            client_msg_id=client_msg_id,
        ) from None
    if strict and not message.IsInitialized():
        missing = ", ".join(
            f.name for f in cls.DESCRIPTOR.fields if f.is_required and not message.HasField(f.name)
        )
        raise MalformedMessage(
            f"{cls.__name__} lacks required fields: {missing}",
            envelope.payload,
            payload_type=payload_type,
            client_msg_id=client_msg_id,
        )
    return Envelope(payload_type, client_msg_id, message)
