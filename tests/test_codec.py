"""Envelope codec: round trips for all 119 message types, and clear errors on bad input."""

from __future__ import annotations

import struct

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrader_twisted import messages as m
from ctrader_twisted.errors import MalformedMessage

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
