"""Output of the ``ctrader-twisted`` command: Rich tables for people, JSON lines for scripts.

In JSON mode every result is one JSON object per line on stdout (decimals as strings, times in
ISO 8601), and notes and progress go to stderr so stdout stays machine-readable.  Errors are
always one line on stderr.

When the reader of stdout goes away (``ctrader-twisted bars ... --json | head -1``), a write
raises :class:`StdoutClosed`: the command stops at once and exits quietly with status 141, the
status a shell shows for a tool ended by ``SIGPIPE``.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Column", "Output", "StdoutClosed", "iso_time", "json_value", "stdout_gone"]

#: A row of output: column key -> value.
Row = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: the JSON key, the table header, and right alignment for numbers."""

    key: str
    header: str
    numeric: bool = False


class StdoutClosed(Exception):
    """The reader of stdout closed it (a broken pipe): stop writing and exit quietly."""


def stdout_gone() -> None:
    """After a broken pipe on :data:`sys.stdout`: point its descriptor at ``/dev/null``, so
    that the interpreter's final flush of what is still buffered fails neither loudly
    (``Exception ignored ... BrokenPipeError``) nor with a different exit status."""
    with suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _console(file: TextIO, *, width: int | None = None) -> Console:
    """A Rich console that reports a broken pipe instead of exiting.

    (Rich's own reaction, ``SystemExit(1)`` from inside ``print``, would escape the reactor's
    callbacks as an unhandled error and end with the wrong status.)  Rich is imported here, on
    first use, so that JSON output and ``--help`` do not load it.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the reader closed the pipe")

    return _Console(file=file, highlight=False, width=width, soft_wrap=False)


@contextmanager
def _writing() -> Iterator[None]:
    """Turn a broken pipe on stdout into :class:`StdoutClosed`."""
    try:
        yield
    except BrokenPipeError:
        raise StdoutClosed() from None


def json_value(value: object) -> object:
    """Turn a model value into something ``json.dumps`` writes exactly."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, enum.Enum):
        return value.name
    return value


def iso_time(moment: datetime) -> str:
    """ISO 8601 in UTC with ``Z``: whole seconds (``2024-05-01T12:30:00Z``), or milliseconds,
    the protocol's precision, when there are any (``2024-05-01T12:30:00.250Z``)."""
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


class Output:
    """Where the command writes.

    :param json_mode: write JSON lines instead of tables.
    :param stdout: results.
    :param stderr: errors, and in JSON mode notes and progress.
    """

    def __init__(self, *, json_mode: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json_mode = json_mode
        self._stdout = stdout
        self._stderr = stderr
        self._out_console: Console | None = None
        self._error_console: Console | None = None
        self._interrupted = False

    @property
    def _console(self) -> Console:
        """Rich console on stdout (160 columns when not a terminal), made on first use."""
        if self._out_console is None:
            wide = None if self._stdout.isatty() else 160
            self._out_console = _console(self._stdout, width=wide)
        return self._out_console

    @property
    def _err_console(self) -> Console:
        """Rich console on stderr, made on first use."""
        if self._error_console is None:
            self._error_console = _console(self._stderr)
        return self._error_console

    def emit(self, data: Row) -> None:
        """Write one JSON object line (JSON mode only; ignored otherwise)."""
        if self.json_mode:
            record = {key: json_value(value) for key, value in data.items()}
            with _writing():
                self._stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._stdout.flush()

    def line(self, text: str, data: Row) -> None:
        """Write ``text`` for people, or ``data`` as a JSON line."""
        if self.json_mode:
            self.emit(data)
        else:
            with _writing():
                self._console.print(text, markup=False)

    def table(
        self, title: str, columns: Sequence[Column], rows: Sequence[Row], *, kind: str = ""
    ) -> None:
        """Write rows as a table, or one JSON object per row (with ``"type": kind`` if given)."""
        if self.json_mode:
            for row in rows:
                self.emit({"type": kind, **row} if kind else row)
            return
        # The title is a line of its own, not the table's title: Rich wraps a table's title to
        # the table's width, so a narrow table (``ticks``) broke its caption over two lines.
        from rich.table import Table
        from rich.text import Text

        table = Table()
        for column in columns:
            table.add_column(column.header, justify="right" if column.numeric else "left")
        for row in rows:
            table.add_row(*(_text(row.get(column.key)) for column in columns))
        with _writing():
            self._console.print(Text(title, style="table.title"))
            self._console.print(table)

    def note(self, text: str) -> None:
        """Write an informational line (stdout for people, stderr in JSON mode)."""
        console = self._err_console if self.json_mode else self._console
        with _writing():
            console.print(text, markup=False)

    def heading(self, text: str) -> None:
        """Write a section heading (people only)."""
        if not self.json_mode:
            with _writing():
                self._console.rule(text, style="cyan")

    def error(self, text: str) -> None:
        """Write a one-line error to stderr (nothing after :meth:`interrupt`)."""
        if self._interrupted:
            return
        with suppress(BrokenPipeError):  # nowhere left to say it
            self._stderr.write(f"error: {text}\n")
            self._stderr.flush()

    def interrupt(self) -> None:
        """The user pressed Ctrl-C: say so once, then stay quiet about the teardown."""
        if not self._interrupted:
            self._interrupted = True
            with suppress(BrokenPipeError):
                self._stderr.write("interrupted\n")
                self._stderr.flush()

    @contextmanager
    def progress(self, description: str) -> Iterator[Callable[[float, int], None]]:
        """A progress bar on stderr; yields ``update(fraction, items)``."""
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[items]} items"),
            TimeElapsedColumn(),
            console=self._err_console,
            transient=False,
        )
        task = bar.add_task(description, total=1000, items=0)

        def update(fraction: float, items: int) -> None:
            bar.update(task, completed=int(fraction * 1000), items=items)

        with bar:
            yield update
