"""The reactor capabilities the command-line tools use (a typing-only interface)."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)

__all__ = ["CliReactor"]


class CliReactor(IReactorCore, IReactorTCP, IReactorSSL, IReactorTime, IReactorThreads):
    """TCP, TLS, timers, threads and system events: what a real reactor provides.

    Only used to type the global reactor once it is cast at the entry point.
    """
