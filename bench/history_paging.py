"""History paging: a year of M1 bars from a sandbox process, its requests, time and peak memory.

Usage: ``python -m bench.history_paging [--days 365] [--runs N] [--baseline REV] [--skip-cli]
[--json FILE]``.

A sandbox runs in its own process (default configuration: market hours, 1,000 bars per page,
5 historical requests per second per connection).  Two clients each download the same range of
EURUSD M1 bars, each in a fresh process:

- ``stream``: :func:`~ctrader_twisted.history.stream_trendbars` writing every batch to a CSV
  file (the library alone);
- ``cli``: ``ctrader-twisted bars EURUSD --out FILE`` (the command line).

For each: bars, requests (counted by the sandbox), wall time, the median time the sandbox took
to answer (streaming client), peak resident memory (the child's ``ru_maxrss``), and a digest of
the CSV written (the streaming client's files must be identical across trees and runs).  The
ideal is ``ceil(bars / page size)`` requests and, at 5 requests per second, ``ideal / 5``
seconds (the floor).

``--baseline REV`` runs the same clients on the package as it was at a git revision (``git
archive`` into a temporary folder, first on ``PYTHONPATH``); the sandbox is the current one for
both.  ``--runs`` alternates the trees, and medians are shown.  The client reuses a rate-limit
slot one second after the *answer* (``Client``'s ``rate_margin``), so its pace is 5 requests per
``1 s + answer time``: on a busy machine, where the sandbox takes longer to build a page, the
time ratio falls below the request ratio.  A year takes 80-90 s per client, so this is not part
of ``make test``.

Goals (issue 16): at least 95% of the ideal request count and time; under 100 MiB peak for both.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
#: The year measured by default: Monday 2025-01-06 to Monday 2026-01-05 (UTC).
DEFAULT_END = datetime(2026, 1, 5, tzinfo=timezone.utc)
PAGE = 1000
RATE = 5.0
RSS_GOAL_MIB = 100.0
_CLI = "import sys; from ctrader_twisted.cli import main; sys.argv[0] = 'ctrader-twisted'; "
_CLI += "sys.exit(main())"


# -- the sandbox process ------------------------------------------------------------------------


async def _serve(reactor: Any) -> None:
    """Run a sandbox; answer each line on stdin with its request counters; stop at EOF."""
    from twisted.internet.defer import Deferred
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.basic import LineReceiver

    from ctrader_twisted import messages as m
    from ctrader_twisted.sandbox import SandboxConfig, start_sandbox

    trendbars = m.payload_type_of(m.ProtoOAGetTrendbarsReq)
    stopped: Deferred[None] = Deferred()
    with tempfile.TemporaryDirectory(prefix="ctrader-bench-history-") as state_dir:
        config = SandboxConfig(idle_timeout=0, trendbar_chunk=PAGE)
        running = await start_sandbox(reactor, config, port=0, state_dir=state_dir)
        stats = running.factory.stats

        class Control(LineReceiver):
            delimiter = b"\n"

            def lineReceived(self, line: bytes) -> None:
                counts = {
                    "trendbars": stats.requests_by_payload_type.get(trendbars, 0),
                    "rate_limited": stats.rate_limited,
                }
                self.sendLine(json.dumps(counts).encode())

            def connectionLost(self, reason: object = None) -> None:
                if not stopped.called:
                    stopped.callback(None)

        announce = {"host": running.host, "port": running.port, "ca_file": str(running.ca_file)}
        sys.stdout.write(json.dumps(announce) + "\n")
        sys.stdout.flush()
        StandardIO(Control(), reactor=reactor)
        await stopped
        await running.stop()


class _Sandbox:
    """The sandbox child process and its one-line control channel."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.history_paging", "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.address: dict[str, Any] = json.loads(self._line(60))

    def _line(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise RuntimeError("the sandbox process did not answer")
        return line

    def counters(self) -> dict[str, int]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        counts: dict[str, int] = json.loads(self._line(30))
        return counts

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the streaming client process ---------------------------------------------------------------


async def _drive(reactor: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Stream the range into a CSV file with the library; report what it took."""
    from ctrader_twisted.client import Client
    from ctrader_twisted.history import HistoryProgress, iter_trendbars, stream_trendbars
    from ctrader_twisted.models import Bar, Period
    from ctrader_twisted.sandbox import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
    )
    from ctrader_twisted.tls import tls_endpoint

    endpoint = tls_endpoint(reactor, config["host"], config["port"], ca_file=config["ca_file"])
    client = Client(
        endpoint,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        reactor=reactor,
    )
    client.startService()
    await client.when_ready()
    await client.authorize_account(config["account"], DEFAULT_ACCESS_TOKEN)
    start = datetime.fromisoformat(config["start"])
    end = datetime.fromisoformat(config["end"])
    last: list[HistoryProgress] = []
    timed = _Timed(client, reactor)
    with open(config["out"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)

        def store(batch: list[Bar]) -> None:
            writer.writerows((b.time.isoformat(), b.open, b.high, b.low, b.close) for b in batch)

        began = time.perf_counter()
        batches = iter_trendbars(
            timed, config["account"], 1, Period.M1, start, end, progress=last.append
        )
        count = await stream_trendbars(batches, store)
        seconds = time.perf_counter() - began
    await client.stopService()
    requests = last[-1].requests if last else 0
    answers = sorted(timed.seconds)
    median_ms = answers[len(answers) // 2] * 1000 if answers else 0.0
    return {
        "bars": count,
        "client_requests": requests,
        "seconds": seconds,
        "answer_median_ms": median_ms,
    }


class _Timed:
    """A client whose ``request`` also records how long each answer took."""

    def __init__(self, client: Any, clock: Any) -> None:
        self._client = client
        self._clock = clock
        self.seconds: list[float] = []

    def request(self, message: Any, *, timeout: float | None = None) -> Any:
        sent = self._clock.seconds()

        def answered(result: object) -> object:
            self.seconds.append(self._clock.seconds() - sent)
            return result

        return self._client.request(message, timeout=timeout).addCallback(answered)


def _drive_main(config_json: str) -> None:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    config = json.loads(config_json)

    async def run(reactor: Any) -> None:
        result = await _drive(reactor, config)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


# -- the parent ---------------------------------------------------------------------------------


def _baseline_tree(revision: str, into: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "ctrader_twisted"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into)  # noqa: S202 - our own repository's archive
    return str(into)


def _child(arguments: list[str], tree: str | None, scratch: Path) -> tuple[int, str, int, float]:
    """Run ``python arguments`` with ``tree`` (or the checkout) first on the path.

    :returns: exit status, stdout, peak RSS in KiB, wall seconds.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRADER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, str(ROOT)]))
    env["HOME"] = str(scratch)
    env["CTRADER_CONFIG"] = os.devnull
    env.pop("PYTHONWARNINGS", None)
    began = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-W", "ignore", *arguments],
        cwd=scratch,  # not the checkout, so that ``tree`` decides which package is imported
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        assert process.stdout is not None
        out = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, out, usage.ru_maxrss, time.perf_counter() - began


def _run_client(
    kind: str, sandbox: _Sandbox, tree: str | None, start: datetime, end: datetime, scratch: Path
) -> dict[str, Any]:
    out = scratch / f"{kind}.csv"
    address = sandbox.address
    before = sandbox.counters()
    if kind == "stream":
        config = {**address, "account": 5_000_001, "out": str(out)}
        config.update(start=start.isoformat(), end=end.isoformat())
        arguments = ["-m", "bench.history_paging", "--drive", json.dumps(config)]
    else:
        where = ["--host", address["host"], "--port", str(address["port"])]
        arguments = ["-c", _CLI, "bars", "EURUSD", "--env", "sandbox", *where]
        arguments += ["--ca-file", address["ca_file"], "--out", str(out)]
        arguments += ["--from", start.isoformat(), "--to", end.isoformat()]
    code, text, peak_kib, wall = _child(arguments, tree, scratch)
    after = sandbox.counters()
    if code != 0:
        raise RuntimeError(f"the {kind} client failed with status {code}: {text[-500:]}")
    digest = hashlib.sha256()
    rows = -1 if kind == "cli" else 0  # the CLI writes a header
    with out.open("rb") as handle:
        for line in handle:
            digest.update(line)
            rows += 1
    out.unlink()
    driver = json.loads(text.strip().splitlines()[-1]) if kind == "stream" else {}
    requests = after["trendbars"] - before["trendbars"]
    ideal = math.ceil(rows / PAGE)
    return {
        "client": kind,
        "bars": rows,
        "requests": requests,
        "ideal_requests": ideal,
        "request_ratio": ideal / requests if requests else math.nan,
        "wall_s": wall,
        "floor_s": ideal / RATE,
        "peak_rss_mib": peak_kib / 1024,
        "rate_limited": after["rate_limited"] - before["rate_limited"],
        "answer_median_ms": driver.get("answer_median_ms"),
        "sha256": digest.hexdigest(),
    }


def _time_ratio(result: dict[str, Any]) -> float:
    return float(result["floor_s"] / result["wall_s"]) if result["wall_s"] else math.nan


def _print(results: list[dict[str, Any]], days: float) -> None:
    print(f"history paging: {days:g} days of EURUSD M1 from a sandbox process ({PAGE}/page, 5/s)")
    header = f"{'tree':<14}{'client':<8}{'run':>4}{'bars':>9}{'requests':>9}{'ideal':>7}"
    header += f"{'ratio':>7}{'wall s':>8}{'floor s':>8}{'t ratio':>8}{'answer ms':>10}"
    header += f"{'peak MiB':>9}"
    print(header)
    for r in results:
        answer = r["answer_median_ms"]
        print(
            f"{r['tree']:<14}{r['client']:<8}{r['run']:>4}{r['bars']:>9}{r['requests']:>9}"
            f"{r['ideal_requests']:>7}{r['request_ratio']:>7.3f}{r['wall_s']:>8.1f}"
            f"{r['floor_s']:>8.1f}{_time_ratio(r):>8.3f}"
            f"{'-' if answer is None else format(answer, '.0f'):>10}{r['peak_rss_mib']:>9.1f}"
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["tree"], r["client"]), []).append(r)
    print("medians:")
    for (tree, client), runs in groups.items():
        ratio = statistics.median(r["request_ratio"] for r in runs)
        time_ratio = statistics.median(_time_ratio(r) for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        peak = max(r["peak_rss_mib"] for r in runs)
        ok = ratio >= 0.95 and time_ratio >= 0.95 and peak < RSS_GOAL_MIB
        mark = ("ok " if ok else "MISS") if tree == "after" else "   "
        print(
            f"{mark} {tree} {client}: requests {ratio:.1%} of ideal, wall {wall:.1f} s = "
            f"{time_ratio:.1%} of the floor, peak {peak:.0f} MiB "
            "(goals >= 95%, >= 95%, < 100 MiB)"
        )
    digests = {r["sha256"] for r in results if r["client"] == "stream"}
    same = "identical" if len(digests) == 1 else "DIFFERENT"
    print(f"stream CSV of every run and tree: {same} ({len(digests)} distinct sha256)")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the history paging figures; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.history_paging", description=__doc__)
    parser.add_argument("--days", type=float, default=365.0, help="length of the range (365)")
    parser.add_argument("--runs", type=int, default=1, help="alternated runs per tree (1)")
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision")
    parser.add_argument("--skip-cli", action="store_true", help="only the streaming client")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drive", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import react

        react(lambda reactor: Deferred.fromCoroutine(_serve(reactor)))
        return 0
    if args.drive:
        _drive_main(args.drive)
        return 0
    end = DEFAULT_END
    start = end - timedelta(days=args.days)
    kinds = ["stream"] if args.skip_cli else ["stream", "cli"]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ctrader-bench-history-") as scratch_dir:
        scratch = Path(scratch_dir)
        trees: dict[str, str | None] = {}
        if args.baseline:
            old = scratch / "baseline"
            old.mkdir()
            trees[f"before {args.baseline}"[:13]] = _baseline_tree(args.baseline, old)
        trees["after"] = None
        sandbox = _Sandbox()
        try:
            for run in range(1, max(args.runs, 1) + 1):
                for label, tree in trees.items():
                    for kind in kinds:
                        print(f"bench.history_paging: run {run} {label} {kind}", file=sys.stderr)
                        result = _run_client(kind, sandbox, tree, start, end, scratch)
                        results.append({"tree": label, "run": run, **result})
        finally:
            sandbox.close()
    _print(results, args.days)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
