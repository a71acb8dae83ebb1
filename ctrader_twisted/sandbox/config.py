"""Sandbox configuration: one frozen dataclass holding every knob, with documented defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "ConfigError",
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

#: Longest duration any time option accepts, in seconds (a year, 31,536,000 s).
MAX_SECONDS: Final = 31_536_000.0
#: Largest count any count option accepts (a frame length must fit the 32-bit prefix).
MAX_COUNT: Final = 2**31 - 1


class ConfigError(ValueError):
    """A :class:`SandboxConfig` field holds a value out of its range.

    :ivar field: the field's name (``tick_interval``).
    :ivar requirement: what it must be, with the value given ("must be ... (got nan)").
    """

    def __init__(self, field: str, requirement: str) -> None:
        super().__init__(f"{field} {requirement}")
        self.field = field
        self.requirement = requirement


#: Time fields and the most seconds each accepts (from 0; ``tick_interval`` above 0).
_SECONDS: Final[dict[str, float]] = {
    "tick_interval": 60.0,
    "heartbeat_interval": MAX_SECONDS,
    "idle_timeout": MAX_SECONDS,
    "app_auth_timeout": MAX_SECONDS,
    "slow_reader_timeout": MAX_SECONDS,
    "close_timeout": MAX_SECONDS,
    "drop_after_seconds": MAX_SECONDS,
    "response_delay": MAX_SECONDS,
}
#: Fields where ``None`` means off.
_OPTIONAL: Final = frozenset(
    {
        "drop_after_seconds",
        "response_delay",
        "drop_after_messages",
        "stall_after_messages",
        "corrupt_frame_after",
    }
)
#: Count fields: lowest allowed value (the highest is :data:`MAX_COUNT`).
_COUNTS: Final[dict[str, int]] = {
    "depth_levels": 1,
    "trendbar_chunk": 1,
    "trendbar_minutes_budget": 1,
    "tick_chunk": 1,
    "list_chunk": 1,
    "rate_limit": 0,
    "historical_rate_limit": 0,
    "max_frame": 1,
    "pre_auth_max_frame": 1,
    "max_connections": 0,
    "work_slice_minutes": 1,
    "max_pending_work": 1,
    "slow_reader_backlog": 0,
    "drop_after_messages": 1,
    "stall_after_messages": 1,
    "corrupt_frame_after": 1,
}


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

    Fair use of the sandbox's CPU (see ``docs/sandbox.md``, "Cost of history requests"):

    :ivar work_slice_minutes: minutes of the price walk one history request may generate
        before the sandbox serves other connections (its work continues in the next slice,
        round robin between connections).
    :ivar max_pending_work: history requests one connection may have in progress at once;
        more are refused like a request over the rate limit.

    Like the real server:

    :ivar heartbeat_interval: seconds between server heartbeats (0 disables them).
    :ivar idle_timeout: close a connection that sent nothing for this long (0 disables).
    :ivar rate_limit: non-historical requests per second per connection (0 disables).
    :ivar historical_rate_limit: historical requests per second per connection (0 disables).
    :ivar rate_limit_mode: ``"frequency"`` answers ``REQUEST_FREQUENCY_EXCEEDED``;
        ``"blocked"`` answers ``BLOCKED_PAYLOAD_TYPE`` with ``retryAfter``.
    :ivar max_frame: largest inbound frame in bytes; a longer one gets ``FRAME_TOO_LONG``
        and the connection is closed.
    :ivar pre_auth_max_frame: largest inbound frame in bytes until the application is
        authorized on the connection (the smaller of this and ``max_frame`` applies), so
        unauthenticated peers cannot park large partial frames.
    :ivar app_auth_timeout: close a connection whose application is not authorized this long
        after it opened, with ``CH_CLIENT_NOT_AUTHENTICATED`` first (0 disables).
    :ivar max_connections: most connections open at once; one more is answered with
        ``CONNECTIONS_LIMIT_EXCEEDED`` and closed (0: no cap).
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
    pre_auth_max_frame: int = 64 * 1024
    app_auth_timeout: float = 10.0
    max_connections: int = 512
    work_slice_minutes: int = 500
    max_pending_work: int = 5
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
        if self.rate_limit_mode not in ("frequency", "blocked"):
            raise ConfigError("rate_limit_mode", "must be 'frequency' or 'blocked'")
        for name, high in _SECONDS.items():
            _check_seconds(name, getattr(self, name), high)
        for name, low in _COUNTS.items():
            _check_count(name, getattr(self, name), low)
        _check_count("seed", self.seed, -(2**63), 2**64 - 1)

    @property
    def tick_ms(self) -> int:
        """Spacing of the price walk's ticks in whole milliseconds (at least 1)."""
        return max(1, round(self.tick_interval * 1000))

    def evolve(self, **changes: object) -> SandboxConfig:
        """Return a copy with some fields changed.

        :raises ConfigError: if a value is out of its range.
        """
        return replace(self, **changes)  # type: ignore[arg-type]


def _check_seconds(name: str, value: object, high: float) -> None:
    if value is None and name in _OPTIONAL:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"must be a number of seconds (got {value!r})")
    positive = name == "tick_interval"
    number = float(value)
    if not (math.isfinite(number) and (number > 0 if positive else number >= 0) and number <= high):
        bound = "above 0" if positive else "from 0"
        text = f"must be a finite number {bound} to {high:,.0f} s (got {value!r})"
        raise ConfigError(name, text)


def _check_count(name: str, value: object, low: int, high: int = MAX_COUNT) -> None:
    if value is None and name in (
        "drop_after_messages",
        "stall_after_messages",
        "corrupt_frame_after",
    ):
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be a whole number (got {value!r})")
    if not low <= value <= high:
        raise ConfigError(name, f"must be from {low} to {high} (got {value!r})")


#: Names of every field (the CLI checks it covers them).
FIELDS: Final = tuple(f.name for f in fields(SandboxConfig))
