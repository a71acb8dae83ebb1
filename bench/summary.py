"""Turn the runs' raw results into figures: medians, spreads, ratios and target checks."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figure", "Summary", "summarize"]

#: With a one-second sliding window, n requests at a limit of L per second need
#: ceil(n / L) - 1 whole windows before the last batch may go.
_ORDINARY, _HISTORICAL = (300, 50), (30, 5)


def theoretical_minimum_s() -> float:
    """Least wall time for the burst under the sandbox's 1 s sliding windows (both lanes)."""
    return max(math.ceil(n / limit) - 1 for n, limit in (_ORDINARY, _HISTORICAL))


def naive_minimum_s() -> float:
    """The plain n / rate bound, max(300 / 50, 30 / 5)."""
    return max(n / limit for n, limit in (_ORDINARY, _HISTORICAL))


@dataclass(frozen=True)
class Figure:
    """A median with its spread over runs (``None`` when not measured or not applicable)."""

    median: float | None
    low: float | None = None
    high: float | None = None
    samples: int = 0

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Figure:
        """Median, minimum and maximum of the values that are not ``None``."""
        kept = [v for v in values if v is not None]
        if not kept:
            return cls(None)
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))


@dataclass
class Summary:
    """Everything the report shows."""

    ours: dict[str, Figure] = field(default_factory=dict)
    official: dict[str, Figure] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)


def _extra_requests(run: dict[str, Any]) -> int:
    burst = run["burst"]
    return int(burst["rejected"]) + max(0, burst["server_requests_seen"] - burst["total"])


def _paired_shares(runs: list[dict[str, Any]], key: str = "ceilings") -> Figure:
    """Each timed burst's rate over the ceiling measured just before it, in the same process."""
    return Figure.of(
        rate / ceiling
        for r in runs
        for rate, ceiling in zip(r["events"]["rates"], r["events"].get(key, []), strict=False)
        if ceiling
    )


def _ours(runs: list[dict[str, Any]]) -> tuple[dict[str, Figure], dict]:
    figures = {
        "rtt_p50_ms": Figure.of(r["rtt"]["p50_ms"] for r in runs),
        "rtt_p99_ms": Figure.of(r["rtt"]["p99_ms"] for r in runs),
        "events_per_s": Figure.of(x for r in runs for x in r["events"]["rates"]),
        "burst_wall_s": Figure.of(r["burst"]["wall_s"] for r in runs),
        "restore_s": Figure.of(x for r in runs for x in r["restore"]["runs_s"]),
        "peak_mib": Figure.of(r["events"]["memory"]["peak_kib"] / 1024 for r in runs),
        "growth_mib": Figure.of(r["events"]["memory"]["growth_kib"] / 1024 for r in runs),
        "ceiling_per_s": Figure.of(x for r in runs for x in r["events"].get("ceilings", [])),
        "ceiling_share": _paired_shares(runs),
        "two_step_ceiling_per_s": Figure.of(
            x for r in runs for x in r["events"].get("two_step_ceilings", [])
        ),
        "two_step_share": _paired_shares(runs, "two_step_ceilings"),
    }
    counts = {
        # Our client re-sends a request the server rejected for its rate; the server's request
        # count above the number issued shows such rejections even when the caller never saw one.
        "rejected": sum(
            r["burst"]["rejected"]
            + max(0, r["burst"]["server_requests_seen"] - r["burst"]["total"])
            for r in runs
        ),
        "timed_out": sum(r["burst"]["timed_out"] for r in runs),
        "unfinished": sum(r["burst"]["unfinished"] for r in runs),
        "other": sum(r["burst"]["other"] for r in runs),
        "server_seen": [r["burst"]["server_requests_seen"] for r in runs],
        "events_total": runs[0]["events"]["memory"]["events_total"] if runs else 0,
        "rtt_count": runs[0]["rtt"]["count"] if runs else 0,
        "runs": len(runs),
    }
    return figures, counts


def _official(runs: list[dict[str, Any]]) -> tuple[dict[str, Figure], dict]:
    figures = {
        "rtt_p50_ms": Figure.of(r["rtt"]["p50_ms"] for r in runs),
        "rtt_p99_ms": Figure.of(r["rtt"]["p99_ms"] for r in runs),
        "events_per_s": Figure.of(x for r in runs for x in r["events"]["rates"]),
        "burst_wall_s": Figure.of(r["burst"]["budget"]["extrapolated_wall_s"] for r in runs),
        "default_ok": Figure.of(r["burst"]["default_timeout"]["ok"] for r in runs),
        "default_timed_out": Figure.of(r["burst"]["default_timeout"]["timed_out"] for r in runs),
        "default_wall_s": Figure.of(r["burst"]["default_timeout"]["wall_s"] for r in runs),
        "budget_completed": Figure.of(r["burst"]["budget"]["completed"] for r in runs),
        "reconnect_s": Figure.of(r["restore"]["reconnect_s"] for r in runs),
        "restore_s": Figure.of(r["restore"]["restore_s"] for r in runs),
        "peak_mib": Figure.of(r["events"]["memory"]["peak_kib"] / 1024 for r in runs),
        "growth_mib": Figure.of(r["events"]["memory"]["growth_kib"] / 1024 for r in runs),
        "ceiling_per_s": Figure.of(x for r in runs for x in r["events"].get("ceilings", [])),
        "ceiling_share": _paired_shares(runs),
    }
    counts = {
        "rejected": sum(r["burst"]["default_timeout"]["rejected"] for r in runs),
        "budget_s": runs[0]["burst"]["budget"]["budget_s"] if runs else None,
        "restore_wait_s": runs[0]["restore"]["waited_s"] if runs else None,
        "events_after_restore": sum(r["restore"]["events_after_restore"] for r in runs),
        "events_total": runs[0]["events"]["memory"]["events_total"] if runs else 0,
        "rtt_count": runs[0]["rtt"]["count"] if runs else 0,
        "runs": len(runs),
    }
    return figures, counts


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _target(name: str, value: float | None, shown: str, met: bool) -> tuple[str, str, bool | None]:
    return (name, shown, None if value is None else met)


def _targets(summary: Summary) -> None:
    ours, counts, ratios = summary.ours, summary.counts["ours"], summary.ratios
    p50 = ours["rtt_p50_ms"].median
    speedup = ratios["rtt_speedup"]
    events_x, share = ratios["events_vs_official"], ratios["events_vs_ceiling"]
    wall, restore = ours["burst_wall_s"].median, ours["restore_s"].median
    growth = ours["growth_mib"].high
    minimum = theoretical_minimum_s()
    failures = counts["rejected"] + counts["timed_out"] + counts["unfinished"] + counts["other"]
    summary.targets = [
        _target("round trip p50 under 1 ms", p50, f"{_num(p50, 3)} ms", (p50 or 0) < 1),
        _target(
            "round trip >= 500x faster", speedup, f"{_num(speedup, 0)}x", (speedup or 0) >= 500
        ),
        _target(
            "events/s >= 10x official",
            events_x,
            f"{_num(events_x, 1)}x{_spread(ratios, 'events_vs_official', 'x', 1)}",
            (events_x or 0) >= 10,
        ),
        _target(
            "events/s >= 35% of parse ceiling",
            share,
            f"{_num((share or 0) * 100, 0)}%",
            (share or 0) >= 0.35,
        ),
        _target("burst: no rejections or timeouts", 0, f"{failures} failed", failures == 0),
        _target(
            "burst wall within 20% of the minimum",
            wall,
            f"{_num(wall, 2)} s vs {minimum:.0f} s",
            (wall or 0) <= minimum * 1.2,
        ),
        _target(
            "restore under 1.5 s median", restore, f"{_num(restore, 3)} s", (restore or 9) < 1.5
        ),
        _target("memory growth under 10 MiB", growth, f"{_num(growth, 1)} MiB", (growth or 0) < 10),
    ]


def _spread(ratios: dict[str, float | None], key: str, unit: str, digits: int) -> str:
    low, high = ratios.get(f"{key}_low"), ratios.get(f"{key}_high")
    if low is None or high is None or low == high:
        return ""
    return f" (run by run: {_num(low, digits)}{unit} to {_num(high, digits)}{unit})"


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _per_run_events_ratios(
    ours: list[dict[str, Any]], official: list[dict[str, Any]]
) -> list[float]:
    """Our median events rate over the official SDK's, run by run (the runs alternate)."""
    ratios = []
    for mine, theirs in zip(ours, official, strict=False):
        numerator = Figure.of(mine["events"]["rates"]).median
        ratio = _ratio(numerator, Figure.of(theirs["events"]["rates"]).median)
        if ratio is not None:
            ratios.append(ratio)
    return ratios


def summarize(ours: list[dict[str, Any]], official: list[dict[str, Any]]) -> Summary:
    """Medians, spreads, ratios and target checks from the runs of both clients."""
    summary = Summary()
    summary.ours, ours_counts = _ours(ours)
    summary.official, official_counts = _official(official) if official else ({}, {})
    summary.counts = {"ours": ours_counts, "official": official_counts}
    theirs = summary.official
    per_run = _per_run_events_ratios(ours, official)
    summary.ratios = {
        "events_vs_official_low": min(per_run) if per_run else None,
        "events_vs_official_high": max(per_run) if per_run else None,
        "rtt_speedup": _ratio(
            theirs.get("rtt_p50_ms", Figure(None)).median, summary.ours["rtt_p50_ms"].median
        ),
        "events_vs_official": _ratio(
            summary.ours["events_per_s"].median, theirs.get("events_per_s", Figure(None)).median
        ),
        "events_vs_ceiling": summary.ours["ceiling_share"].median,
        "events_vs_two_step": summary.ours["two_step_share"].median,
        "burst_vs_minimum": _ratio(summary.ours["burst_wall_s"].median, theoretical_minimum_s()),
    }
    _targets(summary)
    return summary
