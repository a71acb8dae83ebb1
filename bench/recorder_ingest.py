"""Recorder ingest: how fast market data reaches SQLite and PostgreSQL, and how late.

``python -m bench.recorder_ingest [--seconds 60] [--db sqlite,postgres] [--json]``

Three measurements per database, in one run:

``ceiling``
    A bare loop in one thread writes the rows the recorder writes for a synthetic stream
    (per event a spot row and a depth change of 10 new quotes and 10 deleted ids, like the
    sandbox's; a bar now and then) into a fresh database with the recorder's schema, 1000 rows
    per transaction: ``executemany`` on SQLite, ``COPY`` on PostgreSQL.  Rows (= events'
    rows) per second.
``capacity``
    The same rows through the recorder's own writer (``BatchWriter`` and ``MarketStore`` on a
    real reactor, the database in its worker thread), fed as fast as it takes them: rows per
    second committed, and its share of the ceiling.
``live``
    A real ``ctrader-twisted sandbox`` at the fastest tick (``--tick-interval 0.001``) and a
    real ``ctrader-twisted record`` process with all 16 sandbox symbols, M1 and depth, for
    ``--seconds``: rows per second stored, the longest single write (from the recorder's status
    line, when it reports it), and the event-to-row-visible lag: a poller here reads the new
    spot and depth rows every 50 ms, each row's lag being the poll time minus the recorder's
    receive time (``received_ms``; both clocks are this machine's).

``--recorder-src DIR`` runs the recorder process from another source tree (for instance
``git archive <commit> | tar -x -C DIR`` of an older commit) to get "before" figures; the
poller reads whichever depth table that version writes.  PostgreSQL: ``--postgres DSN`` uses an
existing database; otherwise a throwaway server is started with ``tests/pgserver.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._common import percentile, progress

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = 16
BATCH = 1000
POLL = 0.05
#: Runs the CLI (``ctrader_twisted`` has no ``__main__``).
CLI = ("-c", "import sys; from ctrader_twisted.cli import main; sys.exit(main(sys.argv[1:]))")


# Synthetic rows (the recorder's shapes)


def legacy() -> bool:
    """Whether the recorder here is the one before depth changes (one row per quote)."""
    from ctrader_twisted.recorder import storage

    return not hasattr(storage, "_change_row")


def synthetic_events(events: int) -> list[tuple[Any, ...]]:
    """Per event: symbol, received ms, bid, the quotes added, the ids deleted (as the sandbox
    sends depth: the previous 10 quotes deleted, 10 new ones)."""
    out = []
    ids = 0
    for n in range(events):
        symbol = 1 + n % SYMBOLS
        bid = 110_000 + (n * 7919) % 500
        added = []
        for level in range(5):
            ids += 2
            added.append((ids - 1, "bid", bid - level, 100_000 * (level + 1)))
            added.append((ids, "ask", bid + 12 + level, 100_000 * (level + 1)))
        deleted = tuple(range(ids - 29, ids - 9)) if ids > 20 else ()
        out.append((symbol, 1_700_000_000_000 + n, bid, tuple(added), deleted))
    return out


def stored_rows(events: int) -> tuple[list[tuple[Any, ...]], list[list[tuple[Any, ...]]]]:
    """The spot rows and, per event, the depth rows the recorder here stores."""
    spots: list[tuple[Any, ...]] = []
    depth: list[list[tuple[Any, ...]]] = []
    old = legacy()
    if not old:
        from ctrader_twisted.recorder._rows import DepthChange
        from ctrader_twisted.recorder.storage import _change_row
    for symbol, received, bid, added, deleted in synthetic_events(events):
        spots.append((symbol, received, received - 3, bid, bid + 12))
        if old:
            rows = [(symbol, received, q, side, price, size) for q, side, price, size in added]
            rows.extend((symbol, received, q, "delete", None, None) for q in deleted)
            depth.append(rows)
        else:
            depth.append([_change_row(DepthChange(symbol, received, added, deleted))])
    return spots, depth


# Databases


class Database:
    """One database kind: how to get a fresh one, a raw connection, the bare writer."""

    name = ""

    def fresh(self) -> str:
        raise NotImplementedError

    def connect(self, target: str) -> Any:
        raise NotImplementedError

    def recorder_args(self, target: str) -> list[str]:
        raise NotImplementedError

    def open_store(self, reactor: Any, target: str) -> Any:
        raise NotImplementedError

    def bare_write(self, connection: Any, spots: list[Any], changes: list[Any]) -> None:
        raise NotImplementedError


class SQLite(Database):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return str(self.directory / f"market-{os.getpid()}-{self.count}.sqlite3")

    def connect(self, target: str) -> Any:
        connection = sqlite3.connect(target, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def recorder_args(self, target: str) -> list[str]:
        return ["-d", target]

    def open_store(self, reactor: Any, target: str) -> Any:
        from ctrader_twisted.recorder.storage import open_sqlite

        return open_sqlite(reactor, target)

    def bare_write(self, connection: Any, spots: list[Any], changes: list[Any]) -> None:
        connection.executemany(
            "INSERT INTO spots (symbol_id, received_ms, server_ms, bid, ask)"
            " VALUES (?, ?, ?, ?, ?)",
            spots,
        )
        if legacy():
            connection.executemany(
                "INSERT INTO depth (symbol_id, received_ms, quote_id, side, price, size)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                changes,
            )
        else:
            connection.executemany(
                "INSERT INTO depth_changes (symbol_id, received_ms, added, deleted)"
                " VALUES (?, ?, ?, ?)",
                changes,
            )
        connection.commit()


class Postgres(Database):
    name = "postgres"

    def __init__(self, dsn: str | None, directory: Path) -> None:
        self.server: Any = None
        if dsn is None:
            sys.path.insert(0, str(ROOT))
            from tests.pgserver import PostgresServer, _run_as, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL binaries not found (or pass --postgres DSN)")
            root = Path(tempfile.mkdtemp(prefix="bench-recorder-pg-"))  # chowned if root
            self.server = PostgresServer(bindir, root, _run_as())
            self.server.start()
            dsn = self.server.dsn()
        self.dsn = dsn
        self.count = 0

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def fresh(self) -> str:
        import psycopg

        self.count += 1
        schema = f"ingest_{os.getpid()}_{self.count}"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.execute(f"CREATE SCHEMA {schema}")
        return f"{self.dsn} options='-c search_path={schema}'"

    def connect(self, target: str) -> Any:
        import psycopg

        return psycopg.connect(target)

    def recorder_args(self, target: str) -> list[str]:
        return ["--postgres", target]

    def open_store(self, reactor: Any, target: str) -> Any:
        from ctrader_twisted.recorder.storage import open_postgres

        return open_postgres(reactor, target)

    def bare_write(self, connection: Any, spots: list[Any], changes: list[Any]) -> None:
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY spots (symbol_id, received_ms, server_ms, bid, ask) FROM STDIN"
            ) as copy:
                for row in spots:
                    copy.write_row(row)
            with cursor.copy(
                "COPY depth (symbol_id, received_ms, quote_id, side, price, size) FROM STDIN"
                if legacy()
                else "COPY depth_changes (symbol_id, received_ms, added, deleted) FROM STDIN"
            ) as copy:
                for row in changes:
                    copy.write_row(row)
        connection.commit()


def create_schema(db: Database, target: str) -> None:
    """The recorder's schema in ``target`` (through the recorder's own store)."""
    from twisted.internet import defer, task

    async def run(reactor: Any) -> None:
        store = await db.open_store(reactor, target)
        await store.close()

    _run_reactor(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)), task)


_REACTOR_USED = False


def _run_reactor(main: Callable[[Any], Any], task: Any) -> None:
    """Run ``main`` on a reactor (a fresh process per call after the first, as Twisted's
    reactor runs once per process)."""
    global _REACTOR_USED
    if _REACTOR_USED:
        raise RuntimeError("the reactor already ran in this process")
    _REACTOR_USED = True
    try:
        task.react(lambda reactor: main(reactor))
    except SystemExit as exit_:
        if exit_.code:
            raise


# Ceiling


def measure_ceiling(db: Database, events: int) -> dict[str, float]:
    spots, depth = stored_rows(events)
    target = db.fresh()
    _schema_in_child(db, target)
    connection = db.connect(target)
    rows = len(spots) + sum(len(d) for d in depth)
    per_event = rows / events
    step = max(1, int(BATCH / per_event))  # about BATCH rows per transaction
    started = time.perf_counter()
    for start in range(0, events, step):
        flat = [row for event in depth[start : start + step] for row in event]
        db.bare_write(connection, spots[start : start + step], flat)
    elapsed = time.perf_counter() - started
    connection.close()
    return {"rows_per_s": rows / elapsed, "events_per_s": 2 * events / elapsed}


def _schema_in_child(db: Database, target: str) -> None:
    """Create the schema in a child process (this one's reactor is kept for ``capacity``)."""
    code = (
        "import sys; import bench.recorder_ingest as b; "
        f"b.create_schema({_db_expr(db)}, sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, target], check=True, cwd=ROOT, timeout=60)


def _db_expr(db: Database) -> str:
    if isinstance(db, SQLite):
        return f"b.SQLite(b.Path({str(db.directory)!r}))"
    assert isinstance(db, Postgres)
    return f"b._Existing({db.dsn!r})"


class _Existing(Postgres):
    def __init__(self, dsn: str) -> None:
        self.server = None
        self.dsn = dsn
        self.count = 0


# Capacity: the recorder's writer, saturated


def measure_capacity(db: Database, events: int) -> dict[str, float]:
    """Run in a child process (it needs a reactor of its own)."""
    code = (
        "import sys, json; import bench.recorder_ingest as b; "
        f"print(json.dumps(b._capacity({_db_expr(db)}, int(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(events)],
        check=False,
        cwd=ROOT,
        timeout=600,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"capacity run failed: {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _capacity(db: Database, events: int) -> dict[str, float]:
    from twisted.internet import defer, task

    from ctrader_twisted.recorder._rows import BarRow, DepthRow, SpotRow
    from ctrader_twisted.recorder._writer import BatchWriter

    target = db.fresh()
    result: dict[str, float] = {}
    old = legacy()
    stream = synthetic_events(events)
    spot_rows = [SpotRow(e[0], e[1], e[2], e[2] + 12, e[1] - 3) for e in stream]
    depth: list[Any] = []
    for symbol, received, _, added, deleted in stream:
        if old:
            rows = [DepthRow(symbol, received, q, side, p, z) for q, side, p, z in added]
            rows.extend(DepthRow(symbol, received, q, "delete", None, None) for q in deleted)
            depth.append(rows)
        else:
            from ctrader_twisted.recorder._rows import DepthChange

            depth.append(DepthChange(symbol, received, added, deleted))
    bars = [BarRow(1 + n % SYMBOLS, 1, n, 110_000, 110_009, 109_990, 110_001, 50, "live")
            for n in range(0, events, 1000)]  # fmt: skip

    async def run(reactor: Any) -> None:
        store = await db.open_store(reactor, target)
        if old:
            writer = BatchWriter(store, reactor, max_rows=BATCH)
            add_depth = writer.add_depth
        else:
            writer = BatchWriter(store, reactor, max_rows=BATCH, max_pending=100 * BATCH)
            add_depth = writer.add_depth_change
        started = time.perf_counter()
        index = 0
        while index < events:
            # Keep a few batches queued, as a recorder does when events come faster than
            # the database takes them; yield to the reactor between bursts.
            while writer.rows_pending < 4 * BATCH and index < events:
                writer.add_spot(spot_rows[index])
                add_depth(depth[index])
                if index % 1000 == 0:
                    writer.add_bar(bars[index // 1000])
                index += 1
            await task.deferLater(reactor, 0.001, lambda: None)
        await writer.flush()
        elapsed = time.perf_counter() - started
        writer.stop()
        result.update(
            rows_per_s=writer.rows_written / elapsed,
            events_per_s=2 * events / elapsed,
            max_write_s=getattr(writer, "max_write_seconds", float("nan")),
        )
        await store.close()

    _run_reactor(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)), task)
    return result


# Live: real sandbox and recorder processes


class Poller(threading.Thread):
    """Reads new spot and depth rows every ``POLL`` seconds; each row's visible lag."""

    def __init__(self, db: Database, target: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.target = target
        self.stop_event = stop
        self.lags: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:
            self.error = error

    def _run(self) -> None:
        connection = None
        last = {"spots": 0, "depth": 0}
        depth_table = None
        while not self.stop_event.wait(POLL):
            try:
                if connection is None:
                    connection = self.db.connect(self.target)
                    if isinstance(self.db, Postgres):
                        connection.autocommit = True
                if depth_table is None:
                    depth_table = self._depth_table(connection)
                now_ms = time.time() * 1000
                for key, table in (("spots", "spots"), ("depth", depth_table)):
                    rows = connection.execute(
                        f"SELECT id, received_ms FROM {table} WHERE id > {last[key]}"  # noqa: S608
                    ).fetchall()
                    for row_id, received in rows:
                        self.lags.append(now_ms - received)
                        last[key] = max(last[key], row_id)
            except Exception:
                if connection is not None:
                    connection.close()
                connection = None

    def _depth_table(self, connection: Any) -> str:
        """``depth_changes``, or an older recorder's ``depth`` table; raises until either is
        there."""
        for table in ("depth_changes", "depth"):
            try:
                connection.execute(f"SELECT id FROM {table} LIMIT 1").fetchall()  # noqa: S608
            except Exception:
                if isinstance(self.db, Postgres):
                    connection.rollback()
                continue
            return table
        raise LookupError("no depth table yet")


def measure_live(
    db: Database, seconds: float, recorder_src: Path | None, directory: Path
) -> dict[str, float]:
    from ctrader_twisted.sandbox.catalogue import SYMBOLS as CATALOGUE

    state = directory / "sandbox-state"
    target = db.fresh()
    logs = directory / f"live-{db.name}"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sandbox_log = (logs / "sandbox.log").open("wb")
    recorder: subprocess.Popen[bytes] | None = None
    stop_seconds = float("nan")
    sandbox = subprocess.Popen(
        [sys.executable, *CLI, "sandbox", "--port", "0", "--state-dir",
         str(state), "--tick-interval", "0.001", "--always-open"],
        stdout=sandbox_log, stderr=subprocess.STDOUT, env=env, cwd=directory,
    )  # fmt: skip
    try:
        port = _wait_for(logs / "sandbox.log", rb"listening on 127\.0\.0\.1:(\d+)", 30)
        recorder_env = dict(env)
        if recorder_src is not None:
            recorder_env["PYTHONPATH"] = str(recorder_src)
        names = ",".join(spec.name for spec in CATALOGUE.values())
        recorder_log = (logs / "recorder.log").open("wb")
        recorder = subprocess.Popen(
            [sys.executable, *CLI, "record", "-e", "sandbox", "--port",
             str(port), "--ca-file", str(state / "sandbox-ca.pem"), "-s", names, "-p", "M1",
             "--depth", "--history", "0", "--status-interval", "1", *db.recorder_args(target)],
            stdout=recorder_log, stderr=subprocess.STDOUT, env=recorder_env, cwd=directory,
        )  # fmt: skip
        stop = threading.Event()
        poller = Poller(db, target, stop)
        poller.start()
        time.sleep(seconds)
        recorder.send_signal(signal.SIGTERM)
        stopped_at = time.perf_counter()
        try:
            recorder.wait(90)
        except subprocess.TimeoutExpired:
            recorder.kill()  # it could not flush its backlog in time
            recorder.wait(30)
        stop_seconds = time.perf_counter() - stopped_at
        time.sleep(2 * POLL)
        stop.set()
        poller.join(10)
    finally:
        for process in (recorder, sandbox):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)
    text = (logs / "recorder.log").read_text(errors="replace")
    statuses = re.findall(r"Recorder status: (\d+) events received, (\d+) rows written", text)
    longest = re.findall(r"longest write ([\d.]+) s", text)
    write_lags = [float(x) for x in re.findall(r"write lag ([\d.]+) s", text)]
    pending = [int(x) for x in re.findall(r"(\d+) pending", text)]
    events, rows = (int(statuses[-1][0]), int(statuses[-1][1])) if statuses else (0, 0)
    lags = poller.lags
    return {
        "events_per_s": events / seconds,
        "rows_per_s": rows / seconds,
        "rows_visible": len(lags),
        "max_write_s": float(longest[-1]) if longest else float("nan"),
        "max_write_lag_s": max(write_lags, default=float("nan")),
        "max_pending": max(pending, default=0),
        "p50_lag_ms": percentile(lags, 0.5),
        "p99_lag_ms": percentile(lags, 0.99),
        "max_lag_ms": max(lags, default=float("nan")),
        "stop_s": stop_seconds,
    }


def _wait_for(log: Path, pattern: bytes, limit: float) -> int:
    for _ in range(int(limit / 0.05)):
        found = re.search(pattern, log.read_bytes())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise RuntimeError(f"{log} did not show {pattern!r}: {log.read_text()[-2000:]}")


# Main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recorder_ingest", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="live run length")
    parser.add_argument("--events", type=int, default=40_000, help="ceiling/capacity events")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--postgres", default=None, help="an existing database's DSN")
    parser.add_argument("--recorder-src", type=Path, default=None, help="recorder source tree")
    parser.add_argument("--skip", default="", help="phases to skip: ceiling,capacity,live")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        directory = Path(tmp)
        for name in args.db.split(","):
            db: Database = (
                SQLite(directory) if name == "sqlite" else Postgres(args.postgres, directory)
            )
            try:
                result: dict[str, Any] = {}
                if "ceiling" not in skip:
                    progress(f"{name}: ceiling ({args.events} events)")
                    result["ceiling"] = measure_ceiling(db, args.events)
                if "capacity" not in skip:
                    progress(f"{name}: capacity of the recorder's writer")
                    result["capacity"] = measure_capacity(db, args.events)
                    if "ceiling" in result:
                        share = result["capacity"]["rows_per_s"] / result["ceiling"]["rows_per_s"]
                        result["capacity"]["share_of_ceiling"] = share
                if "live" not in skip:
                    progress(f"{name}: live, 16 symbols with depth, {args.seconds:g} s")
                    result["live"] = measure_live(db, args.seconds, args.recorder_src, directory)
                results[name] = result
            finally:
                if isinstance(db, Postgres):
                    db.close()
    if args.json:
        print(json.dumps(results))
    else:
        for name, result in results.items():
            for phase, figures in result.items():
                text = ", ".join(
                    f"{key} {value:,.3f}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in figures.items()
                )
                print(f"{name:8} {phase:9} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
