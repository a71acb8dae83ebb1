"""One outstanding request: its message, its Deferred, where it waits and its single timer.

A request moves through these states, and holds at most one timer at any time:

``WAITING``
    in the client's queue until a session is ready (timer: the send bound);
``QUEUED``
    in a session's rate-limit queue, also after the server refused it for its rate (timer:
    the send bound);
``WRITTEN``
    on the wire, in the session's table of written requests by clientMsgId (timer: the answer
    bound);
``DONE``
    its Deferred has fired.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from ._ratelimit import Slot
from .messages import ProtoMessage

__all__ = ["PendingRequest", "State", "encode_id"]

_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode_id(number: int) -> str:
    """Base-36 text of a non-negative counter value: short, unique, never reused."""
    if number == 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))


class State(enum.Enum):
    WAITING = "waiting"
    QUEUED = "queued"
    WRITTEN = "written"
    DONE = "done"


class PendingRequest:
    """Book-keeping for one request (internal; the public face is its :attr:`deferred`).

    :ivar payload: the request serialized when it was made (later changes to the caller's
        message object do not leak into the frame).
    :ivar session: the session the request is bound to (restore traffic), or ``None`` for a
        request that may go out on any ready session.
    """

    __slots__ = (
        "answer_type",
        "client_msg_id",
        "deferred",
        "historical",
        "name",
        "payload",
        "payload_type",
        "rate_slot",
        "retries_left",
        "send_timeout",
        "session",
        "state",
        "timeout",
        "timer",
        "trading",
    )

    def __init__(
        self,
        message: Message,
        *,
        payload_type: int,
        answer_type: int,
        trading: bool,
        historical: bool,
        timeout: float,
        send_timeout: float,
        retries: int,
        session: object | None = None,
        canceller: Callable[[Deferred[Message]], None] | None = None,
    ) -> None:
        self.name = type(message).__name__
        self.payload = message.SerializeToString()
        self.payload_type = payload_type
        self.answer_type = answer_type
        self.trading = trading
        self.historical = historical
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.retries_left = retries
        self.session = session
        self.state = State.WAITING
        self.client_msg_id: str | None = None
        self.timer: IDelayedCall | None = None
        #: The rate-limit token of the current attempt, until its answer arrives.
        self.rate_slot: Slot | None = None
        self.deferred: Deferred[Message] = Deferred(canceller)

    def frame_body(self, client_msg_id: str) -> bytes:
        """The envelope bytes (no length prefix) carrying ``client_msg_id``."""
        return ProtoMessage(
            payloadType=self.payload_type, payload=self.payload, clientMsgId=client_msg_id
        ).SerializeToString()

    def stop_timer(self) -> None:
        """Cancel the current timer, if it is still pending."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()

    def __repr__(self) -> str:
        return f"<PendingRequest {self.name} {self.state.value} id={self.client_msg_id}>"
