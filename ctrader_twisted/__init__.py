"""ctrader-twisted: a Twisted client, sandbox server and tools for the cTrader Open API 2.0.

The public surface of the package root is :class:`Client`, :func:`tls_endpoint` and the
endpoint constants; messages live in :mod:`ctrader_twisted.messages` and exceptions in
:mod:`ctrader_twisted.errors`.

The names are loaded on first use (``from ctrader_twisted import Client`` imports the client
then), so that importing a light submodule, or running ``ctrader-twisted --help``, does not pay
for Twisted's reactor machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .client import Client
    from .tls import DEMO_HOST, LIVE_HOST, PORT, tls_endpoint

__version__ = "0.1.0"

__all__ = ["DEMO_HOST", "LIVE_HOST", "PORT", "Client", "__version__", "tls_endpoint"]

#: Public name -> the submodule that defines it.
_LAZY: Final = {
    "Client": ".client",
    "DEMO_HOST": ".tls",
    "LIVE_HOST": ".tls",
    "PORT": ".tls",
    "tls_endpoint": ".tls",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
