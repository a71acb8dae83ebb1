"""Fair use of the sandbox's one thread: expensive requests (history) are worked in slices.

A history request is a generator that yields the cost of each piece of work it did, in
minutes of the price walk generated, and returns its result.  :class:`WorkQueue` runs a new
request's first slice at once (most requests finish within it, and are answered at once); the
rest of a longer one waits its turn: one slice per reactor turn, round robin between
connections, so other connections' requests are read and answered between any two slices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Work", "WorkQueue", "drain"]

_T = TypeVar("_T")

#: A piece of work: yields the cost of each step (minutes generated), returns the result.
Work = Generator[int, None, _T]


def drain(work: Work[_T]) -> _T:
    """Run ``work`` to the end at once and return its result."""
    while True:
        try:
            next(work)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


@dataclass
class _Job(Generic[_T]):
    work: Work[_T]
    done: Callable[[_T], None]


class WorkQueue:
    """Runs :data:`Work` in slices of ``slice_cost``, round robin between owners.

    :param clock: schedules the next slice (``callLater(0, ...)``: after the reactor has
        looked for I/O).
    :param slice_cost: the cost one slice may spend before the next owner's turn.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, slice_cost: int) -> None:
        self._clock = clock
        self._slice = slice_cost
        #: Owners with work waiting, in turn order (a dict keeps insertion order).
        self._queues: dict[Hashable, deque[_Job[Any]]] = {}
        self._next: IDelayedCall | None = None
        #: Slices run so far (for tests and stats).
        self.slices = 0

    def __repr__(self) -> str:
        return f"<WorkQueue owners={len(self._queues)} slices={self.slices}>"

    def pending(self, owner: Hashable) -> int:
        """How many pieces of work ``owner`` has waiting (not counting finished ones)."""
        queue = self._queues.get(owner)
        return len(queue) if queue is not None else 0

    def submit(self, owner: Hashable, work: Work[_T], done: Callable[[_T], None]) -> None:
        """Run ``work`` for ``owner`` and call ``done`` with its result.

        If ``owner`` has nothing waiting, the first slice runs now (and ``done`` may be called
        before this returns); the rest waits its turn behind ``owner``'s earlier work.
        """
        job = _Job(work, done)
        if owner not in self._queues and self._slice_of(job):
            return
        self._queues.setdefault(owner, deque()).append(job)
        self._schedule()

    def cancel(self, owner: Hashable) -> None:
        """Forget ``owner``'s waiting work (its connection closed)."""
        queue = self._queues.pop(owner, None)
        if queue is not None:
            for job in queue:
                job.work.close()
        if not self._queues and self._next is not None and self._next.active():
            self._next.cancel()
            self._next = None

    def _schedule(self) -> None:
        if self._queues and (self._next is None or not self._next.active()):
            self._next = self._clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self._next = None
        if not self._queues:
            return
        owner = next(iter(self._queues))
        queue = self._queues.pop(owner)
        if self._slice_of(queue[0]):
            queue.popleft()
        if queue:
            self._queues[owner] = queue  # to the back of the line
        self._schedule()

    def _slice_of(self, job: _Job[Any]) -> bool:
        """Run one slice of ``job``; whether it finished (and ``done`` was called)."""
        self.slices += 1
        spent = 0
        try:
            while spent < self._slice:
                spent += next(job.work)
        except StopIteration as stop:
            self._finish(job, stop.value)
            return True
        except Exception:
            self._log.failure("history work failed")
            return True
        return False

    def _finish(self, job: _Job[Any], result: object) -> None:
        try:
            job.done(result)
        except Exception:
            self._log.failure("answering finished history work failed")
