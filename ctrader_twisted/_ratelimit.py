"""Client-side rate limiting: a token bucket whose spent tokens come back one window later.

A :class:`RateLimiter` with ``limit`` tokens and a ``window`` of one second lets at most
``limit`` sends happen in *any* one-second interval, which satisfies the server whether it counts
per fixed second, per sliding second, or with a token bucket of that size.  Each spent token
returns exactly ``window`` seconds after it was spent, so pacing is exact: the next free slot is
always ``oldest send + window``.  The owner schedules one timer for that instant; there is no
polling.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """At most ``limit`` acquisitions in any interval of ``window`` seconds.

    :param limit: tokens per window; ``0`` or less disables the limit.
    :param window: the window length in seconds.
    """

    __slots__ = ("_sent", "limit", "window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def try_acquire(self, now: float) -> bool:
        """Take a token if one is free at ``now``; return whether one was taken."""
        limit = self.limit
        if limit <= 0:
            return True
        sent = self._sent
        if len(sent) < limit:
            sent.append(now)
            return True
        if now >= sent[0] + self.window:  # same sum as next_free(): exact on the timer
            sent.popleft()
            sent.append(now)
            return True
        return False

    def next_free(self, now: float) -> float:
        """The earliest time, not before ``now``, at which :meth:`try_acquire` will succeed."""
        if self.limit <= 0 or len(self._sent) < self.limit:
            return now
        return max(now, self._sent[0] + self.window)

    def reset(self) -> None:
        """Forget every spent token (a new connection starts with a full bucket)."""
        self._sent.clear()
