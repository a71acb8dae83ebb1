"""Sandbox configuration: one frozen dataclass holding every knob, with documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PORT",
    "DEFAULT_REFRESH_TOKEN",
    "RateLimitMode",
    "SandboxConfig",
    "default_state_dir",
]

#: Application credentials the sandbox accepts unless configured otherwise (sandbox-only values).
DEFAULT_CLIENT_ID: Final = "sandbox-client-id"
DEFAULT_CLIENT_SECRET: Final = "sandbox-client-secret"  # noqa: S105 - a documented test value
#: Access and refresh tokens that grant both sandbox accounts (sandbox-only values).
DEFAULT_ACCESS_TOKEN: Final = "sandbox-access-token"  # noqa: S105
DEFAULT_REFRESH_TOKEN: Final = "sandbox-refresh-token"  # noqa: S105
#: Port the sandbox listens on when started without ``--listen``.
DEFAULT_PORT: Final = 5035

RateLimitMode = Literal["frequency", "blocked"]


def default_state_dir() -> Path:
    """Folder for the sandbox's generated certificates.

    ``$CTRADER_SANDBOX_STATE`` if set, else ``~/.local/state/ctrader-twisted/sandbox``
    (honouring ``$XDG_STATE_HOME``).
    """
    explicit = os.environ.get("CTRADER_SANDBOX_STATE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ctrader-twisted" / "sandbox"


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything that shapes a sandbox's behaviour.

    Credentials:

    :ivar client_id: application id accepted by ``ProtoOAApplicationAuthReq``.
    :ivar client_secret: application secret accepted with it.
    :ivar access_token: initial access token, valid for every sandbox account.
    :ivar refresh_token: initial (single-use) refresh token.

    Market:

    :ivar seed: seeds the price walk; same seed, same prices for any time range.
    :ivar tick_interval: seconds between price ticks of the walk (and between live spot
        events); clamped to at least 0.001.
    :ivar always_open: ignore trading schedules (markets never close).
    :ivar depth_levels: price levels per side in depth events.
    :ivar trendbar_chunk: most trendbars in one ``ProtoOAGetTrendbarsRes``.
    :ivar trendbar_minutes_budget: most minutes of history one trendbar response may cover
        (bounds the work of long-period requests; fewer bars are sent, with ``hasMore``).
    :ivar tick_chunk: most ticks in one ``ProtoOAGetTickDataRes``.
    :ivar list_chunk: most deals/orders in one list response.

    Like the real server:

    :ivar heartbeat_interval: seconds between server heartbeats (0 disables them).
    :ivar idle_timeout: close a connection that sent nothing for this long (0 disables).
    :ivar rate_limit: non-historical requests per second per connection (0 disables).
    :ivar historical_rate_limit: historical requests per second per connection (0 disables).
    :ivar rate_limit_mode: ``"frequency"`` answers ``REQUEST_FREQUENCY_EXCEEDED``;
        ``"blocked"`` answers ``BLOCKED_PAYLOAD_TYPE`` with ``retryAfter``.
    :ivar max_frame: largest inbound frame in bytes; a longer one gets ``FRAME_TOO_LONG``
        and the connection is closed.
    :ivar version: text of ``ProtoOAVersionRes.version``.

    Slow and vanished clients:

    :ivar slow_reader_timeout: abort a connection whose client has not taken the sandbox's
        output for this long: its transport stayed paused (write buffer full) the whole time
        (0 disables).  While paused, market data for it is dropped, not queued.
    :ivar slow_reader_backlog: abort a connection once this many bytes (answers, execution
        and account events) were written to it during one pause (0 disables).
    :ivar close_timeout: abort a connection the sandbox is closing (idle, refused, faulty)
        that has not finished closing after this long: the peer neither took the last bytes
        nor answered the TLS close (0: wait forever).

    Fault injection (``None`` means off):

    :ivar drop_after_messages: close each connection right after handling its Nth inbound frame.
    :ivar drop_after_seconds: abort each connection this long after it opened.
    :ivar stall_after_messages: after the Nth inbound frame, stop reading and writing
        (the connection stays open, no FIN).
    :ivar corrupt_frame_after: after handling the Nth inbound frame, write one undecodable frame.
    :ivar response_delay: delay every answer to a request by this many seconds.
    """

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = field(default=DEFAULT_CLIENT_SECRET, repr=False)
    access_token: str = field(default=DEFAULT_ACCESS_TOKEN, repr=False)
    refresh_token: str = field(default=DEFAULT_REFRESH_TOKEN, repr=False)
    seed: int = 1
    tick_interval: float = 1.0
    always_open: bool = False
    depth_levels: int = 5
    trendbar_chunk: int = 1000
    trendbar_minutes_budget: int = 100_000
    tick_chunk: int = 1000
    list_chunk: int = 500
    heartbeat_interval: float = 10.0
    idle_timeout: float = 30.0
    rate_limit: int = 50
    historical_rate_limit: int = 5
    rate_limit_mode: RateLimitMode = "frequency"
    max_frame: int = 1024 * 1024
    version: str = "91 (ctrader-twisted sandbox)"
    slow_reader_timeout: float = 30.0
    slow_reader_backlog: int = 4 * 1024 * 1024
    close_timeout: float = 10.0
    drop_after_messages: int | None = None
    drop_after_seconds: float | None = None
    stall_after_messages: int | None = None
    corrupt_frame_after: int | None = None
    response_delay: float | None = None

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        if self.rate_limit_mode not in ("frequency", "blocked"):
            raise ValueError("rate_limit_mode must be 'frequency' or 'blocked'")
        for name in ("trendbar_chunk", "tick_chunk", "list_chunk", "max_frame"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("slow_reader_timeout", "slow_reader_backlog", "close_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def tick_ms(self) -> int:
        """Spacing of the price walk's ticks in whole milliseconds (at least 1)."""
        return max(1, round(self.tick_interval * 1000))

    def evolve(self, **changes: object) -> SandboxConfig:
        """Return a copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
