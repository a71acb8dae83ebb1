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
- ``depth_changes(id PK, symbol_id, received_ms, added, deleted)``: one row per depth event,
  ``added`` a JSON list of ``[quote_id, "b"|"a", price, size]``, ``deleted`` a JSON list of
  quote ids; the view ``depth(id, symbol_id, received_ms, quote_id, side, price, size)`` lists
  them one quote per row (with the rows of the old ``depth`` table, renamed ``depth_v1`` on
  start), and :meth:`MarketStore.depth_book` rebuilds the book at a time.
- view ``bars_decimal``: ``bars`` with prices as decimals and the open time as text.

Writes: SQLite ``executemany``; PostgreSQL ``COPY`` (bars through a temporary table and one
upsert).  A live bar never replaces one stored from history.
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
from ctrader_twisted.recorder._rows import BarRow, DepthChange, DepthRow, SpotRow

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
    "CREATE TABLE IF NOT EXISTS depth_changes (id {serial}, symbol_id BIGINT NOT NULL,"
    " received_ms BIGINT NOT NULL, added TEXT NOT NULL, deleted TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS depth_changes_by_symbol_time"
    " ON depth_changes (symbol_id, received_ms)",
    "CREATE {view} bars_decimal AS SELECT b.symbol_id, s.name, b.period,"
    " {time_text} AS opened_utc, b.time_minutes,"
    " b.open / 100000.0 AS open, b.high / 100000.0 AS high, b.low / 100000.0 AS low,"
    " b.close / 100000.0 AS close, b.volume, b.source"
    " FROM bars b LEFT JOIN symbols s ON s.symbol_id = b.symbol_id",
)
#: The ``depth`` view: one row per quote a depth change added (``side`` bid/ask) or deleted
#: (``side`` delete), with ``id`` the change's id, as the ``depth`` table of earlier versions
#: held them (whose rows, kept in ``depth_v1``, it includes).
_DEPTH_VIEW: Final = (
    "CREATE VIEW depth AS"
    " SELECT c.id, c.symbol_id, c.received_ms, {quote_id} AS quote_id,"
    " CASE {side} WHEN 'b' THEN 'bid' ELSE 'ask' END AS side,"
    " {price} AS price, {size} AS size"
    " FROM depth_changes c {added}"
    " UNION ALL"
    " SELECT c.id, c.symbol_id, c.received_ms, {deleted_id}, 'delete', {null}, {null}"
    " FROM depth_changes c {deleted}"
)
_DEPTH_V1: Final = (
    " UNION ALL SELECT id, symbol_id, received_ms, quote_id, side, price, size FROM depth_v1"
)
_SQLITE: Final = {
    "serial": "INTEGER PRIMARY KEY",
    "view": "VIEW IF NOT EXISTS",
    "time_text": "datetime(b.time_minutes * 60, 'unixepoch')",
    "quote_id": "json_extract(q.value, '$[0]')",
    "side": "json_extract(q.value, '$[1]')",
    "price": "json_extract(q.value, '$[2]')",
    "size": "json_extract(q.value, '$[3]')",
    "added": ", json_each(c.added) q",
    "deleted_id": "d.value",
    "deleted": ", json_each(c.deleted) d",
    "null": "NULL",
    "lock": "",
    "kind": "SELECT type FROM sqlite_master WHERE name = ?",
}
_POSTGRES: Final = {
    "serial": "BIGSERIAL PRIMARY KEY",
    "view": "OR REPLACE VIEW",
    "time_text": "to_timestamp(b.time_minutes * 60)",
    "quote_id": "(q.value ->> 0)::bigint",
    "side": "q.value ->> 1",
    "price": "(q.value ->> 2)::bigint",
    "size": "(q.value ->> 3)::bigint",
    "added": "CROSS JOIN LATERAL jsonb_array_elements(c.added::jsonb) AS q(value)",
    "deleted_id": "d.value::bigint",
    "deleted": "CROSS JOIN LATERAL jsonb_array_elements_text(c.deleted::jsonb) AS d(value)",
    "null": "NULL::bigint",
    # Recorders sharing one database create and migrate the schema one at a time.
    "lock": "SELECT pg_advisory_xact_lock(hashtext('ctrader_twisted.recorder.schema'))",
    "kind": "SELECT CASE relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' ELSE relkind::text"
    " END FROM pg_class WHERE oid = to_regclass(%s)",
}
_PG_DEFAULTS: Final = (  # (libpq parameter, its environment variable, our default)
    ("connect_timeout", "PGCONNECT_TIMEOUT", 10),
    ("application_name", "PGAPPNAME", "ctrader-recorder"),
)
_BAR_COLUMNS: Final = "symbol_id, period, time_minutes, open, high, low, close, volume, source"
#: A bar is one row per key whoever writes it; a newer version replaces it, but a live version
#: never replaces one from history (history is final; the live one may lack quiet ticks).
_ON_BAR_CONFLICT: Final = (
    " ON CONFLICT (symbol_id, period, time_minutes) DO UPDATE"
    " SET open = excluded.open, high = excluded.high, low = excluded.low,"
    " close = excluded.close, volume = excluded.volume, source = excluded.source"
    " WHERE bars.source = 'live' OR excluded.source = 'history'"
)
_UPSERT_BAR: Final = (
    f"INSERT INTO bars ({_BAR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?){_ON_BAR_CONFLICT}"  # noqa: S608
)
_PG_STAGE_BARS: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS bars_incoming (LIKE bars) ON COMMIT DELETE ROWS"
)
_PG_MERGE_BARS: Final = (
    f"INSERT INTO bars ({_BAR_COLUMNS}) SELECT {_BAR_COLUMNS} FROM bars_incoming"  # noqa: S608
    f" ORDER BY symbol_id, period, time_minutes{_ON_BAR_CONFLICT}"
)
_INSERT_SPOT: Final = (
    "INSERT INTO spots (symbol_id, received_ms, server_ms, bid, ask) VALUES (?, ?, ?, ?, ?)"
)
_SPOT_COLUMNS: Final = "symbol_id, received_ms, server_ms, bid, ask"
_DEPTH_COLUMNS: Final = "symbol_id, received_ms, added, deleted"
_INSERT_DEPTH: Final = f"INSERT INTO depth_changes ({_DEPTH_COLUMNS}) VALUES (?, ?, ?, ?)"  # noqa: S608 - fixed
#: The book of one symbol as of a time: per quote id its newest row (a change's deletions
#: apply before its additions), kept if that row added the quote.
_BOOK: Final = (
    "SELECT quote_id, side, price, size FROM (SELECT quote_id, side, price, size,"
    " ROW_NUMBER() OVER (PARTITION BY quote_id"
    " ORDER BY received_ms DESC, id DESC, side = 'delete') AS newest"
    " FROM depth WHERE symbol_id = ? AND received_ms <= ?) AS latest"
    " WHERE newest = 1 AND side <> 'delete' ORDER BY side, price, quote_id"
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


class _Copy(Protocol):
    def __enter__(self) -> _Copy: ...
    def __exit__(self, *exc: object) -> None: ...
    def write_row(self, row: Sequence[object]) -> None: ...
    def write(self, data: str) -> None: ...


class _CopyCursor(_Cursor, Protocol):
    def copy(self, statement: str) -> _Copy: ...


@dataclass(slots=True)
class Batch:
    """Rows collected for one write.  Bars with the same key keep only the last version.

    ``depth`` holds depth in the old form (one row per quote); each such row is stored as a
    change of its own.  ``depth_changes`` holds one row per depth event.
    """

    spots: list[SpotRow] = field(default_factory=list)
    bars: dict[tuple[int, int, int], BarRow] = field(default_factory=dict)
    depth: list[DepthRow] = field(default_factory=list)
    depth_changes: list[DepthChange] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spots) + len(self.bars) + len(self.depth) + len(self.depth_changes)


def _change_row(change: DepthChange) -> tuple[int, int, str, str]:
    """The stored form of a change: ``added`` and ``deleted`` as compact JSON lists."""
    added = ",".join(  # side "bid" -> "b", "ask" -> "a"
        f'[{quote_id},"{side[0]}",{price},{size}]' for quote_id, side, price, size in change.added
    )
    deleted = ",".join(map(str, change.deleted))
    return (change.symbol_id, change.received_ms, f"[{added}]", f"[{deleted}]")


_NULL: Final = "\\N"


def _copy_text(batch: Batch) -> tuple[str, list[tuple[object, ...]], str]:
    """Spots and depth changes as ``COPY`` text (integers and our JSON only: nothing to
    escape), and the bars as tuples in key order."""
    n = _NULL
    spots = "".join(
        f"{s.symbol_id}\t{s.received_ms}\t{n if s.server_ms is None else s.server_ms}"
        f"\t{n if s.bid is None else s.bid}\t{n if s.ask is None else s.ask}\n"
        for s in batch.spots
    )
    changes = [_change_row(_single_change(d)) for d in batch.depth]
    changes.extend(_change_row(c) for c in batch.depth_changes)
    text = "".join(f"{c[0]}\t{c[1]}\t{c[2]}\t{c[3]}\n" for c in changes)
    bars: list[tuple[object, ...]] = [
        (b.symbol_id, b.period, b.time_minutes, b.open, b.high, b.low, b.close, b.volume,
         b.source)
        for _, b in sorted(batch.bars.items())
    ]  # fmt: skip
    return spots, bars, text


def _single_change(row: DepthRow) -> DepthChange:
    if row.side == "delete":
        return DepthChange(row.symbol_id, row.received_ms, (), (row.quote_id,))
    added = ((row.quote_id, row.side, row.price or 0, row.size or 0),)
    return DepthChange(row.symbol_id, row.received_ms, added, ())


def _rows_of(batch: Batch) -> tuple[list[tuple[object, ...]], ...]:
    """The batch as plain tuples: spots, bars (in key order), depth changes."""
    spots: list[tuple[object, ...]] = [
        (s.symbol_id, s.received_ms, s.server_ms, s.bid, s.ask) for s in batch.spots
    ]
    bars: list[tuple[object, ...]] = [
        (b.symbol_id, b.period, b.time_minutes, b.open, b.high, b.low, b.close, b.volume,
         b.source)
        for _, b in sorted(batch.bars.items())
    ]  # fmt: skip
    changes: list[tuple[object, ...]] = [_change_row(_single_change(d)) for d in batch.depth]
    changes.extend(_change_row(c) for c in batch.depth_changes)
    return spots, bars, changes


class MarketStore:
    """Typed access to the recorder database; every method runs in the pool's one thread.

    Build it with :func:`open_sqlite` or :func:`open_postgres`.  Every method returns a Deferred
    that fails with :class:`StorageError` (wrapping the driver's error) when the database does;
    on a closed store the methods raise :class:`StorageError` at once.
    """

    _log = Logger()

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        *,
        placeholder: str,
        description: str,
        copy: bool = False,
    ) -> None:
        self._pool = pool
        self._placeholder = placeholder
        self._copy = copy
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
        """Create missing tables, indexes and views; migrate an older schema.

        The ``depth`` table of earlier versions (one row per quote) is renamed ``depth_v1``
        and kept; the ``depth`` view shows its rows and those of ``depth_changes`` alike.  On
        PostgreSQL this runs under an advisory lock, so recorders sharing a database do it one
        at a time.

        :returns: a Deferred firing with ``None`` when done; it fails with
            :class:`StorageError`.
        """
        kind_sql = dialect["kind"]

        def kind(cursor: _Cursor, name: str) -> str | None:
            cursor.execute(kind_sql, (name,))
            row = cursor.fetchone()
            return None if row is None or row[0] is None else str(row[0])

        def work(cursor: _Cursor) -> None:
            if dialect["lock"]:
                cursor.execute(dialect["lock"])
            if kind(cursor, "depth") == "table":
                cursor.execute("ALTER TABLE depth RENAME TO depth_v1")
            for statement in _TABLES:
                cursor.execute(statement.format(**dialect))
            view = _DEPTH_VIEW.format(**dialect)
            if kind(cursor, "depth_v1") == "table":
                view += _DEPTH_V1
            cursor.execute("DROP VIEW IF EXISTS depth")
            cursor.execute(view)

        return self._run(work)

    def write(self, batch: Batch) -> Deferred[int]:
        """Write ``batch`` in one transaction, in the pool's thread.

        SQLite takes the rows with ``executemany``; PostgreSQL with ``COPY`` (bars through a
        temporary table, then one upsert in key order, so recorders sharing the database
        store each bar once and do not deadlock on them).

        :returns: a Deferred firing with the number of rows written; it fails with
            :class:`StorageError` (the transaction is rolled back, nothing of the batch is
            stored, unless the connection was lost while committing: then the commit may or may
            not have happened).
        """
        work = self._copy_batch if self._copy else self._insert_batch
        return self._run(lambda cursor: work(cursor, batch))

    def _insert_batch(self, cursor: _Cursor, batch: Batch) -> int:
        spots, bars, changes = _rows_of(batch)
        if spots:
            cursor.executemany(self._sql(_INSERT_SPOT), spots)
        if bars:
            cursor.executemany(self._sql(_UPSERT_BAR), bars)
        if changes:
            cursor.executemany(self._sql(_INSERT_DEPTH), changes)
        return len(spots) + len(bars) + len(changes)

    def _copy_batch(self, cursor: _Cursor, batch: Batch) -> int:
        copying = cast(_CopyCursor, cursor)
        spots, bars, changes = _copy_text(batch)
        for sql, text in (
            (f"COPY spots ({_SPOT_COLUMNS}) FROM STDIN", spots),
            (f"COPY depth_changes ({_DEPTH_COLUMNS}) FROM STDIN", changes),
        ):
            if text:
                with copying.copy(sql) as copy:
                    copy.write(text)
        if bars:
            cursor.execute(_PG_STAGE_BARS)
            with copying.copy(f"COPY bars_incoming ({_BAR_COLUMNS}) FROM STDIN") as copy:
                for row in bars:
                    copy.write_row(row)
            cursor.execute(_PG_MERGE_BARS)
        return len(batch)

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

    def depth_book(self, symbol_id: int, at_ms: int) -> Deferred[list[tuple[int, str, int, int]]]:
        """The depth book of one symbol as the stored changes leave it at ``at_ms``.

        Every quote added by a change received at or before ``at_ms`` and not deleted by a later
        one (up to ``at_ms``); the query is the one ``docs/recorder.md`` shows.

        :returns: a Deferred firing with ``(quote_id, side, price, size)`` tuples ordered by
            side, price and id; it fails with :class:`StorageError`.
        """
        sql = self._sql(_BOOK)

        def work(cursor: _Cursor) -> list[tuple[int, str, int, int]]:
            cursor.execute(sql, (symbol_id, at_ms))
            return [
                (int(cast(int, q)), str(side), int(cast(int, p)), int(cast(int, z)))
                for q, side, p, z in cursor.fetchall()
            ]

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
    store = MarketStore(pool, placeholder="%s", description=_pg_description(params), copy=True)
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
