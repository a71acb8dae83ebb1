"""Smoke run of the bench code (``make bench``) with tiny sizes and no thresholds.

The official SDK side is not installed or run here; its figures are made up for the report test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench._common import percentile, spot_fields
from bench.ceiling import build_frames, measure_ceiling
from bench.report import Environment, write_markdown
from bench.summary import summarize, theoretical_minimum_s

ROOT = Path(__file__).resolve().parent.parent


def _our_run(rtt: float, rates: list[float]) -> dict[str, Any]:
    return {
        "client": "ours",
        "rtt": {"count": 20, "p50_ms": rtt, "p99_ms": rtt * 2},
        "events": {
            "rates": rates,
            "ceilings": [r * 2 for r in rates],
            "memory": {"events_total": 700, "peak_kib": 40_000, "growth_kib": 100},
        },
        "restore": {"runs_s": [1.1, 1.3]},
        "burst": {
            "total": 330,
            "ok": 330,
            "rejected": 0,
            "timed_out": 0,
            "other": 0,
            "unfinished": 0,
            "wall_s": 5.1,
            "server_requests_seen": 330,
        },
    }


def _official_run() -> dict[str, Any]:
    return {
        "client": "official",
        "rtt": {"count": 3, "p50_ms": 1000.0, "p99_ms": 1010.0},
        "events": {
            "rates": [20_000.0],
            "ceilings": [38_000.0],
            "memory": {"events_total": 300, "peak_kib": 50_000, "growth_kib": 900},
        },
        "restore": {
            "reconnect_s": 1.8,
            "restore_s": None,
            "events_after_restore": 0,
            "waited_s": 3,
        },
        "burst": {
            "total": 330,
            "default_timeout": {"ok": 25, "rejected": 0, "timed_out": 305, "wall_s": 5.2},
            "budget": {"budget_s": 8, "completed": 40, "extrapolated_wall_s": 66.0},
        },
    }


class HelperTests(SynchronousTestCase):
    def test_percentile(self) -> None:
        self.assertEqual(percentile([3.0, 1.0, 2.0], 0.5), 2.0)
        self.assertEqual(percentile([float(i) for i in range(1, 101)], 0.99), 99.0)

    def test_ceiling_parses_the_burst_frames(self) -> None:
        frames = build_frames(64)
        result = measure_ceiling(1_000, frames)
        self.assertEqual(result["frames"], 3 * 6 * 64)  # 3 rounds of 6 passes over 64 frames
        expected = 6 * sum(spot_fields(i)["bid"] for i in range(64))
        self.assertEqual(result["checksum"], expected)
        self.assertGreater(result["rate"], 0)
        self.assertGreater(result["two_step_rate"], 0)


class ReportTests(SynchronousTestCase):
    def test_summary_ratios_and_targets(self) -> None:
        summary = summarize(
            [_our_run(0.5, [200_000.0]), _our_run(0.7, [220_000.0])],
            [_official_run()],
        )
        self.assertAlmostEqual(summary.ratios["rtt_speedup"] or 0, 1000.0 / 0.6)
        self.assertAlmostEqual(summary.ratios["events_vs_official"] or 0, 10.5)
        self.assertAlmostEqual(summary.ratios["events_vs_ceiling"] or 0, 0.5)
        self.assertEqual(len(summary.targets), 8)
        self.assertEqual(theoretical_minimum_s(), 5)

    def test_markdown_explains_missed_targets(self) -> None:
        run = _our_run(0.5, [200_000.0])
        run["events"]["two_step_ceilings"] = [300_000.0]
        official = _official_run()
        official["events"]["rates"] = [40_000.0]
        summary = summarize([run], [official])
        self.assertAlmostEqual(summary.ratios["events_vs_two_step"] or 0, 2 / 3)
        out = Path(self.mktemp())
        out.mkdir()
        env = Environment("make bench", "cpu", 2, "ours", "theirs", "2026-01-01")
        write_markdown(out / "benchmarks.md", summary, env, None)
        text = (out / "benchmarks.md").read_text()
        self.assertIn("| events/s >= 10x official | 5.0x | NO |", text)
        self.assertIn("10x the official SDK's 40,000 events/s is 400,000/s", text)
        self.assertIn("The target lies above the bare parse ceiling", text)
        self.assertIn("## Profile of the events path", text)
        self.assertIn("two-step ceiling (paired per burst) | 67% |", text)

    def test_events_ratio_run_by_run(self) -> None:
        official = _official_run()
        slower = _official_run()
        slower["events"]["rates"] = [10_000.0]
        summary = summarize(
            [_our_run(0.5, [200_000.0]), _our_run(0.5, [150_000.0])], [official, slower]
        )
        shown = {name: measured for name, measured, _ in summary.targets}
        self.assertEqual(shown["events/s >= 10x official"], "11.7x (run by run: 10.0x to 15.0x)")

    def test_markdown_without_official_runs(self) -> None:
        summary = summarize([_our_run(0.5, [200_000.0])], [])
        out = Path(self.mktemp())
        out.mkdir()
        env = Environment("make bench", "cpu", 2, "ours", "not run", "2026-01-01")
        write_markdown(out / "benchmarks.md", summary, env, None)
        text = (out / "benchmarks.md").read_text()
        self.assertIn("| Measure | ctrader-twisted | official SDK |", text)
        self.assertIn("not run", text)


class EndToEndTests(SynchronousTestCase):
    def test_tiny_run_of_our_client(self) -> None:
        """Server process + our driver process, tiny sizes, no chart, no official SDK."""
        out = Path(self.mktemp())
        raw = out / "raw.json"
        command = [sys.executable, "-m", "bench", "--tiny", "--skip-official", "--no-chart"]
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [*command, "--out", str(out), "--json", str(raw)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        results = json.loads(raw.read_text())
        ours = results["ours"][0]
        self.assertEqual(ours["rtt"]["count"], 20)
        self.assertEqual(ours["burst"]["total"], 12)
        self.assertIn("## Results", (out / "benchmarks.md").read_text())
