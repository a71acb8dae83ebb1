"""OAuth constants needed to build the command-line parser, without importing treq."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_BASE_URL", "SCOPES"]

#: Where the authorization page (``/apps/auth``) and token endpoint (``/apps/token``) live.
DEFAULT_BASE_URL: Final = "https://openapi.ctrader.com"
#: ``trading`` grants full access, ``accounts`` read-only access.
SCOPES: Final = ("trading", "accounts")
