"""Connection settings of the ``ctrader-twisted`` command: options, environment, config file.

Precedence, highest first: command-line options; environment variables (``CTRADER_*``, for the
demo and live environments); the config file's section for the environment (``[demo]``,
``[live]`` or ``[sandbox]``), then its ``[default]`` section; built-in defaults.  With
``--env sandbox`` the built-in defaults are the sandbox's own credentials, host, port and CA
file, and the ``CTRADER_*`` credential variables are ignored (they are meant for real servers).

Secrets (client secret, access token) are held in fields excluded from ``repr``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ._cli_errors import CliError, ExitCode

__all__ = [
    "ENVIRONMENTS",
    "ENV_VARS",
    "Settings",
    "default_config_path",
    "resolve_settings",
]

ENVIRONMENTS: Final = ("demo", "live", "sandbox")
#: Environment variables read for each setting.
ENV_VARS: Final = {
    "env": "CTRADER_ENV",
    "client_id": "CTRADER_CLIENT_ID",
    "client_secret": "CTRADER_CLIENT_SECRET",
    "access_token": "CTRADER_ACCESS_TOKEN",
    "account_id": "CTRADER_ACCOUNT_ID",
}
_CONFIG_ENV: Final = "CTRADER_CONFIG"
_SECRET_KEYS: Final = ("client_id", "client_secret", "access_token")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$CTRADER_CONFIG``, else ``$XDG_CONFIG_HOME/ctrader-twisted/config.ini``
    (``~/.config/...`` when ``XDG_CONFIG_HOME`` is unset)."""
    env = os.environ if environ is None else environ
    explicit = env.get(_CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ctrader-twisted" / "config.ini"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything needed to connect and act for one account."""

    env: str
    host: str
    port: int
    ca_file: Path | None
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    account_id: int | None = None

    def require_app_credentials(self) -> None:
        """:raises CliError: (exit 3) if the client id or secret is missing."""
        if not self.client_id or not self.client_secret:
            raise CliError(
                "missing application credentials: set CTRADER_CLIENT_ID and "
                "CTRADER_CLIENT_SECRET (or client_id/client_secret in the config file)",
                ExitCode.AUTH,
            )

    def require_access_token(self) -> None:
        """:raises CliError: (exit 3) if the access token is missing."""
        if not self.access_token:
            raise CliError(
                "missing access token: set CTRADER_ACCESS_TOKEN, access_token in the config "
                "file, or run 'ctrader-twisted auth'",
                ExitCode.AUTH,
            )


def _read_config(path: Path, env: str | None) -> dict[str, str]:
    if not path.exists():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:  # ``parser.read`` skips unreadable files
            parser.read_file(handle)
    except OSError as error:
        raise CliError(f"cannot read config file {path}: {error.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        raise CliError(f"cannot read config file {path}: {type(error).__name__}") from None
    values: dict[str, str] = {}
    for section in ("default", env):
        if section and parser.has_section(section):
            values.update(parser.items(section))
    return values


def _pick(*values: object) -> str:
    for value in values:
        if value is not None and str(value) != "":
            return str(value)
    return ""


def _integer(text: str, what: str, high: int) -> int | None:
    """``text`` as a whole number from 1 to ``high``; ``None`` when empty."""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"{what} must be a whole number, not {text!r}") from None
    if not 1 <= value <= high:
        raise CliError(f"{what} must be at least 1 and at most {high}, not {value}")
    return value


def _stored_token(environ: Mapping[str, str]) -> str:
    from .tokens import TokenFileError, TokenStore, default_token_path

    store = TokenStore(environ.get("CTRADER_TOKEN_FILE") or default_token_path())
    try:
        token = store.read()
    except TokenFileError as error:  # not silently "no token": say what is wrong with it
        raise CliError(f"cannot use the token file: {error}") from None
    return "" if token is None else token.access_token


def resolve_settings(
    *,
    env: str | None = None,
    host: str | None = None,
    port: int | None = None,
    ca_file: str | None = None,
    account: int | None = None,
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Combine options, environment variables and the config file into :class:`Settings`.

    :raises CliError: for an unknown environment, an unreadable config file or a malformed
        number (exit 2).
    """
    from .tls import PORT

    environ = os.environ if environ is None else environ
    path = Path(config).expanduser() if config else default_config_path(environ)
    if config and not path.exists():
        raise CliError(f"config file {path} does not exist")
    chosen = _pick(env, environ.get(ENV_VARS["env"]), _read_config(path, None).get("env"), "demo")
    if chosen not in ENVIRONMENTS:
        raise CliError(f"unknown environment {chosen!r} (one of {', '.join(ENVIRONMENTS)})")
    file = _read_config(path, chosen)
    sandbox = chosen == "sandbox"
    defaults = _defaults(chosen)
    creds = {
        key: _pick(None if sandbox else environ.get(ENV_VARS[key]), file.get(key), defaults[key])
        for key in _SECRET_KEYS
    }
    if not creds["access_token"] and not sandbox:
        creds["access_token"] = _stored_token(environ)
    account_text = _pick(
        account, None if sandbox else environ.get(ENV_VARS["account_id"]), file.get("account_id")
    )
    ca_text = _pick(ca_file, file.get("ca_file"), defaults["ca_file"])
    return Settings(
        env=chosen,
        host=_pick(host, file.get("host"), defaults["host"]),
        port=_integer(_pick(port, file.get("port"), defaults["port"]), "port", 65_535) or PORT,
        ca_file=Path(ca_text).expanduser() if ca_text else None,
        client_id=creds["client_id"],
        client_secret=creds["client_secret"],
        access_token=creds["access_token"],
        account_id=_integer(account_text, "account id", 2**63 - 1),
    )


def _defaults(env: str) -> dict[str, str]:
    """Built-in settings of ``env`` (the sandbox's modules are only imported for the sandbox)."""
    from .tls import DEMO_HOST, LIVE_HOST, PORT

    if env == "sandbox":
        from .sandbox.certs import CA_FILE
        from .sandbox.config import (
            DEFAULT_ACCESS_TOKEN,
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            DEFAULT_PORT,
            default_state_dir,
        )

        return {
            "host": "localhost",
            "port": str(DEFAULT_PORT),
            "ca_file": str(default_state_dir() / CA_FILE),
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "access_token": DEFAULT_ACCESS_TOKEN,
        }
    host = LIVE_HOST if env == "live" else DEMO_HOST
    empty = {"client_id": "", "client_secret": "", "access_token": "", "ca_file": ""}
    return {"host": host, "port": str(PORT), **empty}
