"""Run the drivers: one bench server process and one driver process per run.

Every run starts a fresh bench server (:mod:`bench.server`, the sandbox in its own process) and
one driver process for one client, so the client under test and the server never share a
process and, on a machine with two cores, need not share a core.  Runs of the two clients
alternate so that background noise hits both alike.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sizes", "run_driver", "sizes_for"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How much each driver does in one run."""

    rtt_count: int
    events_warmup: int
    events_runs: int
    events_count: int
    restore_runs: int
    restore_wait: float
    burst_budget: float
    ceiling_count: int
    burst_ordinary: int = 300
    burst_historical: int = 30

    def for_client(self, client: str) -> dict[str, Any]:
        """Driver settings for ``client`` (``"ours"`` or ``"official"``)."""
        common: dict[str, Any] = {
            "label": client,
            "burst_ordinary": self.burst_ordinary,
            "burst_historical": self.burst_historical,
            "burst_deadline": 60.0,
            "event_timeout": 120.0,
            "restore_runs": self.restore_runs,
            "restore_wait": self.restore_wait,
            "burst_budget": self.burst_budget,
            "ceiling_count": self.ceiling_count,
        }
        official_ceiling = max(1_000, self.ceiling_count // 10)
        if client == "ours":
            return {
                **common,
                "rtt_count": self.rtt_count,
                "events_warmup": self.events_warmup,
                "events_runs": self.events_runs,
                "events_count": self.events_count,
            }
        # The official SDK needs about a second per round trip and decodes with the pure-Python
        # protobuf runtime: smaller sizes keep a run under a minute.  Rates are per second, so
        # they compare; the event totals are reported next to the memory figures.
        return {
            **common,
            "rtt_count": max(3, self.rtt_count // 30),
            "events_warmup": max(1, self.events_warmup // 10),
            "events_runs": max(1, self.events_runs - 1),
            "events_count": max(1, self.events_count // 10),
            "ceiling_count": official_ceiling,
        }


def sizes_for(quick: bool, tiny: bool = False) -> Sizes:
    """The default sizes, ``--quick`` ones, or tiny ones for the smoke test."""
    if tiny:
        return Sizes(20, 200, 1, 500, 1, 0.5, 2.0, 2_000, burst_ordinary=10, burst_historical=2)
    if quick:
        return Sizes(150, 20_000, 2, 50_000, 2, 3.0, 8.0, 30_000)
    return Sizes(300, 100_000, 3, 300_000, 5, 5.0, 15.0, 100_000)


class _Server:
    """A bench server child process."""

    def __init__(self, tick_interval: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.server", "--tick-interval", str(tick_interval)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_environment(),
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise RuntimeError("the bench server did not start")
        self.address: dict[str, Any] = json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


def run_driver(
    client: str, python: Path | str, settings: dict[str, Any], credentials: dict[str, Any]
) -> dict[str, Any]:
    """One run: start a bench server, run ``client``'s driver against it, stop the server.

    :returns: the driver's JSON result.
    :raises RuntimeError: if the server or the driver fails.
    """
    module = "bench.our_driver" if client == "ours" else "bench.official_driver"
    server = _Server(tick_interval=0.02)
    try:
        config = {**settings, **credentials, **server.address}
        done = subprocess.run(
            [str(python), "-W", "ignore", "-m", module, json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env=_environment(),
            timeout=600,
            check=False,
        )
    finally:
        server.close()
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed with exit code {done.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
