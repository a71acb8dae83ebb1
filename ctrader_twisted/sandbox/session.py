"""One client connection to the sandbox: its state machine, timers, limits and faults.

A :class:`Session` is the :class:`~ctrader_twisted.protocol.MessageHandler` of one server-side
:class:`~ctrader_twisted.protocol.OpenApiProtocol`.  It checks every inbound frame in the order
the real server is believed to: rate limit, application authorization, known request type,
account authorization; then hands the request to the handler registered for its type.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import Message
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import messages as m
from ..errors import MalformedMessage
from ..protocol import OpenApiProtocol
from .flow import OutputFlow
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .server import SandboxFactory

__all__ = ["Handler", "SandboxProtocol", "Session"]

#: A request handler: (session, request, clientMsgId).
Handler = Callable[["Session", Any, "str | None"], None]

_HEARTBEAT: Final = m.payload_type_of(m.ProtoHeartbeatEvent)
_APP_AUTH: Final = m.payload_type_of(m.ProtoOAApplicationAuthReq)
_ACCOUNT_AUTH: Final = m.payload_type_of(m.ProtoOAAccountAuthReq)
#: Payload types of requests that name an account (all need account authorization).
_ACCOUNT_SCOPED: Final = frozenset(
    n
    for n, cls in m.PAYLOAD_TYPES.items()
    if cls in m.RESPONSE_TYPES and "ctidTraderAccountId" in cls.DESCRIPTOR.fields_by_name
) - {_ACCOUNT_AUTH}
#: Bytes sent by the corrupt-frame fault: a length prefix and a body that is no ProtoMessage.
CORRUPT_FRAME: Final = b"\x00\x00\x00\x06\xff\xff\xff\xff\xff\xff"


class SandboxProtocol(OpenApiProtocol):
    """The server side's framing: answers an oversize frame with ``FRAME_TOO_LONG`` first, and
    tells the session before any clean close (:meth:`Session.prepare_close`), however the close
    was started."""

    def lengthLimitExceeded(self, length: int) -> None:
        if self.transport is not None and self.close_reason is None:
            description = f"Message is too large ({length} bytes; limit {self.MAX_LENGTH})"
            self.send(m.ProtoErrorRes(errorCode="FRAME_TOO_LONG", description=description))
            self._prepare_close()
        super().lengthLimitExceeded(length)

    def close(self, abort: bool = False) -> None:
        if not abort:
            self._prepare_close()
        super().close(abort)

    def _prepare_close(self) -> None:
        prepare = getattr(self.handler, "prepare_close", None)
        if callable(prepare):
            prepare()


class Session:
    """Server-side state of one connection.

    :ivar protocol: the connection's protocol (tools may write raw frames through it).
    :ivar accounts: authorized account ids, with the access token each was authorized with.
    :ivar flow: the producer registered on the transport; ``flow.paused`` while the client
        is not taking the sandbox's output (market data is dropped meanwhile).
    """

    _log = Logger()

    def __init__(self, factory: SandboxFactory, handlers: dict[int, Handler]) -> None:
        self.factory = factory
        self.config = factory.config
        self.clock = factory.clock
        self.protocol: OpenApiProtocol | None = None
        self.app_authorized = False
        self.accounts: dict[int, str] = {}
        self.received = 0
        #: Set when the connection was refused for the connection cap.
        self.refused = False
        #: Set when the application was not authorized in time.
        self.auth_expired = False
        self.stalled = False
        self.closed = False
        self.closing = False
        self._handlers = handlers
        self._limiter = RateLimiter(
            self.clock, self.config.rate_limit, self.config.historical_rate_limit
        )
        self._heartbeat: LoopingCall | None = None
        self._timers: list[IDelayedCall] = []
        self._idle_call: IDelayedCall | None = None
        self._close_prepared = False
        self.flow = OutputFlow(
            self.clock,
            timeout=self.config.slow_reader_timeout,
            backlog_limit=self.config.slow_reader_backlog,
            on_resume=self._resumed,
            on_stuck=self._stuck,
        )

    def __repr__(self) -> str:
        return f"<Session accounts={sorted(self.accounts)} received={self.received}>"

    # MessageHandler

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.protocol = protocol
        self.flow.register(protocol.transport)
        _no_delay(protocol.transport)
        self.factory.session_opened(self)
        cap = self.config.max_connections
        if cap and sum(not s.refused for s in self.factory.sessions) > cap:
            # (connections refused earlier and still closing do not count)
            self.refused = True
            self.factory.stats.connections_refused += 1
            text = f"Limit of connections is reached ({cap} open)"
            self.error("CONNECTIONS_LIMIT_EXCEEDED", text, None, at_once=True)
            self.close()
            return
        if self.config.app_auth_timeout > 0:
            self._later(self.config.app_auth_timeout, self._app_auth_expired)
        if self.config.heartbeat_interval > 0:
            self._heartbeat = LoopingCall(self._send_heartbeat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(self.config.heartbeat_interval, now=False)
        if self.config.idle_timeout > 0:
            self._idle_call = self.clock.callLater(self.config.idle_timeout, self._check_idle)
        if self.config.drop_after_seconds is not None:
            self._later(self.config.drop_after_seconds, self.drop)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
        if self.stalled or self.closing:
            return
        self.received += 1
        stats = self.factory.stats
        stats.frames_received += 1
        if envelope.payload_type != _HEARTBEAT:
            counts = stats.requests_by_payload_type
            counts[envelope.payload_type] = counts.get(envelope.payload_type, 0) + 1
            self._handle(envelope)
        self._apply_message_faults()

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        if self.stalled or self.closing:
            return
        self.factory.stats.frames_received += 1
        self.common_error("INVALID_REQUEST", f"Cannot decode the message: {error}", None)
        self.close()

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.closed = self.closing = True
        self.flow.stopProducing()
        self._stop_timers()
        self.factory.session_closed(self)

    # Dispatch

    def _handle(self, envelope: m.Envelope) -> None:
        cmid = envelope.client_msg_id
        message = envelope.message
        if not self._admit(envelope, cmid):
            return
        if not isinstance(message, Message):
            text = f"Payload type {envelope.payload_type} is not supported"
            self.common_error("UNSUPPORTED_MESSAGE", text, cmid)
            return
        if not self.app_authorized and envelope.payload_type != _APP_AUTH:
            text = "Open API application is not authorized on this connection"
            self.error("CH_CLIENT_NOT_AUTHENTICATED", text, cmid)
            return
        handler = self._handlers.get(envelope.payload_type)
        if handler is None:
            text = f"{type(message).__name__} is not a request the server accepts"
            self.common_error("UNSUPPORTED_MESSAGE", text, cmid)
            return
        if envelope.payload_type in _ACCOUNT_SCOPED:
            account_id = int(getattr(message, "ctidTraderAccountId", 0))
            if account_id not in self.accounts:
                text = f"Trading account {account_id} is not authorized on this connection"
                self.error("ACCOUNT_NOT_AUTHORIZED", text, cmid, account_id=account_id)
                return
        handler(self, message, cmid)

    def _admit(self, envelope: m.Envelope, cmid: str | None) -> bool:
        cls = m.PAYLOAD_TYPES.get(envelope.payload_type)
        wait = self._limiter.admit(cls is not None and m.is_historical(cls))
        if wait is None:
            return True
        self.refuse_rate(cmid, wait=wait)
        return False

    def refuse_rate(self, cmid: str | None, *, wait: float = 1.0, work: bool = False) -> None:
        """Answer a request over the rate limit, or (``work``) a history request while the
        connection already has ``max_pending_work`` in progress, as the rate-limit mode says."""
        stats = self.factory.stats
        if work:
            stats.work_refused += 1
        else:
            stats.rate_limited += 1
        if self.config.rate_limit_mode == "blocked":
            text = "Payload type is blocked: the rate limit of requests is reached"
            self.error("BLOCKED_PAYLOAD_TYPE", text, cmid, retry_after=max(1, math.ceil(wait)))
        else:
            self.error(
                "REQUEST_FREQUENCY_EXCEEDED", "You have reached the rate limit of requests", cmid
            )

    def authorize_application(self) -> None:
        """The application is authorized on this connection: lift the pre-auth frame limit."""
        self.app_authorized = True
        if self.protocol is not None:
            self.protocol.MAX_LENGTH = self.config.max_frame

    def _app_auth_expired(self) -> None:
        if self.app_authorized or self.closing or self.closed or self.stalled:
            return
        self.auth_expired = True
        self.factory.stats.app_auth_timeouts += 1
        timeout = self.config.app_auth_timeout
        text = f"Open API application was not authorized within {timeout:g} s"
        self.error("CH_CLIENT_NOT_AUTHENTICATED", text, None, at_once=True)
        self.close()

    # Sending

    def reply(self, message: Message, cmid: str | None) -> None:
        """Answer a request (subject to the ``response_delay`` fault)."""
        delay = self.config.response_delay
        if delay:
            self._later(delay, self._write, message, cmid)
        else:
            self._write(message, cmid)

    def push(self, message: Message) -> None:
        """Send an unsolicited event at once."""
        self._write(message, None)

    def push_frames(self, frames: Sequence[bytes]) -> None:
        """Send unsolicited events already framed (length prefix included) in one write.

        The market feed encodes an event once and hands the same bytes to every subscriber.
        """
        protocol = self.protocol
        if self.stalled or self.closed or protocol is None or protocol.transport is None:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        protocol.transport.write(data)
        protocol.frames_sent += len(frames)
        protocol.last_sent = self.clock.seconds()
        self.factory.stats.frames_sent += len(frames)
        self.flow.wrote(len(data))

    def error(
        self,
        code: str,
        description: str,
        cmid: str | None,
        *,
        account_id: int | None = None,
        retry_after: int | None = None,
        at_once: bool = False,
    ) -> None:
        """Answer with a ``ProtoOAErrorRes`` (``at_once``: written now, even under the
        ``response_delay`` fault, because the connection is closed right after)."""
        res = m.ProtoOAErrorRes(errorCode=code, description=description)
        if account_id is not None:
            res.ctidTraderAccountId = account_id
        if retry_after is not None:
            res.retryAfter = retry_after
        self._count_error(code)
        if at_once:
            self._write(res, cmid)
        else:
            self.reply(res, cmid)

    def common_error(self, code: str, description: str, cmid: str | None) -> None:
        """Answer with a common ``ProtoErrorRes``."""
        self._count_error(code)
        self.reply(m.ProtoErrorRes(errorCode=code, description=description), cmid)

    def order_error(
        self,
        account_id: int,
        code: str,
        description: str,
        cmid: str | None,
        *,
        order_id: int | None = None,
        position_id: int | None = None,
    ) -> None:
        """Answer a trading request with a ``ProtoOAOrderErrorEvent``."""
        event = m.ProtoOAOrderErrorEvent(
            ctidTraderAccountId=account_id, errorCode=code, description=description
        )
        if order_id is not None:
            event.orderId = order_id
        if position_id is not None:
            event.positionId = position_id
        self._count_error(code)
        self.reply(event, cmid)

    def _count_error(self, code: str) -> None:
        errors = self.factory.stats.errors_by_code
        errors[code] = errors.get(code, 0) + 1

    def _write(self, message: Message, cmid: str | None) -> None:
        protocol = self.protocol
        if self.stalled or self.closed or protocol is None or protocol.transport is None:
            return
        body = m.encode_message(message, cmid)
        protocol.send_raw(body)
        self.factory.stats.frames_sent += 1
        self.flow.wrote(len(body) + 4)

    def _send_heartbeat(self) -> None:
        self.push(m.ProtoHeartbeatEvent())

    # Ending and faults

    def close(self) -> None:
        """Close the connection cleanly (pending output is flushed first)."""
        if self.protocol is not None and not self.closing:
            self.prepare_close()
            self.protocol.close()

    def prepare_close(self) -> None:
        """A clean close is starting: end the subscriptions, unregister the producer (a
        transport with a registered producer never finishes closing), and abort the
        connection if the close has not completed after ``close_timeout``."""
        if self._close_prepared or self.closed:
            return
        self._close_prepared = self.closing = True
        self.factory.feed.remove(self)
        self.flow.unregister()
        if self.config.close_timeout > 0:
            self._later(self.config.close_timeout, self._close_expired)

    def _close_expired(self) -> None:
        if not self.closed:
            self._log.warn(
                "aborting a connection that did not finish closing in {timeout} s",
                timeout=self.config.close_timeout,
            )
            self.factory.stats.close_timeouts += 1
            self.drop()

    def drop(self) -> None:
        """Abort the connection at once."""
        if self.protocol is not None and not self.closed:
            self.closing = True
            self.protocol.close(abort=True)

    def stall(self) -> None:
        """Stop answering and writing without closing: the peer sees silence, no FIN.

        Inbound bytes are still read and discarded, so the session ends when the peer gives
        up (FIN or reset); its subscriptions and timers end at once.
        """
        if self.stalled or self.closed:
            return
        self.stalled = True
        self._stop_timers()
        self.flow.unregister()
        self.factory.feed.remove(self)

    def _resumed(self) -> None:
        if not (self.stalled or self.closing):
            self.factory.feed.resync(self)

    def _stuck(self, reason: str) -> None:
        self._log.warn(
            "aborting a connection whose client stopped reading: {reason}", reason=reason
        )
        self.factory.stats.slow_readers_aborted += 1
        self.drop()

    def _apply_message_faults(self) -> None:
        config, count = self.config, self.received
        transport = self.protocol.transport if self.protocol is not None else None
        if count == config.corrupt_frame_after and transport is not None:
            transport.write(CORRUPT_FRAME)
        if config.stall_after_messages is not None and count >= config.stall_after_messages:
            self.stall()
        elif config.drop_after_messages is not None and count >= config.drop_after_messages:
            self.close()

    def _check_idle(self) -> None:
        self._idle_call = None
        if self.closed or self.stalled or self.protocol is None:
            return
        quiet = self.clock.seconds() - self.protocol.last_received
        if quiet >= self.config.idle_timeout:
            self._log.info("closing a connection idle for {quiet:.1f} s", quiet=quiet)
            self.close()
        else:
            delay = self.config.idle_timeout - quiet
            self._idle_call = self.clock.callLater(delay, self._check_idle)

    def _later(self, delay: float, function: Callable[..., object], *args: object) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.clock.callLater(delay, function, *args))

    def _stop_timers(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []


def _no_delay(transport: object) -> None:
    """Turn Nagle's algorithm off on a TCP transport (through TLS too): market data is many
    small writes, and with it on a write waits for the client to acknowledge the last one,
    which a client may delay by 40 ms."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if callable(set_no_delay):
        with contextlib.suppress(OSError):  # (not a TCP socket after all)
            set_no_delay(True)
