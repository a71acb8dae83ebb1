"""One connection's worth of client state: the hot dispatch path, pacing, heartbeats.

A :class:`Session` is the :class:`~ctrader_twisted.protocol.MessageHandler` of one
:class:`~ctrader_twisted.protocol.OpenApiProtocol`.  It owns everything that must not outlive the
connection: the rate limiters and their queues, the table of written requests by clientMsgId, the
heartbeat timer and the dead-link timer.  What must survive reconnects (listeners, accounts,
subscriptions, requests waiting for a ready session) belongs to the :class:`SessionOwner`, the
client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

from google.protobuf.message import Message
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ._failure import failure_of, failure_of_current
from ._logsummary import RepeatedLog
from ._pending import PendingRequest, State
from ._ratelimit import Lane, RateLimiter, Slot
from .errors import (
    ConnectionLost,
    MalformedMessage,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    error_from_message,
)
from .messages import (
    Envelope,
    ProtoErrorRes,
    ProtoHeartbeatEvent,
    ProtoOAErrorRes,
    UnknownMessage,
    encode_message,
    payload_type_of,
)
from .protocol import OpenApiProtocol

__all__ = ["Listener", "Session", "SessionOwner"]

#: A user callback, as the session calls it (listeners only exist for known payload types).
Listener = Callable[[Message | UnknownMessage], object]

#: Largest ``retryAfter`` honoured, in seconds: a refusal asking for longer holds its lane
#: this long.  The server's documented blocks are seconds; a huge value (a broken or hostile
#: server) would otherwise stop a whole request lane for the rest of the session.
MAX_RETRY_AFTER: Final = 60.0

_HEARTBEAT: Final = encode_message(ProtoHeartbeatEvent())
#: Seconds under which a timer is not worth setting: a float sum like ``now + 1e-15`` can
#: equal ``now``, and a timer due at once that finds nothing to do would then loop for ever.
_SLACK: Final = 1e-6
# Server errors, reported when they arrive without a clientMsgId (nothing else would show them).
_ERROR_TYPES: Final = frozenset(payload_type_of(cls) for cls in (ProtoOAErrorRes, ProtoErrorRes))


class SessionOwner(Protocol):
    """What a :class:`Session` reports to (the client)."""

    def next_client_msg_id(self) -> str:
        """A clientMsgId never used before by this client."""

    def session_connected(self, session: Session) -> None:
        """The connection is up; the restore sequence may begin."""

    def session_lost(self, session: Session, reason: Failure, unsent: list[PendingRequest]) -> None:
        """The connection ended.  ``unsent`` were still queued for the rate limit."""

    def start_send_timer(self, pending: PendingRequest) -> None:
        """``pending`` must wait to be written: start its send bound if it has none."""

    def internal_event(self, payload_type: int, message: Message) -> None:
        """A session-level event the client itself acts on (account disconnects etc.)."""


class Session:
    """Client side of one connection (an :class:`~ctrader_twisted.protocol.EventHandler`).

    :param owner: the client.
    :param clock: the client's clock.
    :param listeners: the client's listener table, shared (read here, written by the client).
    :param internal: payload types forwarded to :meth:`SessionOwner.internal_event`.
    :param repeated_log: the client's summarizer for warnings that can repeat per event.
    :param max_retry_after: cap in seconds on a refusal's ``retryAfter``.
    :param debug: log routine per-connection and per-message details (answers no request
        waits for) at debug level; off by default, since ``twistd`` writes every level.
    """

    _log = Logger()

    def __init__(
        self,
        owner: SessionOwner,
        clock: IReactorTime,
        *,
        listeners: Mapping[int, tuple[Listener, ...]],
        internal: frozenset[int],
        rate_limit: int,
        historical_rate_limit: int,
        rate_window: float,
        rate_margin: float,
        heartbeat_interval: float,
        dead_link_timeout: float,
        repeated_log: RepeatedLog,
        max_retry_after: float = MAX_RETRY_AFTER,
        debug: bool = False,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._listeners = listeners
        self._internal = internal
        self._special_types = internal | _ERROR_TYPES
        self._ordinary: Lane[PendingRequest] = Lane(
            RateLimiter(rate_limit, rate_window, rate_margin)
        )
        self._historical: Lane[PendingRequest] = Lane(
            RateLimiter(historical_rate_limit, rate_window, rate_margin)
        )
        self._heartbeat_interval = heartbeat_interval
        self._dead_link_timeout = dead_link_timeout
        self._repeated = repeated_log
        self._max_retry_after = max_retry_after
        self._debug = debug
        self.written: dict[str, PendingRequest] = {}
        self.protocol: OpenApiProtocol | None = None
        self.connected = False
        self.closed = False
        self._pacer: IDelayedCall | None = None
        self._heartbeat: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None

    # MessageHandler

    def connection_made(self, protocol: OpenApiProtocol) -> None:
        self.protocol = protocol
        self.connected = True
        now = self._clock.seconds()
        if self._heartbeat_interval > 0:
            self._heartbeat = self._clock.callLater(self._heartbeat_interval, self._beat)
        if self._dead_link_timeout > 0:
            self._watchdog = self._clock.callLater(self._dead_link_timeout, self._check_link)
        if self._debug:
            self._log.debug("connected at {now}", now=now)
        self._owner.session_connected(self)

    def envelope_received(self, protocol: OpenApiProtocol, envelope: Envelope) -> None:
        # Frames the protocol's fast lane did not take: answers (with a clientMsgId), events of
        # unknown types, and the rare event framed some other way.
        payload_type, client_msg_id, message = envelope
        if client_msg_id is not None:
            self._special(payload_type, client_msg_id, message)
        elif isinstance(message, UnknownMessage):  # nobody can listen to an unknown type
            self._repeated.warn(
                ("unknown-event", payload_type),
                "ignored an event of unknown payload type {payload_type} ({size} bytes)",
                payload_type=payload_type,
                size=len(message.payload),
            )
        else:
            self.event_received(protocol, payload_type, message)

    def event_received(
        self, protocol: OpenApiProtocol, payload_type: int, message: Message
    ) -> None:
        # The fast lane (see EventHandler): a known payload type without a clientMsgId.
        if payload_type in self._special_types:
            self._special(payload_type, None, message)
            return
        listeners = self._listeners.get(payload_type)
        if listeners is not None:
            for listener in listeners:
                try:
                    listener(message)
                except Exception:
                    self._listener_failed(listener, message)

    def _special(
        self, payload_type: int, client_msg_id: str | None, message: Message | UnknownMessage
    ) -> None:
        """An answer (it has a clientMsgId), a server error, or an event the client acts on."""
        if client_msg_id is not None:
            pending = self.written.pop(client_msg_id, None)
            if pending is not None:
                self._settle(pending, payload_type, message)
            else:
                self._stray(client_msg_id, payload_type)
        elif payload_type in _ERROR_TYPES:
            self._anonymous_error(message)
        if isinstance(message, UnknownMessage):
            return  # an answer of unknown type failed its request in _settle
        if payload_type in self._internal:
            self._owner.internal_event(payload_type, message)
        for listener in self._listeners.get(payload_type, ()):
            try:
                listener(message)
            except Exception:
                self._listener_failed(listener, message)

    def _listener_failed(self, listener: Listener, message: object) -> None:
        # Once per listener and message type, then a count per interval: a listener that
        # raises on every event must not write a traceback per event.
        name = type(message).__name__
        self._repeated.emit(
            LogLevel.critical,
            ("listener-failed", id(listener), name),
            "listener {listener!r} raised on {name}",
            failure=failure_of_current(),
            listener=listener,
            name=name,
        )

    def decode_failed(self, protocol: OpenApiProtocol, error: MalformedMessage) -> None:
        pending = self.written.pop(error.client_msg_id or "", None)
        if pending is not None:
            self._finish(pending, error)

    def connection_lost(self, protocol: OpenApiProtocol, reason: Failure) -> None:
        self.connected = False
        self.closed = True
        for timer in (self._pacer, self._heartbeat, self._watchdog):
            if timer is not None and timer.active():
                timer.cancel()
        self._pacer = self._heartbeat = self._watchdog = None
        written, self.written = self.written, {}
        if written:
            error = ConnectionLost(reason.getErrorMessage())
            for pending in written.values():
                self._finish(pending, error)
        unsent = [*self._ordinary.clear(), *self._historical.clear()]
        self._owner.session_lost(self, reason, unsent)

    # Sending

    def submit(self, pending: PendingRequest) -> None:
        """Write ``pending`` now if its rate limit allows, else queue it for the next slot."""
        lane = self._historical if pending.historical else self._ordinary
        slot = None if lane else lane.limiter.try_acquire(self._clock.seconds())
        if slot is not None:
            self._write(pending, slot)
            return
        pending.state = State.QUEUED
        lane.append(pending)
        self._owner.start_send_timer(pending)
        self._schedule()

    def forget(self, pending: PendingRequest) -> None:
        """Remove ``pending`` from this session (it was cancelled or timed out)."""
        if pending.state is State.QUEUED:
            (self._historical if pending.historical else self._ordinary).remove(pending)
        elif pending.state is State.WRITTEN and pending.client_msg_id is not None:
            self.written.pop(pending.client_msg_id, None)

    def close(self, abort: bool = True) -> None:
        """Close the connection (by default abruptly: no flush, no goodbye)."""
        if self.protocol is not None and self.connected:
            self.protocol.close(abort=abort)

    def _write(self, pending: PendingRequest, slot: Slot) -> None:
        protocol = self.protocol
        assert protocol is not None  # submit() is only called on connected sessions
        client_msg_id = self._owner.next_client_msg_id()
        pending.stop_timer()
        pending.client_msg_id = client_msg_id
        pending.rate_slot = slot
        pending.state = State.WRITTEN
        # Registered (and timed) before the write: a synchronous transport may answer at once.
        self.written[client_msg_id] = pending
        pending.timer = self._clock.callLater(pending.timeout, self._answer_timeout, pending)
        try:
            protocol.send_raw(pending.frame_body(client_msg_id))
        except Exception as error:
            self.written.pop(client_msg_id, None)
            self._finish(pending, error)

    def _schedule(self) -> None:
        now = self._clock.seconds()
        due: float | None = None
        for lane in (self._ordinary, self._historical):
            if lane:
                at = lane.limiter.next_free(now)
                due = at if due is None else min(due, at)
        pacer = self._pacer
        if pacer is not None and pacer.active():
            if due is not None and pacer.getTime() <= due:
                return
            pacer.cancel()
        self._pacer = None if due is None else self._clock.callLater(due - now, self._drain)

    def _drain(self) -> None:
        self._pacer = None
        now = self._clock.seconds()
        for lane in (self._ordinary, self._historical):
            while lane and self.connected:
                slot = lane.limiter.try_acquire(now)
                if slot is None:
                    break
                self._write(lane.popleft(), slot)
        if self.connected:
            self._schedule()

    # Answers

    def _settle(self, pending: PendingRequest, payload_type: int, message: object) -> None:
        pending.stop_timer()
        slot, pending.rate_slot = pending.rate_slot, None
        if slot is not None:
            slot.answered(self._clock.seconds())  # the server counted the request by now
        if not isinstance(message, Message):
            error: Exception = ProtocolError(
                f"unknown payload type {payload_type} in answer to {pending.name}"
            )
        else:
            found = error_from_message(message)
            if found is None and payload_type == pending.answer_type:
                pending.state = State.DONE
                pending.deferred.callback(message)
                return
            error = found or ProtocolError(
                f"unexpected {type(message).__name__} in answer to {pending.name}"
            )
        if isinstance(error, RateLimited) and not pending.trading and pending.retries_left > 0:
            self._requeue(pending, error)
            return
        self._finish(pending, error)

    def _requeue(self, pending: PendingRequest, error: RateLimited) -> None:
        """Queue ``pending`` to be sent again, first in its lane, and hold the whole lane
        (the server refuses the others too) for ``retryAfter``, or else for one window."""
        pending.retries_left -= 1
        lane = self._historical if pending.historical else self._ordinary
        limiter = lane.limiter
        # Without retryAfter: the server's window was full when it refused, so one window (plus
        # our margin) from now it has room for everything it had counted until then.
        wait = error.retry_after or limiter.window + limiter.margin
        if wait > self._max_retry_after:
            self._repeated.warn(
                "retry-after-capped",
                "{name} refused with retryAfter {asked:g} s; waiting {wait:g} s, the cap",
                name=pending.name,
                asked=wait,
                wait=self._max_retry_after,
            )
            wait = self._max_retry_after
        limiter.hold(self._clock.seconds() + wait)
        self._repeated.emit(
            LogLevel.info,
            ("rate-refused", pending.historical),
            "{name} refused for the rate limit ({code}); queued to be sent again",
            name=pending.name,
            code=error.code,
        )
        pending.state = State.QUEUED
        lane.requeue(pending)
        self._owner.start_send_timer(pending)
        self._schedule()

    def _finish(self, pending: PendingRequest, error: Exception) -> None:
        pending.stop_timer()
        if pending.state is State.DONE:
            return
        pending.state = State.DONE
        pending.deferred.errback(failure_of(error))

    def _answer_timeout(self, pending: PendingRequest) -> None:
        pending.timer = None
        if pending.client_msg_id is not None:
            self.written.pop(pending.client_msg_id, None)
        self._finish(pending, RequestTimeout(pending.name, pending.timeout, sent=True))

    def _anonymous_error(self, message: Message | UnknownMessage) -> None:
        # An error that names no request cannot fail one; the request it belonged to (if any)
        # still ends by its own timeout.
        error = error_from_message(message) if isinstance(message, Message) else None
        if error is not None:
            self._repeated.warn(
                ("anonymous-error", error.code),
                "server error without a clientMsgId: {code}: {description}",
                code=error.code,
                description=error.description,
            )

    def _stray(self, client_msg_id: str, payload_type: int) -> None:
        # Expected for the follow-up execution events of an order, or a late answer: routine,
        # so only logged when asked for.
        if not self._debug:
            return
        self._log.debug(
            "no request waits for clientMsgId {client_msg_id} (payload type {payload_type})",
            client_msg_id=client_msg_id,
            payload_type=payload_type,
        )

    # Heartbeats and dead-link detection, both without per-message work

    def _beat(self) -> None:
        protocol = self.protocol
        if protocol is None or not self.connected:
            return
        now = self._clock.seconds()
        left = protocol.last_sent + self._heartbeat_interval - now
        if left <= _SLACK:  # never a timer for a hair's breadth: it could fire at once again
            protocol.send_raw(_HEARTBEAT)
            left = self._heartbeat_interval
        self._heartbeat = self._clock.callLater(left, self._beat)

    def _check_link(self) -> None:
        # Progress is a completed frame (or a frame begun on an empty buffer), not a byte: a
        # peer that trickles one frame a byte at a time counts as silent.
        protocol = self.protocol
        if protocol is None or not self.connected:
            return
        now = self._clock.seconds()
        silent = now - protocol.last_progress
        if silent >= self._dead_link_timeout - _SLACK:
            self._watchdog = None
            if protocol.last_received > protocol.last_progress:
                self._log.warn(
                    "no frame completed for {silent:.1f} s although bytes still arrive "
                    "(last {trickle:.1f} s ago): dropping the connection",
                    silent=silent,
                    trickle=now - protocol.last_received,
                )
            else:
                self._log.warn(
                    "nothing received for {silent:.1f} s: dropping the connection", silent=silent
                )
            protocol.close(abort=True)
            return
        self._watchdog = self._clock.callLater(self._dead_link_timeout - silent, self._check_link)
