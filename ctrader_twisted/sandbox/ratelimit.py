"""Per-connection request rate limits, as the real server enforces them (50/s and 5/s)."""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

__all__ = ["RateLimiter"]


class RateLimiter:
    """Sliding one-second windows for ordinary and historical requests.

    :param clock: time source.
    :param limit: ordinary requests allowed per second (0 or less: unlimited).
    :param historical_limit: historical requests allowed per second (0 or less: unlimited).
    """

    def __init__(self, clock: IReactorTime, limit: int, historical_limit: int) -> None:
        self._clock = clock
        self._limits = (limit, historical_limit)
        self._windows: tuple[deque[float], deque[float]] = (deque(), deque())

    def admit(self, historical: bool) -> float | None:
        """Record one request if its bucket has room.

        :returns: ``None`` when admitted; otherwise the seconds until the bucket has room
            (the rejected request is not recorded).
        """
        index = 1 if historical else 0
        limit = self._limits[index]
        if limit <= 0:
            return None
        window = self._windows[index]
        now = self._clock.seconds()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            return max(0.0, window[0] + 1.0 - now)
        window.append(now)
        return None
