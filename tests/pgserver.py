"""A throwaway PostgreSQL server for tests: ``initdb`` in a temporary directory, one postmaster.

:func:`shared_server` starts one server per test process on first use (one to a few seconds,
mostly ``initdb``) and stops it, removing its directory, when the process exits.  A test takes a
fresh schema in the ``postgres`` database with :meth:`PostgresServer.new_schema` (milliseconds;
a new database takes half a second), or a database of its own with
:meth:`PostgresServer.create_database`.  The server listens on 127.0.0.1 only (a free port; no
Unix socket, whose path length is limited), trusts every connection (no passwords), and runs
with ``fsync=off``: nothing in it needs to survive a crash.

When the tools are missing (no ``initdb``/``postgres`` binaries, no ``psycopg``, or running as
root without a ``postgres`` user to run the server as), :func:`shared_server` raises
:class:`unittest.SkipTest` with the reason, so the tests skip instead of failing.  Binaries are
looked up in ``$CTRADER_PG_BINDIR``, then on ``PATH``, then in ``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import SkipTest

__all__ = ["PostgresServer", "shared_server"]

_START_TIMEOUT = 20.0  # seconds for the server to accept connections
_STOP_TIMEOUT = 10.0
_POLL = 0.05
_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=16MB",
    "max_connections=30",
    "max_wal_size=64MB",
    "logging_collector=off",
    "log_min_messages=warning",
)


class PostgresServer:
    """One running postmaster in ``root`` (created by :meth:`start`, removed by :meth:`stop`)."""

    def __init__(self, bindir: Path, root: Path, run_as: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.run_as = run_as
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._names = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", schema: str | None = None) -> str:
        """A libpq connection string to ``dbname`` over TCP on 127.0.0.1.

        :param schema: make this schema the session's ``search_path``.
        """
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"
        return dsn if schema is None else f"{dsn} options='-c search_path={schema}'"

    def start(self) -> None:
        """``initdb`` and start the server; wait (bounded) until it accepts connections.

        :raises RuntimeError: initdb failed or the server did not come up (log included).
        """
        if self.run_as is not None:
            shutil.chown(self.root, self.run_as, self.run_as)
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for _attempt in range(3):  # a free port can be taken before the server binds it
            self.port = _free_port()
            if self._launch():
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}")

    def create_database(self, name: str | None = None) -> str:
        """Create a new, empty database (blocking) and return its name."""
        name = name or self._new_name("db")
        self.execute(self.dsn(), f"CREATE DATABASE {name}")
        return name

    def new_schema(self) -> str:
        """Create a new, empty schema in the ``postgres`` database (blocking).

        :returns: a connection string whose sessions work in that schema.
        """
        name = self._new_name("t")
        self.execute(self.dsn(), f"CREATE SCHEMA {name}")
        return self.dsn(schema=name)

    def _new_name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}_{self._names}"

    def execute(self, dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (blocking: not on the reactor thread)."""
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    def terminate_sessions(self, dbname: str, application_name: str) -> int:
        """Kill the sessions of one application in ``dbname`` (blocking; waits for them to end).

        :returns: how many there were.
        """
        rows = self.execute(
            self.dsn(),
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            (dbname, application_name),
        )
        return len(rows)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown, then kill) and remove its directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)

    def _launch(self) -> bool:
        options = [arg for setting in _SETTINGS for arg in ("-c", setting)]
        with (self.root / "server.log").open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 *options],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, env=_environment(), preexec_fn=_die_with_parent,
                **self._user(),
            )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if self._accepts():
                return True
            time.sleep(_POLL)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not accept connections in {_START_TIMEOUT} s")

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [str(self.bindir / program), *args],
            stdin=subprocess.DEVNULL, capture_output=True, cwd=self.root, env=_environment(),
            timeout=60, check=False, **self._user(),
        )  # fmt: skip
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{output}")

    def _user(self) -> dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as, "group": self.run_as, "extra_groups": []}


def _environment() -> dict[str, str]:
    keep = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return {**keep, "LC_ALL": "C", "LANG": "C"}


def _die_with_parent() -> None:
    """In the child: get SIGINT (fast shutdown) if the test process dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG; after the uid change, which clears it


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _candidates() -> Iterator[Path]:
    override = os.environ.get("CTRADER_PG_BINDIR")
    if override:
        yield Path(override)
    found = shutil.which("initdb")
    if found:
        yield Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        yield Path(directory)


def find_bindir() -> Path | None:
    """The directory holding both ``initdb`` and ``postgres``, or ``None``."""
    for directory in _candidates():
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    return None


def _run_as() -> str | None:
    """The user to run the server as: ourselves, or ``postgres`` when we are root.

    :raises SkipTest: root without a ``postgres`` user.
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SkipTest(
            "running as root and there is no 'postgres' user to run the server"
        ) from None
    return "postgres"


_shared: PostgresServer | None = None
_failed: str | None = None


def shared_server() -> PostgresServer:
    """The test process's PostgreSQL server, started on first use.

    :raises SkipTest: ``psycopg`` or the PostgreSQL binaries are missing.
    :raises RuntimeError: the server failed to start (also on later calls).
    """
    global _shared, _failed
    if _shared is not None:
        return _shared
    if _failed is not None:
        raise RuntimeError(_failed)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise SkipTest("psycopg is not installed (pip install 'psycopg[binary]')") from None
    bindir = find_bindir()
    if bindir is None:
        raise SkipTest("PostgreSQL server binaries (initdb, postgres) not found")
    run_as = _run_as()
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="ctrader-pg-")), run_as)
    try:
        server.start()
    except BaseException as error:
        server.stop()
        _failed = f"the test PostgreSQL server failed to start: {error}"
        raise
    atexit.register(server.stop)
    _shared = server
    return server
