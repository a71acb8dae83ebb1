"""Envelope codec: round trips for all 119 message types, and clear errors on bad input."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrader_twisted import messages as m
from ctrader_twisted.errors import MalformedMessage
from ctrader_twisted.messages import _codec
from ctrader_twisted.messages._codec import _decode_general, decode_span

from .strategies import messages

PAYLOAD_CLASSES = sorted(m.PAYLOAD_TYPES.values(), key=lambda c: c.__name__)
MODEL_CLASSES = sorted(
    (c for c in m.ALL_MESSAGE_TYPES.values() if c not in m.PAYLOAD_TYPES.values()),
    key=lambda c: c.__name__,
)
client_ids = st.none() | st.text(max_size=36)


@pytest.mark.parametrize("cls", PAYLOAD_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), client_msg_id=client_ids)
def test_payload_messages_round_trip(
    cls: type[Message], data: st.DataObject, client_msg_id: str | None
) -> None:
    message = data.draw(messages(cls))
    decoded = m.decode_envelope(m.encode_message(message, client_msg_id))
    assert decoded.payload_type == m.payload_type_of(cls)
    assert decoded.client_msg_id == client_msg_id
    assert decoded.message == message


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_model_messages_round_trip_as_raw_payloads(cls: type[Message], data: st.DataObject) -> None:
    # Model messages never travel alone; carried under a payload type the schema does not
    # define, they come back as UnknownMessage with their bytes intact.
    message = data.draw(messages(cls))
    envelope = m.ProtoMessage(payloadType=60000, payload=message.SerializeToString())
    decoded = m.decode_envelope(envelope.SerializeToString())
    assert decoded.message == m.UnknownMessage(60000, message.SerializeToString())
    assert cls.FromString(decoded.message.payload) == message


def test_frame_has_big_endian_length_prefix() -> None:
    frame = m.encode_frame(m.ProtoHeartbeatEvent())
    (length,) = struct.unpack("!I", frame[:4])
    assert length == len(frame) - 4
    assert m.decode_envelope(frame[4:]).payload_type == 51


def test_client_msg_id_absent_is_none() -> None:
    decoded = m.decode_envelope(m.encode_message(m.ProtoOAVersionReq()))
    assert decoded.client_msg_id is None


def test_undecodable_envelope_is_a_typed_error() -> None:
    with pytest.raises(MalformedMessage) as info:
        m.decode_envelope(b"\xff\xff\xff")
    assert info.value.raw == b"\xff\xff\xff"
    assert info.value.payload_type is None


def test_envelope_without_required_payload_type() -> None:
    with pytest.raises(MalformedMessage):
        m.decode_envelope(m.ProtoMessage(payload=b"x").SerializePartialToString())


def test_undecodable_payload_of_known_type_carries_context() -> None:
    body = m.ProtoMessage(payloadType=2131, payload=b"\xff\xff", clientMsgId="c1")
    with pytest.raises(MalformedMessage) as info:
        m.decode_envelope(body.SerializeToString())
    assert info.value.payload_type == 2131
    assert info.value.client_msg_id == "c1"
    assert info.value.raw == b"\xff\xff"
    assert "ProtoOASpotEvent" in str(info.value)


def test_missing_required_field_is_tolerated_unless_strict() -> None:
    body = m.ProtoMessage(payloadType=2142, payload=b"", clientMsgId="c9").SerializeToString()
    lenient = m.decode_envelope(body)
    assert isinstance(lenient.message, m.ProtoOAErrorRes)
    assert lenient.message.errorCode == ""
    with pytest.raises(MalformedMessage, match="ProtoOAErrorRes lacks required fields: errorCode"):
        m.decode_envelope(body, strict=True)


def test_encoding_a_model_message_is_refused() -> None:
    with pytest.raises(KeyError):
        m.encode_message(m.ProtoOASymbol(symbolId=1))


# The fast path of decode_span / decode_envelope against the general decoder

_TWO_BYTE_TYPES = sorted(n for n in m.PAYLOAD_TYPES if 0x80 <= n <= 0x3FFF)


def _varint(value: int, padding: int = 0) -> bytes:
    """``value`` as a protobuf varint, with ``padding`` redundant continuation bytes."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if padding:
        out[-1] |= 0x80
        out += b"\x80" * (padding - 1) + b"\x00"
    return bytes(out)


@st.composite
def _payloads(draw: st.DrawFn, payload_type: int) -> bytes:
    cls = m.PAYLOAD_TYPES.get(payload_type)
    if cls is not None and draw(st.booleans()):
        message = draw(messages(cls))
        return bytes(message.SerializePartialToString())
    return draw(st.binary(max_size=200))


@st.composite
def _fields(draw: st.DrawFn) -> bytes:
    """Envelope bytes built field by field: common shapes and every oddity protobuf allows."""
    payload_type = draw(
        st.sampled_from(_TWO_BYTE_TYPES) | st.sampled_from([0, 5, 50, 51, 127, 9999, 2**32 - 1])
    )
    fields = [b"\x08" + _varint(payload_type, draw(st.sampled_from([0, 0, 0, 1])))]
    payload = draw(_payloads(payload_type))
    fields.append(b"\x12" + _varint(len(payload), draw(st.sampled_from([0, 0, 1]))) + payload)
    extras = draw(
        st.lists(
            st.sampled_from(["cmid", "cmid_bad_utf8", "payload", "type", "unknown", "wiretype"]),
            max_size=3,
        )
    )
    for extra in extras:
        if extra == "cmid":
            text = draw(st.text(max_size=10)).encode()
            fields.append(b"\x1a" + _varint(len(text)) + text)
        elif extra == "cmid_bad_utf8":
            fields.append(b"\x1a\x02\xff\xfe")
        elif extra == "payload":
            more = draw(_payloads(payload_type))
            fields.append(b"\x12" + _varint(len(more)) + more)
        elif extra == "type":
            fields.append(b"\x08" + _varint(draw(st.sampled_from(_TWO_BYTE_TYPES))))
        elif extra == "unknown":
            fields.append(b"\x20\x01")  # field 4, varint
        else:
            fields.append(b"\x10\x05")  # field 2 with the varint wire type
    order = draw(st.permutations(range(len(fields)))) if draw(st.booleans()) else None
    body = b"".join(fields[i] for i in order) if order else b"".join(fields)
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    return body


def _outcome(decode: Any, *args: Any) -> tuple[object, ...]:
    try:
        envelope = decode(*args)
    except MalformedMessage as error:
        return ("error", str(error), error.raw, error.payload_type, error.client_msg_id)
    message = envelope.message
    shown = message if isinstance(message, m.UnknownMessage) else (type(message), str(message))
    return ("ok", envelope.payload_type, envelope.client_msg_id, shown)


@settings(max_examples=300, deadline=None)
@given(body=_fields(), before=st.binary(max_size=6), after=st.binary(max_size=6))
def test_fast_path_decodes_as_the_general_decoder(body: bytes, before: bytes, after: bytes) -> None:
    expected = _outcome(_decode_general, body, False)
    assert _outcome(m.decode_envelope, body) == expected
    buffer = before + body + after
    assert _outcome(decode_span, buffer, len(before), len(before) + len(body)) == expected


def test_fast_path_shapes() -> None:
    """Spot events (one-byte length), large payloads (two-byte length) and the refusals."""
    spot = m.encode_message(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=2, bid=3))
    decoded = m.decode_envelope(spot)
    assert (decoded.payload_type, decoded.client_msg_id, decoded.message.bid) == (2131, None, 3)
    big = m.ProtoOASymbolsListRes(ctidTraderAccountId=1)
    for i in range(40):
        big.symbol.add(symbolId=i, symbolName=f"SYMBOL{i}", enabled=True)
    body = m.encode_message(big)
    assert body[4] >= 0x80
    assert len(body) > 200
    assert m.decode_envelope(body).message == big
    with_id = m.encode_message(big, "x1")
    assert m.decode_envelope(with_id).client_msg_id == "x1"


def test_plain_frames_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def general(data: bytes, strict: bool) -> m.Envelope:
        raise AssertionError("the general decoder was used")

    monkeypatch.setattr(_codec, "_decode_general", general)
    spot = m.encode_message(m.ProtoOASpotEvent(ctidTraderAccountId=1, symbolId=2, bid=3))
    assert m.decode_envelope(spot).message.bid == 3
    assert decode_span(b"xx" + spot + b"yy", 2, 2 + len(spot)).message.bid == 3
    with pytest.raises(AssertionError):
        m.decode_envelope(m.encode_message(m.ProtoOAVersionRes(version="1"), "id"))
