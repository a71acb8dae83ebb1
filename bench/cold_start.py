"""Cold start: wall time of fresh interpreters importing the package or running ``--help``.

Usage: ``python -m bench.cold_start [--runs N] [--baseline REV] [--json FILE]``.

Every case is a new ``python`` process (the venv's interpreter running this module); the cases
are run in turn, round after round, so a change in the machine's load touches them alike, and
the median of ``--runs`` rounds is reported.  ``--baseline REV`` also measures the package as it
was at a git revision (``git archive`` of ``ctrader_twisted`` into a temporary folder, put first
on ``PYTHONPATH``), so before and after come from the same run.

Goals (issue 16): ``ctrader-twisted --help`` under 200 ms; ``import ctrader_twisted`` within
1.2x of importing Twisted's reactor.  The CLI cases run the console script's own code
(``from ctrader_twisted.cli import main; main()``) through ``python -c``, identical for the
baseline, whose console script is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

__all__ = ["CASES", "main", "measure"]

ROOT = Path(__file__).resolve().parent.parent
_CLI = "import sys; from ctrader_twisted.cli import main; sys.argv[0] = 'ctrader-twisted'; "
_CLI += "sys.exit(main())"

#: name -> arguments after ``python``.
CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import twisted.internet.reactor": ["-c", "import twisted.internet.reactor"],
    "import ctrader_twisted": ["-c", "import ctrader_twisted"],
    "from ctrader_twisted import Client": ["-c", "from ctrader_twisted import Client"],
    "ctrader-twisted --help": ["-c", _CLI, "--help"],
    "ctrader-twisted bars --help": ["-c", _CLI, "bars", "--help"],
}
#: Cases that do not depend on the package version (measured once, not per baseline).
_NEUTRAL = ("python -c pass", "import twisted.internet.reactor")
HELP_GOAL_MS = 200.0
IMPORT_RATIO_GOAL = 1.2


def _once(arguments: list[str], pythonpath: str | None) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRADER_")}
    env["CTRADER_CONFIG"] = os.devnull
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: ``import ctrader_twisted`` from the path
    ) as process:
        assert process.stderr is not None
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{arguments!r} failed: {errors.decode(errors='replace')[-500:]}")
    return elapsed * 1000.0, (usage.ru_utime + usage.ru_stime) * 1000.0


def measure(
    runs: int, trees: dict[str, str | None]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Wall and CPU milliseconds per run of every case, for each tree (label -> ``PYTHONPATH``
    or ``None`` for the installed package)."""
    wall: dict[str, dict[str, list[float]]] = {label: {} for label in trees}
    cpu: dict[str, dict[str, list[float]]] = {label: {} for label in trees}
    for _ in range(runs):
        for label, path in trees.items():
            for name, arguments in CASES.items():
                if name in _NEUTRAL and label != "after":
                    continue
                elapsed, used = _once(arguments, path)
                wall[label].setdefault(name, []).append(elapsed)
                cpu[label].setdefault(name, []).append(used)
    return wall, cpu


def _baseline_tree(revision: str, into: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "ctrader_twisted"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into)  # noqa: S202 - our own repository's archive
    return str(into)


def _medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        label: {name: statistics.median(values) for name, values in cases.items()}
        for label, cases in samples.items()
    }


def summarize(
    wall: dict[str, dict[str, list[float]]], cpu: dict[str, dict[str, list[float]]]
) -> dict[str, Any]:
    """Medians per tree and case, and the goals checked on the current tree (wall time)."""
    medians, cpu_medians = _medians(wall), _medians(cpu)
    after = medians["after"]
    reactor = after["import twisted.internet.reactor"]
    goals = {
        "help_ms": after["ctrader-twisted --help"],
        "help_ok": after["ctrader-twisted --help"] < HELP_GOAL_MS,
        "help_cpu_ms": cpu_medians["after"]["ctrader-twisted --help"],
        "import_ratio": after["import ctrader_twisted"] / reactor,
        "import_ok": after["import ctrader_twisted"] / reactor <= IMPORT_RATIO_GOAL,
        "client_import_ratio": after["from ctrader_twisted import Client"] / reactor,
    }
    return {
        "medians_ms": medians,
        "cpu_medians_ms": cpu_medians,
        "goals": goals,
        "samples_ms": wall,
        "cpu_samples_ms": cpu,
    }


def _table(title: str, medians: dict[str, dict[str, float]]) -> None:
    labels = list(medians)
    print(title)
    print(f"{'case':<38}" + "".join(f"{label:>16}" for label in labels))
    for name in CASES:
        cells = "".join(
            f"{medians[label][name]:>16.1f}" if name in medians[label] else f"{'':>16}"
            for label in labels
        )
        print(f"{name:<38}{cells}")


def _print(result: dict[str, Any], runs: int) -> None:
    _table(f"cold start, wall time, median of {runs} runs (ms)", result["medians_ms"])
    _table(f"cold start, CPU time (user + system), median of {runs} runs (ms)",
           result["cpu_medians_ms"])  # fmt: skip
    goals = result["goals"]
    help_mark = "ok" if goals["help_ok"] else "MISS"
    import_mark = "ok" if goals["import_ok"] else "MISS"
    print(
        f"{help_mark} ctrader-twisted --help: {goals['help_ms']:.0f} ms wall, "
        f"{goals['help_cpu_ms']:.0f} ms CPU (goal < 200 ms)"
    )
    print(
        f"{import_mark} import ctrader_twisted / import reactor: {goals['import_ratio']:.2f} "
        f"(goal <= 1.2); from ctrader_twisted import Client: {goals['client_import_ratio']:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the cold-start figures; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="rounds; the median is shown (7)")
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        trees: dict[str, str | None] = {}
        if args.baseline:
            trees[f"before {args.baseline}"] = _baseline_tree(args.baseline, Path(scratch))
        trees["after"] = None
        result = summarize(*measure(max(args.runs, 1), trees))
    _print(result, args.runs)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
