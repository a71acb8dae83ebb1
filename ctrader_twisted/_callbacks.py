"""Registration helpers shared by the services that take callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["remover"]

_C = TypeVar("_C")


def remover(callbacks: list[_C], callback: _C) -> Callable[[], None]:
    """A function that takes ``callback`` out of ``callbacks`` (safe to call twice)."""

    def remove() -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    return remove
