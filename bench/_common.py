"""Small helpers shared by the bench drivers of both clients.

This module is imported by the official SDK's driver too, which runs in a separate virtual
environment (its own Twisted and protobuf), so it must not import ``ctrader_twisted`` and must
keep to the standard library and Twisted APIs that both Twisted versions have.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred

__all__ = [
    "EventCounter",
    "SPOT_EVENT_TYPE",
    "emit_result",
    "measure_events",
    "memory_kib",
    "now",
    "percentile",
    "progress",
    "spot_fields",
]

#: ``ProtoOAPayloadType.PROTO_OA_SPOT_EVENT``.
SPOT_EVENT_TYPE = 2131

#: Monotonic high-resolution clock used for every measurement.
now = time.perf_counter


def spot_fields(index: int) -> dict[str, int]:
    """Fields of the ``index``-th spot event of a burst (EURUSD-like prices, account 5000001).

    Both clients' parse ceilings and the bench server build their frames from this.
    """
    bid = 108_000 + (index * 7919) % 2_000
    return {
        "ctidTraderAccountId": 5_000_001,
        "symbolId": 1,
        "bid": bid,
        "ask": bid + 12,
        "timestamp": 1_700_000_000_000 + index * 50,
    }


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples`` (``fraction`` in 0..1); NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def memory_kib() -> dict[str, int]:
    """This process's resident set size now (``rss``) and at its peak (``hwm``), in KiB.

    Read from ``/proc/self/status``; zeros where that file does not exist.
    """
    wanted = {"VmRSS:": "rss", "VmHWM:": "hwm"}
    found = {"rss": 0, "hwm": 0}
    status = Path("/proc/self/status")
    if not status.exists():
        return found
    for line in status.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            found[wanted[parts[0]]] = int(parts[1])
    return found


def progress(text: str) -> None:
    """One progress line on stderr (stdout carries the JSON result)."""
    sys.stderr.write(f"  {text}\n")
    sys.stderr.flush()


def emit_result(result: dict[str, object]) -> None:
    """Write the driver's result as one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


class _HasBid(Protocol):
    bid: int


class EventCounter:
    """The user callback of the events figure: touch the event, count, note first/last time."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.first = 0.0
        self.last = 0.0
        self.checksum = 0
        self.done: Deferred[None] = Deferred()

    def reset(self, target: int) -> Deferred[None]:
        self.count = 0
        self.target = target
        self.done = Deferred()
        return self.done

    def __call__(self, event: _HasBid) -> None:
        self.checksum += event.bid
        self.count += 1
        if self.count == 1:
            self.first = now()
        if self.count == self.target:
            self.last = now()
            self.done.callback(None)


async def measure_events(
    reactor: Any,
    control: Any,
    install: Callable[[Callable[[Any], None] | None], None],
    config: dict[str, Any],
    ceiling: Callable[[int], dict[str, object]] | None = None,
) -> dict[str, object]:
    """The events and memory figures: a warm-up burst, then several timed bursts.

    When ``ceiling`` is given, the bare parse loop runs in this process right before each timed
    burst, so each rate has a ceiling measured under the same conditions (shared machines are
    noisy; a ratio of two figures taken minutes apart would not mean much).

    :param reactor: for timeouts.
    :param control: a connected :class:`bench._control.ControlClient`.
    :param install: sets (or with ``None`` clears) the client's spot-event user callback.
    :param config: ``events_warmup``, ``events_runs``, ``events_count``, ``event_timeout``.
    :returns: ``rates`` (events per second, one per timed burst), ``ceilings`` and
        ``two_step_ceilings`` (the ceiling's rates before each burst) and ``memory`` (KiB).
    """
    counter = EventCounter()
    install(counter)
    timeout = config["event_timeout"]
    warm = config["events_warmup"]
    if warm:
        done = counter.reset(warm)
        await control.command("burst", count=warm)
        await done.addTimeout(timeout, reactor)
    after_warmup = memory_kib()
    rates = []
    ceilings: list[float] = []
    two_step: list[float] = []
    for _ in range(config["events_runs"]):
        if ceiling is not None:
            measured = ceiling(config["ceiling_count"])
            ceilings.append(float(measured["rate"]))  # type: ignore[arg-type]
            if "two_step_rate" in measured:
                two_step.append(float(measured["two_step_rate"]))  # type: ignore[arg-type]
        count = config["events_count"]
        done = counter.reset(count)
        await control.command("burst", count=count)
        await done.addTimeout(timeout, reactor)
        rates.append((count - 1) / max(counter.last - counter.first, 1e-9))
        progress(f"{config['label']}: {rates[-1]:,.0f} events/s")
    install(None)
    end = memory_kib()
    return {
        "rates": rates,
        "ceilings": ceilings,
        "two_step_ceilings": two_step,
        "memory": {
            "events_total": warm + config["events_runs"] * config["events_count"],
            "rss_after_warmup_kib": after_warmup["rss"],
            "rss_end_kib": end["rss"],
            "peak_kib": end["hwm"],
            "growth_kib": end["rss"] - after_warmup["rss"],
        },
    }
