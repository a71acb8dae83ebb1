"""A child process for tests that run ``ctrader-twisted`` for real: its output and exit status.

A support module: test modules import it, it imports no test module.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["CollectingProcess", "exit_status"]


def exit_status(reason: Failure) -> int:
    """The status a shell would show for a child that ended with ``reason``: 0, its exit
    code, or -1 when it has none (killed by a signal)."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated) and value.exitCode is not None:
        return int(value.exitCode)
    return -1


class CollectingProcess(ProcessProtocol):
    """Keeps the child's stdout and stderr; ``ended`` fires with :func:`exit_status`."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.out += data
        else:
            self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(exit_status(reason))
