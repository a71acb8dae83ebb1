"""The framing protocol: 4-byte big-endian length prefixes around ``ProtoMessage`` envelopes.

:class:`OpenApiProtocol` turns a byte stream into :class:`~ctrader_twisted.messages.Envelope`
values and messages into frames, and nothing more.  It hands every decoded frame, every frame it
could not decode, and the start and end of the connection to its :class:`MessageHandler`; the
client (requests, heartbeats, reconnects) and the sandbox server (sessions) are such handlers.
The same class serves both ends of a connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from ._failure import failure_of
from ._logsummary import RepeatedLog
from .errors import FrameTooLarge, MalformedMessage, ProtocolError
from .messages import Envelope, decode_envelope, encode_message
from .messages._codec import PLAIN_HEADERS, _decode_general

__all__ = ["DEFAULT_MAX_LENGTH", "EventHandler", "MessageHandler", "OpenApiProtocol"]

_T = TypeVar("_T")
_Event = Callable[["MessageHandler", "OpenApiProtocol", int, Message], None]
_PREFIX: Final = struct.Struct("!I")
#: A length prefix and the first four bytes of the envelope after it.
_HEAD: Final = struct.Struct("!II")

#: Largest frame accepted, in bytes (16 MiB).  Twisted's default of 99,999 bytes would cut off
#: large symbol lists and history pages; the official SDK uses 15,000,000.
DEFAULT_MAX_LENGTH: Final = 16 * 1024 * 1024


class MessageHandler(Protocol):
    """What an :class:`OpenApiProtocol` reports to, always on the reactor thread."""

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        """The connection is up (for TLS: the handshake may still be under way)."""

    def envelope_received(self, protocol: OpenApiProtocol, envelope: Envelope) -> None:
        """A frame was decoded.  Unknown payload types arrive as ``UnknownMessage``."""

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        """A frame could not be decoded; the protocol goes on with the next one."""

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        """The connection ended.  ``reason`` wraps a :class:`ProtocolError` when we closed it
        because the peer broke the framing."""


class EventHandler(MessageHandler, Protocol):
    """A :class:`MessageHandler` with a fast lane for plain frames.

    A handler whose *class* defines :meth:`event_received` gets every plain frame (a known
    payload type and no clientMsgId: nearly every event, see
    :func:`~ctrader_twisted.messages._codec.decode_plain`) there, without an
    :class:`~ctrader_twisted.messages.Envelope` being built; other frames still arrive at
    :meth:`envelope_received`.  The method is looked up on the class, so that a wrapper that
    forwards unknown attributes to a handler does not bypass its own ``envelope_received``.
    """

    def event_received(
        self, protocol: OpenApiProtocol, payload_type: int, message: Message
    ) -> None:
        """Must do what ``envelope_received(protocol, Envelope(payload_type, None, message))``
        does."""


def _as_envelope(
    handler: MessageHandler, protocol: OpenApiProtocol, payload_type: int, message: Message
) -> None:
    """The fast lane of a handler without one: the plain frame as an :class:`Envelope`."""
    handler.envelope_received(protocol, Envelope(payload_type, None, message))


class OpenApiProtocol(Int32StringReceiver):
    """One Open API connection's framing.

    :param handler: receives decoded frames and connection events.
    :param clock: time source for :attr:`last_received`, :attr:`last_progress` and
        :attr:`last_sent`.
    :param max_length: largest accepted frame in bytes; a longer length prefix closes the
        connection with :class:`~ctrader_twisted.errors.FrameTooLarge`.
    :param repeated_log: where log lines that the peer can cause once per frame go
        (undecodable and zero-length frames); the client passes one that logs the first at
        once and then a summary per interval.  By default each line is logged.

    :ivar last_received: ``clock.seconds()`` when bytes last arrived.
    :ivar last_progress: ``clock.seconds()`` when the framing last made progress: a frame
        completed, or the first bytes of a frame arrived while nothing was buffered.  A peer
        that trickles a frame byte by byte moves :attr:`last_received` but not this, so a
        dead-link check on it sees a frame that never completes as silence.
    :ivar last_sent: ``clock.seconds()`` when a frame was last written.
    """

    _log = Logger()

    def __init__(
        self,
        handler: MessageHandler,
        clock: IReactorTime,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        repeated_log: RepeatedLog | None = None,
    ) -> None:
        self.MAX_LENGTH = max_length
        self.handler = handler
        self.clock = clock
        self.last_received = 0.0
        self.last_progress = 0.0
        self.last_sent = 0.0
        self._repeated = repeated_log
        self.frames_received = 0
        self.frames_sent = 0
        #: Set when we close the connection because the peer broke the protocol.
        self.close_reason: ProtocolError | None = None
        self.connected_now = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = 4
        # Twisted's default, as an instance attribute: the framing loop reads it once per frame,
        # and Python 3.11 finds an instance's own attribute about twice as fast as a class's.
        self.paused = False

    @property
    def broken(self) -> bool:
        """Whether we closed the connection because the peer broke the protocol."""
        return self.close_reason is not None

    # Twisted overrides

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self.last_received = self.last_progress = self.last_sent = now
        self.connected_now = True
        self.handler.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        # Our own loop rather than Int32StringReceiver's: chunks of a large frame are collected
        # in a list and joined once, so a 16 MiB frame in small reads costs linear time.
        if self.close_reason is not None:
            return  # framing is lost; drop everything until the close completes
        self.last_received = now = self.clock.seconds()
        if not self._buffered:
            self.last_progress = now  # a frame begins: it has until the dead-link bound
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered < self._needed:
            return  # no frame completes: no progress, however many bytes arrive
        buffer = b"".join(self._chunks) if len(self._chunks) > 1 else data
        offset = self._frames(buffer)
        if self.broken:
            return
        if offset:
            self.last_progress = now
        rest = buffer[offset:] if offset else buffer
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        self._needed = 4 + _PREFIX.unpack_from(rest)[0] if len(rest) >= 4 else 4

    def _frames(self, buffer: bytes) -> int:
        """Decode and deliver every whole frame in ``buffer``; return where the rest begins.

        The hot path of every connection: one loop over the frames of a read, each decoded in
        place and handed straight to the handler, without a call per frame through
        :meth:`stringReceived`.  One ``struct`` call reads a frame's length prefix and the
        first four bytes of its envelope; for a plain frame (what
        :func:`~ctrader_twisted.messages._codec.decode_plain` accepts, checked here inline)
        the payload is parsed once and goes to the handler's fast lane if it has one
        (:class:`EventHandler`).  Any other frame takes :meth:`_other_frame`.
        """
        size = len(buffer)
        offset = count = 0
        limit = self.MAX_LENGTH
        handler = self.handler
        event: _Event = getattr(type(handler), "event_received", None) or _as_envelope
        plain = PLAIN_HEADERS
        unpack, unpack_head = _PREFIX.unpack_from, _HEAD.unpack_from
        while not self.paused:
            if size - offset >= 8:
                length, head = unpack_head(buffer, offset)
            elif size - offset >= 4:
                (length,), head = unpack(buffer, offset), -1
            else:
                break
            start = offset + 4
            end = start + length
            if end > size or length > limit:
                if length > limit:
                    self.lengthLimitExceeded(length)
                break
            offset = end
            count += 1
            known = plain.get(head)
            if known is not None and length > 4:
                payload_size = buffer[start + 4]  # a varint of one byte, or two
                if payload_size <= 0x7F:
                    begin = start + 5
                elif length > 5 and buffer[start + 5] <= 0x7F:
                    payload_size = (payload_size & 0x7F) | (buffer[start + 5] << 7)
                    begin = start + 6
                else:
                    begin = end  # a longer varint: not plain (payload_size is not 0)
                if begin + payload_size == end:
                    try:
                        message = known[1](buffer[begin:end])
                    except DecodeError:
                        pass  # not plain after all: the general decoder reports it
                    else:
                        try:
                            event(handler, self, known[0], message)
                        except Exception:
                            self._handler_failed()
                        continue
            self._other_frame(buffer, start, end)
        self.frames_received += count
        return offset

    def _other_frame(self, buffer: bytes, start: int, end: int) -> None:
        """Decode and deliver the frame ``buffer[start:end]`` that is not plain."""
        if start == end:
            self._zero_length()
            return
        try:
            # The loop has already ruled out the plain shape: straight to the general decoder.
            envelope = _decode_general(buffer[start:end], False)
        except MalformedMessage as error:
            self._undecodable(error)
            return
        self._safely(self.handler.envelope_received, envelope)

    def stringReceived(self, string: bytes) -> None:
        """Decode and deliver one frame body (the framing loop does the same inline)."""
        self.frames_received += 1
        if not string:
            self._zero_length()
            return
        try:
            envelope = decode_envelope(string)
        except MalformedMessage as error:
            self._undecodable(error)
            return
        self._safely(self.handler.envelope_received, envelope)

    @property
    def repeated_log(self) -> RepeatedLog:
        """Where per-frame log lines go (without one given: one that logs each line)."""
        if self._repeated is None:
            self._repeated = RepeatedLog(self._log, self.clock, interval=0)
        return self._repeated

    def _zero_length(self) -> None:
        self.repeated_log.emit(LogLevel.debug, "zero-length", "ignored a zero-length frame")

    def _undecodable(self, error: MalformedMessage) -> None:
        self.repeated_log.warn("undecodable", "could not decode a frame: {error}", error=error)
        self._safely(self.handler.decode_failed, error)

    def _handler_failed(self) -> None:
        # A bug of ours, not something the peer chose: every traceback is kept.
        self._log.failure("unhandled error in {handler}", handler=type(self.handler).__name__)

    def lengthLimitExceeded(self, length: int) -> None:
        error = FrameTooLarge(length, self.MAX_LENGTH)
        self._log.error("closing the connection: {error}", error=error)
        self.close_reason = error
        self._chunks = []
        self._buffered = 0
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_now = False
        if self.close_reason is not None:
            reason = failure_of(self.close_reason)
        self._safely(self.handler.connection_lost, reason)

    # Our API

    def send(self, message: Message, client_msg_id: str | None = None) -> None:
        """Frame and write ``message`` with an optional clientMsgId.

        :raises KeyError: if ``message`` has no payload type.
        :raises google.protobuf.message.EncodeError: if a required field is missing.
        """
        self.send_raw(encode_message(message, client_msg_id))

    def send_raw(self, body: bytes) -> None:
        """Write one already-encoded envelope, adding the length prefix."""
        self.sendString(body)

    def sendString(self, string: bytes) -> None:
        """Write ``string`` as one frame (length prefix added)."""
        if self.transport is None:
            raise RuntimeError("not connected")
        self.transport.write(_PREFIX.pack(len(string)) + string)
        self.frames_sent += 1
        self.last_sent = self.clock.seconds()

    def close(self, abort: bool = False) -> None:
        """Close the connection; ``abort=True`` drops it at once without flushing."""
        if self.transport is None:
            return
        abort_connection = getattr(self.transport, "abortConnection", None)
        if abort and abort_connection is not None:
            abort_connection()
        else:
            self.transport.loseConnection()

    def _safely(self, method: Callable[[OpenApiProtocol, _T], None], argument: _T) -> None:
        try:
            method(self, argument)
        except Exception:
            self._handler_failed()
