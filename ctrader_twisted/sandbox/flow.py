"""Flow control on the sandbox's side of a connection: notice a client that stops reading.

Each :class:`~ctrader_twisted.sandbox.session.Session` registers an :class:`OutputFlow` as the
streaming producer of its transport.  The transport pauses it when its write buffer fills (for
TCP: the kernel's socket buffers are full and more than 64 KiB wait in the process, that is,
the client reads slower than the sandbox writes, or not at all) and resumes it once the buffer
has drained.  The session asks :attr:`OutputFlow.paused` before writing market data, so a
client that stops reading costs a bounded amount of memory instead of an ever-growing buffer.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

__all__ = ["OutputFlow"]


@implementer(IPushProducer)
class OutputFlow:
    """The push producer one session registers on its transport.

    :param clock: times pauses.
    :param timeout: seconds a single pause may last before ``on_stuck`` is called (0: never).
    :param backlog_limit: bytes that may be written during one pause before ``on_stuck`` is
        called (0: no limit).
    :param on_resume: called after every resume (the session re-sends current prices).
    :param on_stuck: called once per pause with a reason when a limit is exceeded (the session
        aborts the connection).

    :ivar paused: whether the transport asked us to stop writing.
    :ivar backlog: bytes written since the current pause began.
    :ivar pauses: how many times the transport paused us.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float,
        backlog_limit: int,
        on_resume: Callable[[], None],
        on_stuck: Callable[[str], None],
    ) -> None:
        self.paused = False
        self.backlog = 0
        self.pauses = 0
        self._clock = clock
        self._timeout = timeout
        self._backlog_limit = backlog_limit
        self._on_resume = on_resume
        self._on_stuck = on_stuck
        self._consumer: object | None = None
        self._timer: IDelayedCall | None = None
        self._stuck = False
        self._attached: list[IPushProducer] = []

    def __repr__(self) -> str:
        return f"<OutputFlow paused={self.paused} backlog={self.backlog} pauses={self.pauses}>"

    # Registration

    def register(self, transport: object) -> None:
        """Register as ``transport``'s streaming producer (if it takes producers)."""
        register = getattr(transport, "registerProducer", None)
        if register is not None and self._consumer is None:
            register(self, True)
            self._consumer = transport

    def unregister(self) -> None:
        """Let go of the transport (before closing it: a transport with a registered producer
        does not finish closing) and forget any pause."""
        consumer, self._consumer = self._consumer, None
        self._cancel_timer()
        self.paused = False
        # Once the transport has stopped us (connection lost) it holds no producer any more.
        unregister = getattr(consumer, "unregisterProducer", None)
        if unregister is not None:
            unregister()

    def attach(self, producer: IPushProducer) -> None:
        """Relay this connection's pause and resume signals to ``producer`` too.

        The transport has room for one producer and this flow holds it; a tool that writes in
        bulk to a session (a benchmark burst) attaches its own producer here instead.
        """
        self._attached.append(producer)
        if self.paused:
            producer.pauseProducing()

    def detach(self, producer: IPushProducer) -> None:
        """Stop relaying signals to ``producer``."""
        if producer in self._attached:
            self._attached.remove(producer)

    # Accounting

    def wrote(self, size: int) -> None:
        """Count ``size`` bytes written; while paused, check the backlog limit."""
        if not self.paused:
            return
        self.backlog += size
        if self._backlog_limit and self.backlog > self._backlog_limit:
            self._give_up(
                f"{self.backlog} bytes written while the client was not reading "
                f"(limit {self._backlog_limit})"
            )

    # IPushProducer

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        self.backlog = 0
        self._stuck = False
        if self._timeout > 0 and self._consumer is not None:
            self._timer = self._clock.callLater(self._timeout, self._expired)
        for producer in list(self._attached):
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._cancel_timer()
        for producer in list(self._attached):
            producer.resumeProducing()
        self._on_resume()

    def stopProducing(self) -> None:
        self._consumer = None
        self._cancel_timer()
        attached, self._attached = self._attached, []
        for producer in attached:
            producer.stopProducing()

    # Internals

    def _expired(self) -> None:
        self._timer = None
        self._give_up(f"the client took none of its output for {self._timeout:g} s")

    def _give_up(self, reason: str) -> None:
        if self._stuck:
            return
        self._stuck = True
        self._cancel_timer()
        self._on_stuck(reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
