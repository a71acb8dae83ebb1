"""The payload-type registry is complete and one-to-one, and pairs every request."""

from __future__ import annotations

import pytest

from ctrader_twisted import messages as m


def _enum_values() -> dict[str, int]:
    values: dict[str, int] = {}
    for enum in (m.ProtoPayloadType, m.ProtoOAPayloadType):
        for name, number in enum.items():
            values[name] = number
    return values


def test_every_payload_type_but_the_envelope_maps_to_one_class() -> None:
    values = _enum_values()
    assert len(values) == 92
    del values["PROTO_MESSAGE"]
    assert sorted(values.values()) == sorted(m.PAYLOAD_TYPES)
    classes = list(m.PAYLOAD_TYPES.values())
    assert len(set(classes)) == len(classes) == 91


@pytest.mark.parametrize("number", sorted(m.PAYLOAD_TYPES))
def test_both_directions_agree(number: int) -> None:
    cls = m.message_class(number)
    assert m.payload_type_of(cls) == number
    assert m.payload_type_of(cls()) == number
    assert cls().payloadType == number  # the schema default is the registry key


def test_model_messages_have_no_payload_type() -> None:
    assert len(m.ALL_MESSAGE_TYPES) == 119
    models = [c for c in m.ALL_MESSAGE_TYPES.values() if c not in m.PAYLOAD_TYPES.values()]
    assert len(models) == 28
    assert m.ProtoOASymbol in models
    assert m.ProtoMessage in models
    with pytest.raises(KeyError, match="ProtoOASymbol has no payload type"):
        m.payload_type_of(m.ProtoOASymbol)


def test_unknown_payload_type_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="unknown payload type 9999"):
        m.message_class(9999)


def test_names_are_importable_from_the_package() -> None:
    for name, cls in m.ALL_MESSAGE_TYPES.items():
        assert getattr(m, name) is cls
        assert name in m.__all__


def test_request_pairs() -> None:
    requests = [c for n, c in m.ALL_MESSAGE_TYPES.items() if n.endswith("Req")]
    assert set(requests) == set(m.RESPONSE_TYPES)
    assert m.response_type(m.ProtoOAVersionReq) is m.ProtoOAVersionRes
    assert m.response_type(m.ProtoOASubscribeLiveTrendbarReq()) is m.ProtoOASubscribeLiveTrendbarRes
    for trading in m.TRADING_REQUESTS:
        assert m.response_type(trading) is m.ProtoOAExecutionEvent
        assert m.is_trading(trading)
    assert len(m.TRADING_REQUESTS) == 5
    for request, response in m.RESPONSE_TYPES.items():
        if request not in m.TRADING_REQUESTS:
            assert response.__name__ == request.__name__[:-3] + "Res"
    with pytest.raises(KeyError, match="not a request type"):
        m.response_type(m.ProtoOASpotEvent)


def test_historical_requests() -> None:
    assert m.is_historical(m.ProtoOAGetTrendbarsReq())
    assert m.is_historical(m.ProtoOAGetTickDataReq)
    assert m.is_historical(m.ProtoOADealListReq)
    assert not m.is_historical(m.ProtoOAVersionReq)
    assert set(m.RESPONSE_TYPES) >= m.HISTORICAL_REQUESTS
