"""Client-side rate limiting: a token bucket whose spent tokens come back one window later.

A :class:`RateLimiter` with ``limit`` tokens lets at most ``limit`` requests be counted by the
server in any window, whether it counts per fixed second, per sliding second, or with a token
bucket of that size.  Each request takes a token (a :class:`Slot`) when it is written; the token
comes back one ``window`` after the time the server may have counted the request, so pacing is
exact: the next free slot is always ``oldest counted + window``.  The owner schedules one timer
for that instant; there is no polling.

When does the server count a request?  It counts *arrivals*, not our writes, and a request that
was delayed on the way (a busy server, scheduling, the network) is counted late; a request
written exactly one window after it could then arrive less than a window after it and be
refused.  So a slot's count time is first the write time plus a ``margin`` (a few tens of
milliseconds), and when the answer arrives it moves up to the answer's arrival if that is
later: the server cannot have counted a request after answering it.  Below the limit no
request waits; over it, pacing adapts to the server's real delays.

A :class:`Lane` is a limiter with the requests waiting for it: requests that the server refused
for its rate go back to the front of their lane, ahead of new ones, in the order they were sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

__all__ = ["Lane", "RateLimiter", "Slot"]

_T = TypeVar("_T")

#: Slack when comparing a clock reading with a computed instant: a timer scheduled for
#: ``due - now`` seconds may fire when the clock reads a hair less than ``due`` (floating
#: point).  :meth:`RateLimiter.next_free` answers half of it early, :meth:`try_acquire`
#: accepts all of it, so a timer set for the answer always finds its token.
_EPSILON: Final = 1e-6


class Slot:
    """One spent token: when the server may have counted the request that took it.

    :ivar counted: the latest time the server may have counted the request (clock seconds).
    """

    __slots__ = ("counted",)

    def __init__(self, counted: float) -> None:
        self.counted = counted

    def answered(self, now: float) -> None:
        """The request's answer arrived at ``now``: the server counted it by then."""
        if now > self.counted:
            self.counted = now


class RateLimiter:
    """At most ``limit`` requests counted by the server in any ``window`` seconds.

    :param limit: tokens per window; ``0`` or less disables the limit.
    :param window: the server's window length in seconds.
    :param margin: seconds after its write until which a request without an answer yet may
        still be counted by the server.
    """

    __slots__ = ("_held_until", "_sent", "limit", "margin", "window")

    def __init__(self, limit: int, window: float = 1.0, margin: float = 0.0) -> None:
        self.limit = limit
        self.window = window
        self.margin = margin
        self._sent: deque[Slot] = deque()
        self._held_until = 0.0

    def try_acquire(self, now: float) -> Slot | None:
        """Take a token if one is free at ``now``.

        :returns: the new :class:`Slot` (tell it when the answer arrives), or ``None``.
        """
        limit = self.limit
        if limit <= 0:
            return Slot(now)
        if now + _EPSILON < self._held_until:
            return None
        sent = self._sent
        if len(sent) >= limit:
            if now + _EPSILON < sent[0].counted + self.window:
                return None
            sent.popleft()
        slot = Slot(now + self.margin)
        sent.append(slot)
        return slot

    def next_free(self, now: float) -> float:
        """The earliest time, not before ``now``, at which :meth:`try_acquire` will succeed
        (unless an answer arrives late meanwhile and moves it on)."""
        if self.limit <= 0:
            return now
        due = self._held_until
        if len(self._sent) >= self.limit:
            due = max(due, self._sent[0].counted + self.window)
        return max(now, due - _EPSILON / 2)

    def hold(self, until: float) -> None:
        """Grant nothing before ``until`` (the server asked us to wait that long)."""
        self._held_until = max(self._held_until, until)

    def reset(self) -> None:
        """Forget every spent token and hold (a new connection starts with a full bucket)."""
        self._sent.clear()
        self._held_until = 0.0


class Lane(Generic[_T]):
    """The items waiting for one :class:`RateLimiter`, in the order they may go.

    Items refused by the server and put back with :meth:`requeue` come first, in the order
    they were put back; then items added with :meth:`append`, in order.
    """

    __slots__ = ("_fresh", "_retried", "limiter")

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self._retried: deque[_T] = deque()
        self._fresh: deque[_T] = deque()

    def __len__(self) -> int:
        return len(self._retried) + len(self._fresh)

    def __iter__(self) -> Iterator[_T]:
        yield from self._retried
        yield from self._fresh

    def append(self, item: _T) -> None:
        """Add a new item at the end."""
        self._fresh.append(item)

    def requeue(self, item: _T) -> None:
        """Put back an item that was sent and refused, ahead of every new item."""
        self._retried.append(item)

    def popleft(self) -> _T:
        """Remove and return the next item.

        :raises IndexError: if the lane is empty.
        """
        return self._retried.popleft() if self._retried else self._fresh.popleft()

    def remove(self, item: _T) -> bool:
        """Remove ``item`` if it waits here; return whether it did."""
        for queue in (self._retried, self._fresh):
            if item in queue:
                queue.remove(item)
                return True
        return False

    def clear(self) -> list[_T]:
        """Empty the lane; return what waited, in order."""
        items = [*self._retried, *self._fresh]
        self._retried.clear()
        self._fresh.clear()
        return items
