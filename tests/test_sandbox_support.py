"""Shared helpers for the sandbox tests: a raw server connection over a StringTransport."""

from __future__ import annotations

import struct
from typing import Final, TypeVar

from google.protobuf.message import Message
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from ctrader_twisted import messages as m
from ctrader_twisted.protocol import OpenApiProtocol
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SandboxConfig,
    SandboxFactory,
)

#: 2023-11-14 22:13:20 UTC, a Tuesday: FX, metals and indices are open.
START: Final = 1_700_000_000.0
USD_ACCOUNT: Final = 5000001
EUR_ACCOUNT: Final = 5000002
_T = TypeVar("_T", bound=Message)


def make_factory(config: SandboxConfig | None = None, start: float = START) -> SandboxFactory:
    clock = Clock()
    clock.advance(start)
    return SandboxFactory(config or SandboxConfig(), clock)


def decode_frames(data: bytes) -> list[m.Envelope]:
    out = []
    offset = 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack_from("!I", data, offset)
        out.append(m.decode_envelope(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    assert offset == len(data), "trailing partial frame"
    return out


class Wire:
    """One raw connection to a sandbox factory, driven by hand."""

    def __init__(self, factory: SandboxFactory | None = None, **config: object) -> None:
        self.factory = factory or make_factory(SandboxConfig(**config))  # type: ignore[arg-type]
        self.clock: Clock = self.factory.clock  # type: ignore[assignment]
        self.transport = StringTransportWithDisconnection()
        protocol = self.factory.buildProtocol(None)
        self.protocol: OpenApiProtocol = protocol
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        self._seen = 0
        self._counter = 0

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)

    def send(self, message: Message, cmid: str | None = None) -> None:
        self.protocol.dataReceived(m.encode_frame(message, cmid))

    def received(self) -> list[m.Envelope]:
        self.clock.advance(0)  # history work waiting for its next slice runs now
        data = self.transport.value()
        new, self._seen = data[self._seen :], len(data)
        return decode_frames(new)

    def request(self, message: Message, cmid: str | None = "") -> list[m.Envelope]:
        if cmid == "":
            self._counter += 1
            cmid = f"c{self._counter}"
        self.send(message, cmid)
        return self.received()

    def one(self, message: Message, expected: type[_T]) -> _T:
        """Send ``message``; expect exactly one answer of type ``expected``, echoing clientMsgId."""
        frames = self.request(message, "one")
        assert len(frames) >= 1, "no answer"
        answer = frames[0]
        assert answer.client_msg_id == "one", answer
        assert isinstance(answer.message, expected), answer.message
        return answer.message

    def error(self, message: Message) -> str:
        """Send ``message``; return the error code of the error that answers it."""
        frames = self.request(message, "err")
        answer = frames[0]
        assert answer.client_msg_id == "err", answer
        assert isinstance(
            answer.message, m.ProtoOAErrorRes | m.ProtoErrorRes | m.ProtoOAOrderErrorEvent
        ), answer.message
        return str(answer.message.errorCode)

    def auth_app(self) -> None:
        req = m.ProtoOAApplicationAuthReq(
            clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
        )
        self.one(req, m.ProtoOAApplicationAuthRes)

    def auth_account(
        self, account_id: int = USD_ACCOUNT, token: str = DEFAULT_ACCESS_TOKEN
    ) -> None:
        req = m.ProtoOAAccountAuthReq(ctidTraderAccountId=account_id, accessToken=token)
        self.one(req, m.ProtoOAAccountAuthRes)

    def ready(self, *accounts: int) -> Wire:
        self.auth_app()
        for account in accounts or (USD_ACCOUNT,):
            self.auth_account(account)
        return self

    def close(self) -> None:
        self.transport.loseConnection()
