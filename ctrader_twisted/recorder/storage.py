"""Where the recorder's data goes: SQLite (default) or PostgreSQL, through ``adbapi``.

Both databases run behind :class:`twisted.enterprise.adbapi.ConnectionPool` with exactly one
connection and one worker thread, so every write happens off the reactor thread and in the order
it was queued.  Every failure reaches the caller as :class:`StorageError`.  SQLite runs in WAL
mode (readers never block the writer) with ``synchronous=NORMAL``.  PostgreSQL needs the optional
``psycopg`` package (``pip install 'psycopg[binary]'``); a lost connection (server restart,
killed session) fails the operation that finds it, and the next operation connects again.

Schema (prices are integers in 1/100000 of a price unit, times are UTC):

- ``symbols(symbol_id PK, name)``
- ``spots(id PK, symbol_id, received_ms, server_ms, bid, ask)``
- ``bars(symbol_id, period, time_minutes, open, high, low, close, volume, source)`` with
  ``PRIMARY KEY (symbol_id, period, time_minutes)``; writes are upserts, so a bar stored twice
  (live and from history) is still one row, holding the latest version.
- ``depth(id PK, symbol_id, received_ms, quote_id, side, price, size)``
- view ``bars_decimal``: ``bars`` with prices as decimals and the open time as text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from os import environ
from pathlib import Path
from typing import Final, Literal, NoReturn, Protocol, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from ctrader_twisted.errors import CTraderError
from ctrader_twisted.recorder._rows import BarRow, DepthRow, SpotRow

__all__ = [
    "Batch",
    "MarketStore",
    "StorageError",
    "check_postgres",
    "open_postgres",
    "open_sqlite",
]

_T = TypeVar("_T")

_TABLES: Final = (
    "CREATE TABLE IF NOT EXISTS symbols (symbol_id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spots (id {serial}, symbol_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL, server_ms BIGINT, bid BIGINT, ask BIGINT)",
    "CREATE INDEX IF NOT EXISTS spots_by_symbol_time ON spots (symbol_id, received_ms)",
    "CREATE TABLE IF NOT EXISTS bars (symbol_id BIGINT NOT NULL, period INTEGER NOT NULL,"
    " time_minutes BIGINT NOT NULL, open BIGINT NOT NULL, high BIGINT NOT NULL,"
    " low BIGINT NOT NULL, close BIGINT NOT NULL, volume BIGINT NOT NULL,"
    " source TEXT NOT NULL, PRIMARY KEY (symbol_id, period, time_minutes))",
    "CREATE TABLE IF NOT EXISTS depth (id {serial}, symbol_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL, quote_id BIGINT NOT NULL, side TEXT NOT NULL,"
    " price BIGINT, size BIGINT)",
    "CREATE INDEX IF NOT EXISTS depth_by_symbol_time ON depth (symbol_id, received_ms)",
    "CREATE {view} bars_decimal AS SELECT b.symbol_id, s.name, b.period,"
    " {time_text} AS opened_utc, b.time_minutes,"
    " b.open / 100000.0 AS open, b.high / 100000.0 AS high, b.low / 100000.0 AS low,"
    " b.close / 100000.0 AS close, b.volume, b.source"
    " FROM bars b LEFT JOIN symbols s ON s.symbol_id = b.symbol_id",
)
_SQLITE: Final = {
    "serial": "INTEGER PRIMARY KEY",
    "view": "VIEW IF NOT EXISTS",
    "time_text": "datetime(b.time_minutes * 60, 'unixepoch')",
}
_POSTGRES: Final = {
    "serial": "BIGSERIAL PRIMARY KEY",
    "view": "OR REPLACE VIEW",
    "time_text": "to_timestamp(b.time_minutes * 60)",
}
_PG_DEFAULTS: Final = (  # (libpq parameter, its environment variable, our default)
    ("connect_timeout", "PGCONNECT_TIMEOUT", 10),
    ("application_name", "PGAPPNAME", "ctrader-recorder"),
)
_UPSERT_BAR: Final = (
    "INSERT INTO bars (symbol_id, period, time_minutes, open, high, low, close, volume, source)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (symbol_id, period, time_minutes) DO UPDATE"
    " SET open = excluded.open, high = excluded.high, low = excluded.low,"
    " close = excluded.close, volume = excluded.volume, source = excluded.source"
)
_INSERT_SPOT: Final = (
    "INSERT INTO spots (symbol_id, received_ms, server_ms, bid, ask) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DEPTH: Final = (
    "INSERT INTO depth (symbol_id, received_ms, quote_id, side, price, size)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_SYMBOL: Final = (
    "INSERT INTO symbols (symbol_id, name) VALUES (?, ?)"
    " ON CONFLICT (symbol_id) DO UPDATE SET name = excluded.name"
)


class StorageError(CTraderError):
    """The database could not be opened or written.

    :ivar permanent: retrying cannot help (an SQLite path that cannot be a database, a
        PostgreSQL role without the right to create the tables); ``False`` for conditions that
        may pass (a server not up yet, a lost session, a locked file).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[object] = ...) -> object: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> object: ...
    def fetchone(self) -> Sequence[object] | None: ...
    def fetchall(self) -> list[Sequence[object]]: ...


@dataclass(slots=True)
class Batch:
    """Rows collected for one write.  Bars with the same key keep only the last version."""

    spots: list[SpotRow] = field(default_factory=list)
    bars: dict[tuple[int, int, int], BarRow] = field(default_factory=dict)
    depth: list[DepthRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spots) + len(self.bars) + len(self.depth)


class MarketStore:
    """Typed access to the recorder database; every method runs in the pool's one thread.

    Build it with :func:`open_sqlite` or :func:`open_postgres`.  Every method returns a Deferred
    that fails with :class:`StorageError` (wrapping the driver's error) when the database does;
    on a closed store the methods raise :class:`StorageError` at once.
    """

    _log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, *, placeholder: str, description: str) -> None:
        self._pool = pool
        self._placeholder = placeholder
        self.description = description
        self._closed = False

    def __repr__(self) -> str:
        return f"MarketStore({self.description!r})"

    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _run(self, work: Callable[[_Cursor], _T]) -> Deferred[_T]:
        if self._closed:
            raise StorageError(f"{self.description} is closed")
        d = cast("Deferred[_T]", self._pool.runInteraction(work))  # type: ignore[no-untyped-call]
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> NoReturn:
        error = failure.value
        if isinstance(error, StorageError):
            raise error
        raise StorageError(f"{self.description}: {type(error).__name__}: {error}") from error

    def create_schema(self, dialect: dict[str, str]) -> Deferred[None]:
        """Create missing tables, indexes and the view.

        :returns: a Deferred firing with ``None`` when done; it fails with
            :class:`StorageError`.
        """

        def work(cursor: _Cursor) -> None:
            for statement in _TABLES:
                cursor.execute(statement.format(**dialect))

        return self._run(work)

    def write(self, batch: Batch) -> Deferred[int]:
        """Write ``batch`` in one transaction.

        :returns: a Deferred firing with the number of rows written; it fails with
            :class:`StorageError` (the transaction is rolled back, nothing of the batch is
            stored, unless the connection was lost while committing: then the commit may or may
            not have happened).
        """
        spots = [(s.symbol_id, s.received_ms, s.server_ms, s.bid, s.ask) for s in batch.spots]
        bars = [
            (b.symbol_id, b.period, b.time_minutes, b.open, b.high, b.low, b.close, b.volume,
             b.source)
            for b in batch.bars.values()
        ]  # fmt: skip
        depth = [
            (d.symbol_id, d.received_ms, d.quote_id, d.side, d.price, d.size) for d in batch.depth
        ]

        def work(cursor: _Cursor) -> int:
            if spots:
                cursor.executemany(self._sql(_INSERT_SPOT), spots)
            if bars:
                cursor.executemany(self._sql(_UPSERT_BAR), bars)
            if depth:
                cursor.executemany(self._sql(_INSERT_DEPTH), depth)
            return len(spots) + len(bars) + len(depth)

        return self._run(work)

    def save_symbols(self, names: dict[int, str]) -> Deferred[None]:
        """Upsert symbol names (for the ``bars_decimal`` view and for readers).

        :returns: a Deferred firing with ``None``; it fails with :class:`StorageError`.
        """
        rows = sorted(names.items())

        def work(cursor: _Cursor) -> None:
            if rows:
                cursor.executemany(self._sql(_UPSERT_SYMBOL), rows)

        return self._run(work)

    def last_bar_minute(self, symbol_id: int, period: int) -> Deferred[int | None]:
        """Open time (minutes since epoch) of the newest stored bar of one series.

        :returns: a Deferred firing with that minute, or ``None`` when the series is empty; it
            fails with :class:`StorageError`.
        """
        sql = self._sql("SELECT MAX(time_minutes) FROM bars WHERE symbol_id = ? AND period = ?")

        def work(cursor: _Cursor) -> int | None:
            cursor.execute(sql, (symbol_id, period))
            row = cursor.fetchone()
            return None if row is None or row[0] is None else int(cast(int, row[0]))

        return self._run(work)

    def last_history_minute(self, symbol_id: int, period: int) -> Deferred[int | None]:
        """Open time (minutes since epoch) of the newest bar of one series stored from history.

        The recorder's backfill cursor starts here after a restart: every history fetch starts
        at the previous cursor and is written in order, so the series is complete up to this
        bar.  Bars stored live (possibly ahead of a gap the backfill had not filled yet) do not
        count.

        :returns: a Deferred firing with that minute, or ``None`` when no bar of the series
            came from history; it fails with :class:`StorageError`.
        """
        sql = self._sql(
            "SELECT time_minutes FROM bars WHERE symbol_id = ? AND period = ?"
            " AND source = 'history' ORDER BY time_minutes DESC LIMIT 1"
        )

        def work(cursor: _Cursor) -> int | None:
            cursor.execute(sql, (symbol_id, period))
            row = cursor.fetchone()
            return None if row is None or row[0] is None else int(cast(int, row[0]))

        return self._run(work)

    def bars(self, symbol_id: int, period: int) -> Deferred[list[BarRow]]:
        """Every stored bar of one series.

        :returns: a Deferred firing with the bars, oldest first; it fails with
            :class:`StorageError`.
        """
        sql = self._sql(
            "SELECT symbol_id, period, time_minutes, open, high, low, close, volume, source"
            " FROM bars WHERE symbol_id = ? AND period = ? ORDER BY time_minutes"
        )

        def work(cursor: _Cursor) -> list[BarRow]:
            cursor.execute(sql, (symbol_id, period))
            return [_bar_row(row) for row in cursor.fetchall()]

        return self._run(work)

    def counts(self) -> Deferred[dict[str, int]]:
        """Row counts of ``spots``, ``bars`` and ``depth``.

        :returns: a Deferred firing with ``{table: count}``; it fails with
            :class:`StorageError`.
        """

        def work(cursor: _Cursor) -> dict[str, int]:
            result = {}
            for table in ("spots", "bars", "depth"):
                cursor.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - fixed names
                row = cursor.fetchone()
                result[table] = int(cast(int, row[0])) if row else 0
            return result

        return self._run(work)

    def close(self) -> Deferred[None]:
        """Close the connection and stop the worker thread (idempotent).

        The pool's thread is idle by then (callers flush first), so joining it is immediate.
        """
        if not self._closed:
            self._closed = True
            self._pool.close()  # type: ignore[no-untyped-call]
        return succeed(None)


def _bar_row(row: Sequence[object]) -> BarRow:
    n = [int(cast(int, value)) for value in row[:8]]
    source: Literal["live", "history"] = "history" if row[8] == "history" else "live"
    return BarRow(n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], source)


def _sqlite_open(connection: object) -> None:
    execute = cast("Callable[[str], object]", connection.execute)  # type: ignore[attr-defined]
    execute("PRAGMA journal_mode=WAL")
    execute("PRAGMA synchronous=NORMAL")
    execute("PRAGMA busy_timeout=5000")


def open_sqlite(reactor: IReactorCore, path: Path | str) -> Deferred[MarketStore]:
    """Open (creating if needed) an SQLite database in WAL mode.

    :returns: a Deferred firing with the :class:`MarketStore` once the schema exists; it fails
        with :class:`StorageError` if the file cannot be opened.
    """
    target = Path(path)
    if str(path) != ":memory:":
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            message = f"cannot open sqlite:{target}: cannot create {target.parent}: {reason}"
            return fail(StorageError(message, permanent=True))
    pool = adbapi.ConnectionPool(  # type: ignore[no-untyped-call]
        "sqlite3",
        str(target),
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_sqlite_open,
        cp_reactor=reactor,
        cp_noisy=False,
    )
    store = MarketStore(pool, placeholder="?", description=f"sqlite:{target}")
    return _prepared(store, _SQLITE, _sqlite_permanent)


def open_postgres(reactor: IReactorCore, dsn: str) -> Deferred[MarketStore]:
    """Open a PostgreSQL database with ``psycopg`` 3 (optional dependency).

    Connecting gives up after 10 seconds unless ``dsn`` sets ``connect_timeout``; the session's
    ``application_name`` is ``ctrader-recorder`` unless ``dsn`` sets one.  A lost connection is
    replaced on the next operation (the one that found it lost fails).

    :param dsn: a libpq connection string, e.g. ``"postgresql://user@host/market"`` or
        ``"host=dbhost dbname=market user=recorder"``; its password never appears in the
        store's description, logs or errors.
    :returns: a Deferred firing with the :class:`MarketStore` once the schema exists; it fails
        with :class:`StorageError` when the connection fails or the schema cannot be created.
    :raises StorageError: at once, when ``psycopg`` is missing or ``dsn`` is malformed.
    """
    params = _pg_params(dsn)
    options = {
        name: value
        for name, variable, value in _PG_DEFAULTS
        if name not in params and variable not in environ
    }
    pool = _PostgresPool(  # type: ignore[no-untyped-call]
        "psycopg",
        dsn,
        cp_min=1,
        cp_max=1,
        cp_reconnect=True,
        cp_good_sql="SELECT 1",
        cp_reactor=reactor,
        cp_noisy=False,
        **options,
    )
    store = MarketStore(pool, placeholder="%s", description=_pg_description(params))
    return _prepared(store, _POSTGRES, _postgres_permanent)


def check_postgres(dsn: str) -> str:
    """Check that ``psycopg`` is installed and ``dsn`` is well-formed (without connecting).

    :returns: a description of the target, ``postgresql://user@host:port/dbname`` (the parts
        given; never the password).
    :raises StorageError: ``psycopg`` is missing or ``dsn`` is malformed.
    """
    return _pg_description(_pg_params(dsn))


def _pg_params(dsn: str) -> dict[str, object]:
    try:
        conninfo = import_module("psycopg.conninfo")
    except ImportError:
        raise StorageError("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from None
    try:
        return cast("dict[str, object]", conninfo.conninfo_to_dict(dsn))
    except Exception:  # the driver's message may quote part of the string, password included
        raise StorageError("malformed PostgreSQL connection string") from None


def _pg_description(params: dict[str, object]) -> str:
    """``postgresql://user@host:port/dbname`` from the parts given (never the password)."""
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


def _sqlite_permanent(error: BaseException | None) -> bool:
    """Every SQLite open failure is permanent but a lock held by another process."""
    text = str(error).lower()
    return not ("locked" in text or "busy" in text)


def _postgres_permanent(error: BaseException | None) -> bool:
    """Refused for want of rights (SQLSTATE class 42, e.g. 42501), not for being unreachable.

    Connection failures (server down, database or role missing, wrong password) carry no
    SQLSTATE in psycopg and are retried: the server may still be starting.
    """
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("42")


class _DriverConnection(Protocol):
    def rollback(self) -> None: ...
    def commit(self) -> None: ...
    def cursor(self) -> _DriverCursor: ...


class _DriverCursor(Protocol):
    def execute(self, sql: str) -> object: ...
    def close(self) -> None: ...


class _QuietConnection(adbapi.Connection):
    """A pooled PostgreSQL connection whose failed rollback is one warning, not two tracebacks.

    When the session is gone (server restart, killed backend), adbapi's rollback fails and
    logs "Rollback failed" twice with tracebacks.  Here the dead connection is dropped with one
    warning; the error that made the transaction fail still reaches the caller.
    """

    _log = Logger()

    def rollback(self) -> None:
        connection = cast(_DriverConnection, self._connection)
        if not self._pool.reconnect:
            connection.rollback()
            return
        try:
            connection.rollback()
            cursor = connection.cursor()
            cursor.execute(self._pool.good_sql)
            cursor.close()
            connection.commit()
            return
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            self._log.warn(
                "PostgreSQL session lost ({error}: {reason}); the next operation reconnects",
                error=type(error).__name__,
                reason=first_line,
            )
        self._pool.disconnect(connection)


class _PostgresPool(adbapi.ConnectionPool):
    connectionFactory = _QuietConnection


def _prepared(
    store: MarketStore, dialect: dict[str, str], permanent: Callable[[BaseException | None], bool]
) -> Deferred[MarketStore]:
    def failed(failure: Failure) -> MarketStore:
        store.close()
        error = failure.value
        cause = error.__cause__ if isinstance(error, StorageError) else error
        raise StorageError(f"cannot open {error}", permanent=permanent(cause)) from error

    d = store.create_schema(dialect)
    return d.addCallbacks(lambda _: store, failed)
