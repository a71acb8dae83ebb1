"""A local cTrader Open API 2.0 server for offline development, tests and demos.

It speaks the real wire protocol (protobuf frames over TLS), keeps its state in memory (fresh
on every start) and derives every price from a seed, so runs are reproducible.  See
``docs/sandbox.md``.

Typical use in a test::

    factory = SandboxFactory(SandboxConfig(seed=7), clock)      # any transport, e.g. iosim
    running = await start_sandbox(reactor, SandboxConfig(), state_dir=tmp)  # loopback TLS
"""

from __future__ import annotations

from .catalogue import ACCOUNTS as SANDBOX_ACCOUNTS
from .catalogue import SYMBOLS as SANDBOX_SYMBOLS
from .config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PORT,
    DEFAULT_REFRESH_TOKEN,
    ConfigError,
    SandboxConfig,
    default_state_dir,
)
from .server import RunningSandbox, SandboxFactory, SandboxStats, start_sandbox

__all__ = [
    "ConfigError",
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PORT",
    "DEFAULT_REFRESH_TOKEN",
    "SANDBOX_ACCOUNTS",
    "SANDBOX_SYMBOLS",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxFactory",
    "SandboxStats",
    "default_state_dir",
    "start_sandbox",
]
