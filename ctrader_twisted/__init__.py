"""ctrader-twisted: a Twisted client, sandbox server and tools for the cTrader Open API 2.0."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
