"""Recorders scaled out: three real ``ctrader-twisted record`` processes, sharded by overlapping
symbol lists, into one PostgreSQL database, against one real ``ctrader-twisted sandbox``.

One recorder is killed with SIGKILL a few seconds after a minute boundary and restarted after
the next one (so it misses a whole bar of every series it records, one symbol of which no other
recorder has).  The three create the schema at the same time, and the symbols two or three of
them share are written concurrently by each.  Afterwards every series of every symbol holds
exactly the sandbox's closed bars (same OHLC and volume), each once, with no gap, from the
first start's history reach up to the last boundary.

Both the sandbox and the recorders run with their clock shifted by one offset (see
``test_recorder_processes``) so that the first boundary comes three seconds after the start.
Skipped, saying why, without PostgreSQL or psycopg.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from twisted.trial.unittest import TestCase

from ctrader_twisted.recorder.storage import open_postgres
from ctrader_twisted.sandbox.catalogue import SYMBOLS
from ctrader_twisted.sandbox.market import PriceWalk
from tests.pgserver import shared_server
from tests.recorder_support import reactor
from tests.test_recorder_processes import Shifted, _check, exited, sandbox_port

SEED: Final = 23
TICK: Final = 0.1
HISTORY: Final = 20
NAMES: Final = {spec.name: spec.symbol_id for spec in SYMBOLS.values()}
#: Overlapping shards: EURUSD in all three, GBPUSD and USDJPY in two; the killed one (B) alone
#: has AUDUSD.
SHARDS: Final = {
    "A": ("EURUSD", "GBPUSD", "USDJPY"),
    "B": ("EURUSD", "GBPUSD", "AUDUSD"),
    "C": ("EURUSD", "USDJPY", "USDCHF"),
}


class ScaleOutTests(TestCase):
    timeout = 180
    maxDiff = None

    async def test_three_sharded_recorders_one_killed_every_bar_once(self) -> None:
        server = shared_server()
        dsn = server.new_schema()
        directory = Path(tempfile.mkdtemp(prefix="ctrader-recorder-scaleout-"))
        self.addCleanup(shutil.rmtree, directory, True)
        state = directory / "state"
        first = (int(time.time()) // 60 + 2) * 60  # a minute boundary of the shifted clock
        shifted = Shifted(self, directory, first - 5.0 - time.time())
        sandbox, sandbox_log = shifted.start(
            "sandbox",
            "sandbox", "--port", "0", "--state-dir", str(state), "--seed", str(SEED),
            "--tick-interval", str(TICK), "--always-open",
        )  # fmt: skip
        port = await sandbox_port(sandbox_log)

        def record(shard: str, run: int) -> tuple[subprocess.Popen[bytes], Path]:
            return shifted.start(
                f"recorder-{shard}-{run}",
                "record", "-e", "sandbox", "--port", str(port),
                "--ca-file", str(state / "sandbox-ca.pem"), "--postgres", dsn,
                "-s", ",".join(SHARDS[shard]), "-p", "M1", "--depth",
                "--history", str(HISTORY), "--status-interval", "0",
            )  # fmt: skip

        await shifted.until(first - 3.0)
        processes = {shard: record(shard, 1) for shard in SHARDS}
        await shifted.until(first + 5.0)
        killed, killed_log = processes["B"]
        killed.send_signal(signal.SIGKILL)
        self.assertEqual(await exited(killed), -signal.SIGKILL)
        await shifted.until(first + 62.0)  # down across the next boundary
        processes["B"] = record("B", 2)
        await shifted.until(first + 72.0)
        logs = []
        for process, log in processes.values():
            self.assertIsNone(process.poll(), log.read_text()[-3000:])
            process.send_signal(signal.SIGTERM)
            self.assertEqual(await exited(process), 0, log.read_text()[-3000:])
            logs.append(log.read_bytes())
        sandbox.terminate()
        await exited(sandbox)
        logs.append(killed_log.read_bytes())
        self.assertNotIn(b"Traceback", b"".join(logs))

        store = await open_postgres(reactor, dsn)
        self.addCleanup(store.close)
        walk = PriceWalk(SEED, int(TICK * 1000), always_open=True)
        reach = first // 60 - 1 - HISTORY
        end = first + 60.0  # the bar the killed recorder missed closed here
        problems = {}
        for name in sorted({s for shard in SHARDS.values() for s in shard}):
            stored = await store.bars(NAMES[name], 1)
            _, problem = _check(walk, NAMES[name], 1, stored, reach, end)
            if problem:
                problems[name] = problem
        self.assertEqual(problems, {})
        counts = await store.counts()
        self.assertGreater(counts["depth"], 0)
        self.assertGreater(counts["spots"], 0)
