"""Up-front checks of the ``ctrader-twisted`` numeric options: finite and in range.

``argparse`` turns ``--timeout nan`` or ``--port 99999`` into numbers without complaint; a NaN
delay then trips an assertion deep inside the reactor, a huge port retries for ever.  Every
numeric option of every subcommand (the general commands, ``auth`` and ``token``) is therefore
checked here, by its destination name, before anything starts: a bad value is one
``error: ...`` line and exit status 2.  :data:`RULES` is the single table of limits
(``docs/cli.md`` lists them); a test checks that every numeric option of the parser has a rule.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Final

from ._cli_errors import CliError

__all__ = ["INT64_MAX", "MAX_SECONDS", "RULES", "Rule", "validate_options"]

#: The largest value of the protocol's ``int64`` fields (account, position and order ids).
INT64_MAX: Final = 2**63 - 1
#: The longest timeout or wait any option accepts: one day.
MAX_SECONDS: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Rule:
    """The range of one option: ``low`` (exclusive unless ``low_included``) to ``high``."""

    label: str
    low: float
    high: float
    low_included: bool = False
    unit: str = ""

    def check(self, value: float) -> None:
        """:raises CliError: (usage) if ``value`` is not a finite number in range."""
        in_range = math.isfinite(value) and value <= self.high
        in_range = in_range and (value >= self.low if self.low_included else value > self.low)
        if not in_range:
            if self.high == INT64_MAX and value > self.high:
                raise CliError(f"{self.label} must be at most {INT64_MAX}, not {_show(value)}")
            raise CliError(f"{self.label} must be {self.describe()}, not {_show(value)}")

    def describe(self) -> str:
        """The range in words, e.g. ``more than 0 and at most 86400 seconds`` (no upper bound
        is named when it is only the protocol's ``int64`` limit)."""
        low = f"at least {_show(self.low)}" if self.low_included else f"more than {_show(self.low)}"
        high = "" if self.high == INT64_MAX else f" and at most {_show(self.high)}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{low}{high}{unit}"


def _show(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return f"{value:g}"


def _seconds(label: str, high: float = MAX_SECONDS) -> Rule:
    return Rule(label, 0, high, unit="seconds")


#: Limits by ``argparse`` destination.  An option left unset (``None``) is not checked.
RULES: Final[dict[str, Rule]] = {
    # connection options of the general commands; ``timeout`` is also auth/token's HTTP timeout
    "timeout": _seconds("--timeout"),
    "connect_timeout": _seconds("--connect-timeout"),
    "port": Rule("--port", 1, 65_535, low_included=True),
    "account": Rule("--account", 1, INT64_MAX, low_included=True),
    # quotes, bars, ticks, close
    "count": Rule("--count", 1, INT64_MAX, low_included=True),
    "duration": _seconds("--duration", 366 * MAX_SECONDS),
    "limit": Rule("--limit", 0, INT64_MAX, low_included=True),
    "position": Rule("POSITION", 1, INT64_MAX, low_included=True),
    # demo
    "quotes": Rule("--quotes", 0, 3_600, low_included=True, unit="seconds"),
    "days": Rule("--days", 0, 366, unit="days"),
    # auth
    "wait": _seconds("--wait"),
}


def validate_options(options: argparse.Namespace) -> None:
    """Check every numeric option present in ``options`` against :data:`RULES`.

    :raises CliError: (usage, exit 2) naming the first option out of range.
    """
    for dest, rule in RULES.items():
        value = getattr(options, dest, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            rule.check(value)
