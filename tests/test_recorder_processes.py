"""Real processes: ``ctrader-twisted sandbox`` and ``ctrader-twisted record`` with all 16
sandbox symbols, M1 and M5, restarts just before minute boundaries, and dropped connections.

The race this guards against (issue 12, item 1) needs a minute boundary a few seconds after a
(re)start, and missed bars need the recorder to be down across boundaries.  Waiting for real
minutes would take several of them, so both processes run with their clock shifted by the same
offset (``time.time`` plus a constant, set before Twisted is imported): the test picks the
offset so that a process starts four seconds before a five-minute boundary, and "a few minutes
of downtime" is the next pair of processes starting with an offset ten minutes larger.  The
sandbox's prices are a pure function of the seed and the time, so a sandbox restarted with a
later clock is the same market ten minutes on; everything else (TLS, sockets, signals, SQLite
on disk) is real.

Three runs against one SQLite file:

1. a fresh database, ``--history 240``, started four seconds before a boundary, then killed
   with SIGKILL twelve seconds after it;
2. ten minutes later, restarted four seconds before the next boundary, stopped with SIGTERM;
3. ten minutes later again, the same, stopped with SIGTERM.

Each sandbox aborts every connection after ``--drop-after-seconds`` (so each run reconnects at
least once, in the middle of its backfill).  Then every series (16 symbols x M1, M5) must hold
exactly the sandbox's closed bars, from 240 minutes before the first start up to the last
boundary, each once, in order, with the same OHLC and volume.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ctrader_twisted.recorder._rows import BarRow, bar_close_minute
from ctrader_twisted.recorder.storage import open_sqlite
from ctrader_twisted.sandbox.catalogue import SYMBOLS
from ctrader_twisted.sandbox.history import aggregate, bar_start
from ctrader_twisted.sandbox.market import PriceWalk
from tests.recorder_support import reactor

#: Runs ``ctrader-twisted`` with ``time.time`` shifted by ``argv[1]`` seconds.
SHIFTED: Final = """
import sys, time
offset = float(sys.argv.pop(1))
real_time, real_ns = time.time, time.time_ns
time.time = lambda: real_time() + offset
time.time_ns = lambda: real_ns() + int(offset * 1e9)
from ctrader_twisted.cli import main
sys.exit(main(sys.argv[1:]))
"""
SEED: Final = 11
TICK: Final = 0.1
HISTORY: Final = 240
PERIODS: Final = {"M1": 1, "M5": 5}
DROP_AFTER: Final = 8.0
#: Seconds (of the shifted clock) between a start and the boundary it must straddle.
LEAD: Final = 4.0
RUN_AFTER_BOUNDARY: Final = 12.0


class Shifted:
    """Processes started with one clock offset."""

    def __init__(self, case: TestCase, directory: Path, offset: float) -> None:
        self.case = case
        self.directory = directory
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.directory / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        with log.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter
                [sys.executable, "-c", SHIFTED, repr(self.offset), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
            )
        self.case.addCleanup(_kill, process)
        return process, log

    async def until(self, shifted_time: float) -> None:
        """Wait (at most two minutes) until the shifted clock reaches ``shifted_time``."""
        delay = min(max(shifted_time - self.now(), 0.0), 120.0)
        await deferLater(reactor, delay, lambda: None)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


async def exited(process: subprocess.Popen[bytes], limit: float = 20.0) -> int:
    """Wait (bounded) for ``process`` to exit; its status."""
    for _ in range(int(limit / 0.05)):
        status = process.poll()
        if status is not None:
            return status
        await deferLater(reactor, 0.05, lambda: None)
    process.kill()
    raise AssertionError(f"process {process.args[4:6]} did not exit within {limit} s")


async def sandbox_port(log: Path, limit: float = 20.0) -> int:
    """The port a starting sandbox prints, waiting at most ``limit`` seconds."""
    for _ in range(int(limit / 0.05)):
        found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", log.read_bytes())
        if found:
            return int(found.group(1))
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"the sandbox did not start: {log.read_text()[-2000:]}")


class RecorderProcessTests(TestCase):
    timeout = 150
    maxDiff = None

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ctrader-recorder-processes-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.state = self.directory / "state"
        self.db = self.directory / "market.sqlite3"

    async def run_once(
        self, boundary: int, stop: signal.Signals, number: int, extra: float = 0.0
    ) -> Shifted:
        """Sandbox and recorder started ``LEAD`` s before ``boundary`` (shifted time), stopped
        ``RUN_AFTER_BOUNDARY`` (plus ``extra``) s after it, the recorder with ``stop``."""
        shifted = Shifted(self, self.directory, boundary - LEAD - 1.5 - time.time())
        sandbox, sandbox_log = shifted.start(
            f"sandbox-{number}",
            "sandbox", "--port", "0", "--state-dir", str(self.state), "--seed", str(SEED),
            "--tick-interval", str(TICK), "--always-open",
            "--drop-after-seconds", str(DROP_AFTER),
        )  # fmt: skip
        port = await sandbox_port(sandbox_log)
        await shifted.until(boundary - LEAD)
        recorder, recorder_log = shifted.start(
            f"recorder-{number}",
            "record", "-e", "sandbox", "--port", str(port),
            "--ca-file", str(self.state / "sandbox-ca.pem"),
            "-s", ",".join(spec.name for spec in SYMBOLS.values()),
            "-p", ",".join(PERIODS), "-d", str(self.db), "--history", str(HISTORY),
            "--status-interval", "0",
        )  # fmt: skip
        await shifted.until(boundary + RUN_AFTER_BOUNDARY + extra)
        self.assertIsNone(recorder.poll(), recorder_log.read_text()[-3000:])
        recorder.send_signal(stop)
        status = await exited(recorder)
        sandbox.terminate()
        await exited(sandbox)
        expected_status = 0 if stop is signal.SIGTERM else -signal.SIGKILL
        self.assertEqual(status, expected_status, recorder_log.read_text()[-3000:])
        self.recorder_logs.append(recorder_log)
        return shifted

    async def test_every_series_complete_across_kills_restarts_and_drops(self) -> None:
        self.recorder_logs: list[Path] = []
        first = (int(time.time()) // 300 + 1) * 300  # any five-minute boundary will do
        reach = first // 60 - 1 - HISTORY  # the recorder starts in the minute before it
        await self.run_once(first, signal.SIGKILL, 1)
        await self.run_once(first + 600, signal.SIGTERM, 2)
        await self.run_once(first + 1200, signal.SIGTERM, 3, extra=4.0)  # room on a busy box
        # Up to the last boundary: bars that closed at it may still wait for their confirmation
        # from history when the recorder stops (the next start would confirm them); every bar
        # before it came from history in the last run, after the race at that boundary.
        end = first + 1200 - 1.0

        logs = b"".join(log.read_bytes() for log in self.recorder_logs)
        self.assertGreaterEqual(logs.count(b"Reconnected; backfilling"), 3)
        self.assertNotIn(b"Traceback", logs)
        store = await open_sqlite(reactor, self.db)
        self.addCleanup(store.close)
        walk = PriceWalk(SEED, int(TICK * 1000), always_open=True)
        problems: dict[str, str] = {}
        total = missing = 0
        for spec in SYMBOLS.values():
            for name, period in PERIODS.items():
                total += 1
                stored = await store.bars(spec.symbol_id, period)
                lost, problem = _check(walk, spec.symbol_id, period, stored, reach, end)
                missing += lost
                if problem:
                    problems[f"{spec.name} {name}"] = problem
        summary = f"{total - len(problems)} of {total} series complete, {missing} bar(s) missing"
        self.assertEqual(problems, {}, summary)


def _check(
    walk: PriceWalk, symbol_id: int, period: int, stored: list[BarRow], reach: int, end: float
) -> tuple[int, str]:
    """How many bars one stored series misses, and what is wrong with it (``""``: nothing).

    It must hold every bar the sandbox has that opened after ``reach`` and closed by ``end``
    (same open time, OHLC and volume), each once and in order, and no other closed bar (the
    bar opened at ``reach`` itself may be there or not: it depends on the second the series
    was first backfilled).
    """
    rows = [(b.time_minutes, b.open, b.high, b.low, b.close, b.volume) for b in stored]
    if [r[0] for r in rows] != sorted({r[0] for r in rows}):
        return 0, "out of order or repeated"
    spec = SYMBOLS[symbol_id]
    want = {}
    start = bar_start(period, reach)
    while bar_close_minute(period, start) * 60 <= end:
        bar = aggregate(walk, spec, start, bar_close_minute(period, start))
        if bar is not None and start >= reach:
            want[start] = (start, bar.open, bar.high, bar.low, bar.close, bar.volume)
        start = bar_close_minute(period, start)
    have = {r[0]: r for r in rows if bar_close_minute(period, r[0]) * 60 <= end}
    if have.get(reach, want.get(reach)) == want.get(reach):
        want.pop(reach, None)
        have.pop(reach, None)
    if have == want:
        return 0, ""
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    different = sorted(t for t in set(want) & set(have) if want[t] != have[t])
    return len(missing), (
        f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]},"
        f" {len(different)} different {different[:4]}"
    )
