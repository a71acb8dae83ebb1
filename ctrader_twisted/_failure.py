"""Typed construction of Twisted ``Failure`` objects (Twisted's constructor is untyped)."""

from __future__ import annotations

from twisted.python.failure import Failure


def failure_of(error: BaseException) -> Failure:
    """Wrap ``error`` in a :class:`~twisted.python.failure.Failure`."""
    return Failure(error)  # type: ignore[no-untyped-call]


def failure_of_current() -> Failure:
    """The exception being handled, as a :class:`~twisted.python.failure.Failure`."""
    return Failure()  # type: ignore[no-untyped-call]
