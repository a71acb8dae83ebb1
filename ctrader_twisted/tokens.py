"""OAuth tokens: the :class:`Token` model and the JSON :class:`TokenStore`.

A token's expiry is an absolute time on the clock that was used when it was obtained (normally
the reactor's ``seconds()``, i.e. POSIX time), so it survives being written to disk and read back
by another process.

Secrets never appear in a ``repr``, in a log line or in an exception message: :func:`mask`
shortens a secret to a recognisable prefix for display.

The store writes a small JSON file with ``0600`` permissions, atomically (temporary file in the
same directory, ``fsync``, then :func:`os.replace`).  The blocking file I/O runs in the reactor's
thread pool (:meth:`TokenStore.load` / :meth:`TokenStore.save`); :meth:`TokenStore.read` and
:meth:`TokenStore.write` are the same operations run synchronously, for use before the reactor
runs or from a thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from ctrader_twisted.errors import CTraderError

if TYPE_CHECKING:  # Twisted is imported on use: the CLI's parser only needs the default path
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorThreads

__all__ = [
    "DEFAULT_TOKEN_PATH_ENV",
    "Token",
    "TokenFileError",
    "TokenStore",
    "default_token_path",
    "mask",
]

#: Environment variable that overrides the default token file location.
DEFAULT_TOKEN_PATH_ENV: Final = "CTRADER_TOKEN_FILE"  # noqa: S105 - a variable name

_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_FORMAT_VERSION: Final = 1
#: A token file is a few hundred bytes; anything past this is not one (and is not read whole).
_MAX_FILE_SIZE: Final = 64 * 1024
_T = TypeVar("_T")


class TokenFileError(CTraderError):
    """The token file exists but cannot be read or parsed, or cannot be written."""


def mask(secret: str, shown: int = 4) -> str:
    """Shorten ``secret`` for display: its first ``shown`` characters and its length.

    Secrets shorter than ``2 * shown`` characters are hidden entirely.
    """
    if len(secret) < 2 * shown:
        return f"<{len(secret)} chars>"
    return f"{secret[:shown]}...<{len(secret)} chars>"


@dataclass(frozen=True, slots=True)
class Token:
    """An OAuth access token with its refresh token and expiry.

    :ivar access_token: the bearer token used in ``ProtoOAAccountAuthReq``.
    :ivar refresh_token: single-use token to obtain the next access token.
    :ivar expires_at: expiry as seconds on the clock that produced the token (POSIX time).
    :ivar obtained_at: when the token was obtained, same clock.
    :ivar token_type: normally ``"bearer"``.
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    obtained_at: float
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type

    @classmethod
    def from_expires_in(
        cls,
        access_token: str,
        refresh_token: str,
        expires_in: float,
        now: float,
        token_type: str = "bearer",  # noqa: S107 - the OAuth token type
    ) -> Token:
        """Build a token that expires ``expires_in`` seconds after ``now``."""
        return cls(access_token, refresh_token, now + expires_in, now, token_type)

    def remaining(self, now: float) -> float:
        """Seconds until expiry at time ``now`` (negative once expired)."""
        return self.expires_at - now

    def is_expired(self, now: float) -> bool:
        """Whether the access token has expired at time ``now``."""
        return now >= self.expires_at

    def describe(self, now: float) -> dict[str, str]:
        """A display-safe summary: masked secrets, type and remaining lifetime."""
        left = self.remaining(now)
        state = "expired" if left <= 0 else f"{left / 86400:.2f} days left"
        return {
            "access_token": mask(self.access_token),
            "refresh_token": mask(self.refresh_token),
            "token_type": self.token_type,
            "expires": state,
        }

    def to_json(self) -> dict[str, str | float | int]:
        """The JSON object written by :class:`TokenStore` (contains the secrets)."""
        return {
            "version": _FORMAT_VERSION,
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "tokenType": self.token_type,
            "expiresAt": self.expires_at,
            "obtainedAt": self.obtained_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Token:
        """Parse what :meth:`to_json` produced.

        :raises TokenFileError: a field is missing or has the wrong type.
        """
        try:
            access = data["accessToken"]
            refresh = data["refreshToken"]
            expires_at = data["expiresAt"]
            obtained_at = data.get("obtainedAt", expires_at)
            token_type = data.get("tokenType", "bearer")
        except KeyError as exc:
            raise TokenFileError(f"token file lacks the field {exc.args[0]!r}") from None
        if not (
            isinstance(access, str) and isinstance(refresh, str) and isinstance(token_type, str)
        ):
            raise TokenFileError("token file has non-string token fields")
        return cls(access, refresh, _number(expires_at), _number(obtained_at), token_type)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenFileError("token file has non-numeric times")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise TokenFileError("token file has non-finite times")
    return number


def default_token_path() -> Path:
    """Where tokens are kept unless told otherwise.

    ``$CTRADER_TOKEN_FILE`` if set, else ``$XDG_CONFIG_HOME/ctrader-twisted/token.json``
    (``~/.config/ctrader-twisted/token.json`` when ``XDG_CONFIG_HOME`` is unset).
    """
    override = os.environ.get(DEFAULT_TOKEN_PATH_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "ctrader-twisted" / "token.json"


class TokenStore:
    """A token kept in one JSON file, readable only by its owner.

    :param path: the file; its directory is created (mode ``0700``) on first write.
    :param reactor: provides the thread pool used by :meth:`load` and :meth:`save`.
    """

    def __init__(self, path: Path | str, reactor: IReactorThreads | None = None) -> None:
        self.path = Path(path)
        self._reactor = reactor

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def load(self) -> Deferred[Token | None]:
        """Read the token in a worker thread.

        :returns: a Deferred that fires with the :class:`Token`, or ``None`` when the file does
            not exist.  It fails with :class:`TokenFileError` when the file cannot be read,
            decoded (not UTF-8) or parsed.
        """
        return self._in_thread(self.read)

    def save(self, token: Token) -> Deferred[None]:
        """Write ``token`` atomically in a worker thread.

        :returns: a Deferred that fires with ``None`` once the file is replaced on disk, or fails
            with :class:`TokenFileError` when it cannot be written.
        """
        return self._in_thread(lambda: self.write(token))

    def read(self) -> Token | None:
        """Blocking form of :meth:`load`.

        :raises TokenFileError: the file cannot be read, is larger than 64 KiB, is not UTF-8,
            is not JSON, or does not hold a token.
        """
        try:
            raw = _read_regular_file(self.path, _MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenFileError(f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > _MAX_FILE_SIZE:
            raise TokenFileError(f"{self.path} is too large for a token file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenFileError(f"{self.path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise TokenFileError(f"{self.path} is not valid JSON") from None
        if not isinstance(data, dict):
            raise TokenFileError(f"{self.path} does not hold a JSON object")
        return Token.from_json(data)

    def write(self, token: Token) -> None:
        """Blocking form of :meth:`save`."""
        payload = json.dumps(token.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            _atomic_write(self.path, payload)
        except OSError as exc:
            raise TokenFileError(f"cannot write {self.path}: {exc.strerror}") from None

    def permissions(self) -> int:
        """The file's permission bits (e.g. ``0o600``).

        :raises FileNotFoundError: no token has been written yet.
        """
        return stat.S_IMODE(self.path.stat().st_mode)

    def _in_thread(self, work: Callable[[], _T]) -> Deferred[_T]:
        from twisted.internet.threads import deferToThreadPool

        reactor = self._reactor
        if reactor is None:
            raise TypeError("TokenStore needs a reactor for load() and save(); use read()/write()")
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)


def _read_regular_file(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (a FIFO or device would block or never end).

    :raises OSError: cannot be opened or read, or is not a regular file (``EINVAL``).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read(limit)


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a private temporary file beside ``path`` and rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
