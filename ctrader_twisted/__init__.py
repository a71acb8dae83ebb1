"""ctrader-twisted: a Twisted client, sandbox server and tools for the cTrader Open API 2.0.

The public surface of the package root is :class:`Client`, :func:`tls_endpoint` and the
endpoint constants; messages live in :mod:`ctrader_twisted.messages` and exceptions in
:mod:`ctrader_twisted.errors`.
"""

from __future__ import annotations

from .client import Client
from .tls import DEMO_HOST, LIVE_HOST, PORT, tls_endpoint

__version__ = "0.1.0"

__all__ = ["DEMO_HOST", "LIVE_HOST", "PORT", "Client", "__version__", "tls_endpoint"]
