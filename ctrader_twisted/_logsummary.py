"""Repeated log lines, summarized: the first at once, then one count per interval.

A peer can make the client log once per frame (events of an unknown type, server errors that
name no request, a listener that raises on every event).  Logged one by one, a few thousand
frames a second bury everything else in the log.  :class:`RepeatedLog` logs the first event of a
*key* as usual, counts the ones that follow, and at the end of each interval logs one line:
``"<N> more in the last <T> s: <the last one>"``.  A key that stayed quiet for a whole interval
is forgotten, so its next event is logged at once again.

No work is done per event beyond a dictionary look-up and a counter; one timer per instance
runs only while some key has events to summarize.  :meth:`RepeatedLog.flush` logs what is
pending and cancels the timer (owners call it when they stop).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

__all__ = ["DEFAULT_SUMMARY_INTERVAL", "RepeatedLog"]

#: Seconds between two summaries of one repeated message.
DEFAULT_SUMMARY_INTERVAL: Final = 60.0
#: Keys followed at once; events of further keys share one overflow key until some go quiet
#: (a peer choosing a new key per event cannot grow the table without bound).
MAX_KEYS: Final = 256
_OVERFLOW: Final = ("(other keys)",)


class _Window:
    __slots__ = ("ends", "fields", "format", "level", "started", "suppressed")

    def __init__(self, started: float, ends: float) -> None:
        self.started = started
        self.ends = ends
        self.suppressed = 0
        self.level = LogLevel.warn
        self.format = ""
        self.fields: dict[str, Any] = {}


class RepeatedLog:
    """Log the first of a run of similar events at once and summarize the rest.

    :param log: where events go.
    :param clock: time source and timer for the summaries.
    :param interval: seconds per summary (0 or less: log every event, summarize nothing).
    :param max_keys: keys followed at once (see :data:`MAX_KEYS`).
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        interval: float = DEFAULT_SUMMARY_INTERVAL,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._log = log
        self._max_keys = max_keys
        self._clock = clock
        self.interval = interval
        self._windows: dict[Hashable, _Window] = {}
        self._timer: IDelayedCall | None = None

    def emit(
        self,
        level: LogLevel,
        key: Hashable,
        format: str,
        /,
        *,
        failure: Failure | None = None,
        **fields: object,
    ) -> None:
        """Log ``format`` with ``fields`` at ``level``, unless an event of ``key`` was logged
        less than one interval ago: then only count it (and keep it as the latest example).

        ``failure`` (a traceback) goes with the first event only, never into a summary.
        """
        windows = self._windows
        window = windows.get(key)
        if window is None and len(windows) >= self._max_keys:
            key = _OVERFLOW
            window = windows.get(key)
        if window is not None:
            window.suppressed += 1
            window.level, window.format, window.fields = level, format, fields
            return
        if self.interval > 0:
            now = self._clock.seconds()
            windows[key] = _Window(now, now + self.interval)
            self._arm()
        if failure is None:
            self._log.emit(level, format, **fields)
        else:
            self._log.failure(format, failure, level, **fields)

    def warn(self, key: Hashable, format: str, /, **fields: Any) -> None:
        """:meth:`emit` at warning level."""
        self.emit(LogLevel.warn, key, format, **fields)

    def flush(self) -> None:
        """Log every pending summary now, forget every key, and cancel the timer."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        windows, self._windows = self._windows, {}
        now = self._clock.seconds()
        for window in windows.values():
            self._summarize(window, now)

    @property
    def pending(self) -> int:
        """Events counted but not yet reported in a summary."""
        return sum(window.suppressed for window in self._windows.values())

    def _summarize(self, window: _Window, now: float) -> None:
        if window.suppressed:
            example = formatEvent({"log_format": window.format, **window.fields})
            self._log.emit(
                window.level,
                "{count} more in the last {seconds:.0f} s: {example}",
                count=window.suppressed,
                seconds=now - window.started,
                example=example,
            )

    def _arm(self) -> None:
        if (self._timer is not None and self._timer.active()) or not self._windows:
            return
        due = min(window.ends for window in self._windows.values())
        self._timer = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        for key, window in list(self._windows.items()):
            if window.ends > now + 1e-6:
                continue
            if window.suppressed:
                self._summarize(window, now)
                # Still noisy: keep summarizing, one line per interval.
                self._windows[key] = _Window(now, now + self.interval)
            else:
                del self._windows[key]  # quiet for an interval: the next one shows at once
        self._arm()
