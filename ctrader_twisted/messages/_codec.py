"""Envelope codec: a message and its clientMsgId to ``ProtoMessage`` bytes, and back.

The 4-byte length prefix is not added here; :mod:`ctrader_twisted.protocol` frames the bytes
(or use :func:`encode_frame` for a complete frame).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, NamedTuple, cast

from google.protobuf.message import DecodeError, Message

from ..errors import MalformedMessage
from ._registry import PAYLOAD_TYPES, payload_type_of
from .OpenApiCommonMessages_pb2 import ProtoMessage

__all__ = [
    "Envelope",
    "UnknownMessage",
    "decode_envelope",
    "decode_plain",
    "decode_span",
    "encode_frame",
    "encode_message",
]

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


#: ``tuple.__new__``: builds an :class:`Envelope` without the keyword handling of its
#: generated ``__new__`` (a third of the decode time of a small event otherwise).
_new_envelope: Final = cast(
    Callable[[type[Envelope], tuple[int, str | None, Message | UnknownMessage]], Envelope],
    tuple.__new__,
)


def _plain_headers() -> dict[int, tuple[int, Callable[[bytes], Message]]]:
    """First four bytes of a plain frame, as a big-endian int -> payload type and parser.

    ``08`` (field 1, varint), the payload type in two varint bytes, ``12`` (field 2, bytes);
    for payload types 128 to 16383 (all but a few of the schema's).  An int key, read with the
    length prefix in one ``struct`` call, costs a fraction of a slice and a ``bytes`` hash.
    """
    table: dict[int, tuple[int, Callable[[bytes], Message]]] = {}
    for number, cls in PAYLOAD_TYPES.items():
        if 0x80 <= number <= 0x3FFF:
            key = (0x08 << 24) | (((number & 0x7F) | 0x80) << 16) | ((number >> 7) << 8) | 0x12
            table[key] = (number, cls.FromString)
    return table


#: See :func:`_plain_headers`; the framing loop of :mod:`ctrader_twisted.protocol` reads it too.
PLAIN_HEADERS: Final = _plain_headers()


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
    if strict:
        return _decode_general(data, strict)
    return decode_span(data, 0, len(data))


def decode_span(buffer: bytes, start: int, end: int) -> Envelope:
    """``decode_envelope(buffer[start:end])``, without copying the frame out of ``buffer`` first.

    :raises MalformedMessage: as :func:`decode_envelope` does.
    """
    plain = decode_plain(buffer, start, end)
    if plain is not None:
        return _new_envelope(Envelope, (plain[0], None, plain[1]))
    return _decode_general(buffer[start:end], False)


def decode_plain(buffer: bytes, start: int, end: int) -> tuple[int, Message] | None:
    """Decode the frame ``buffer[start:end]`` if it has the plain shape, with one parse.

    Almost every frame a server sends (events above all) is exactly ``payloadType`` (a known
    type whose number takes a two-byte varint), then ``payload`` up to the end: no clientMsgId,
    no repeated or reordered fields.  For that shape the envelope's fields are read here from
    the bytes and only the payload is parsed, once, instead of parsing the envelope and then
    its payload.  Any other shape, and a payload that does not parse, returns ``None``: the
    general decoder then decides (and reports errors) as always, and for every input the result
    is the same as its result (``tests/test_codec.py`` compares both on hostile envelopes).

    :returns: the payload type and the message, or ``None``.
    """
    if end - start < 5:
        return None
    known = PLAIN_HEADERS.get(_LENGTH.unpack_from(buffer, start)[0])
    if known is None:
        return None
    size = buffer[start + 4]  # the payload's length: a varint of one byte, or two
    if size <= 0x7F:
        begin = start + 5
    elif end - start > 5 and buffer[start + 5] <= 0x7F:
        size = (size & 0x7F) | (buffer[start + 5] << 7)  # payloads of 128 B to 16 KiB
        begin = start + 6
    else:
        return None
    if begin + size != end:
        return None
    try:
        return known[0], known[1](buffer[begin:end])
    except DecodeError:
        return None  # the general decoder reports it


def _decode_general(data: bytes, strict: bool) -> Envelope:
    """Parse the envelope, then its payload: any valid frame, and every error."""
    try:
        envelope = ProtoMessage.FromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"undecodable envelope ({exc})", data) from None
    payload_type = envelope.payloadType
    if not payload_type and not envelope.HasField("payloadType"):
        raise MalformedMessage("envelope without a payload type", data)
    client_msg_id: str | None = envelope.clientMsgId
    if not client_msg_id and not envelope.HasField("clientMsgId"):
        client_msg_id = None
    cls = PAYLOAD_TYPES.get(payload_type)
    if cls is None:
        message: Message | UnknownMessage = UnknownMessage(payload_type, envelope.payload)
        return _new_envelope(Envelope, (payload_type, client_msg_id, message))
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
    return _new_envelope(Envelope, (payload_type, client_msg_id, message))
