"""``make bench``: ctrader-twisted and the official SDK, side by side, against the sandbox.

Usage: ``python -m bench [--quick] [--runs N] [--skip-official] [--out DIR]``.  Writes
``benchmarks.md`` and ``benchmarks.png`` into ``docs/`` (or ``--out``) and the raw results as
JSON when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import _env
from bench.report import Environment, cpu_model, write_chart, write_markdown
from bench.runner import ROOT, Sizes, run_driver, sizes_for
from bench.summary import summarize

__all__ = ["main"]

_VERSIONS = (
    "import sys, twisted, google.protobuf as p;"
    "from google.protobuf.internal import api_implementation as a;"
    "print(f'Python {sys.version.split()[0]}, Twisted {twisted.__version__}, "
    "protobuf {p.__version__} ({a.Type()} backend)')"
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one run per client")
    parser.add_argument("--runs", type=int, default=None, help="runs per client (default 3)")
    parser.add_argument("--skip-official", action="store_true", help="only our client")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="output folder")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _versions(python: Path | str, extra: str) -> str:
    done = subprocess.run(
        [str(python), "-W", "ignore", "-c", _VERSIONS], capture_output=True, text=True, check=True
    )
    return f"{extra}; {done.stdout.strip()}"


def _credentials() -> dict[str, Any]:
    from ctrader_twisted import sandbox

    return {
        "client_id": sandbox.DEFAULT_CLIENT_ID,
        "client_secret": sandbox.DEFAULT_CLIENT_SECRET,
        "access_token": sandbox.DEFAULT_ACCESS_TOKEN,
        "account_id": 5_000_001,
    }


def _run_all(
    sizes: Sizes, runs: int, official: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    credentials = _credentials()
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for index in range(runs):
        print(f"bench: run {index + 1} of {runs}", file=sys.stderr)
        ours.append(run_driver("ours", sys.executable, sizes.for_client("ours"), credentials))
        if official is not None:
            settings = sizes.for_client("official")
            theirs.append(run_driver("official", official, settings, credentials))
    return ours, theirs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and write the report; returns the exit status."""
    args = _parse(argv)
    sizes = sizes_for(args.quick, args.tiny)
    runs = args.runs or (1 if args.quick or args.tiny else 3)
    official = None if args.skip_official else _env.ensure_official_venv()
    if not args.no_chart:
        _env.ensure_matplotlib()
    ours, theirs = _run_all(sizes, runs, official)
    summary = summarize(ours, theirs)
    args.out.mkdir(parents=True, exist_ok=True)
    chart = None
    if not args.no_chart:
        write_chart(args.out / "benchmarks.png", summary)
        chart = "benchmarks.png"
    command = "make bench" + (f" BENCH_ARGS={shlex.quote(' '.join(argv))}" if argv else "")
    env = Environment(
        command=command,
        cpu=cpu_model(),
        cores=os.cpu_count() or 0,
        ours_versions=_versions(sys.executable, "ctrader-twisted 0.1.0"),
        official_versions=_versions(official, _env.OFFICIAL_PACKAGE) if official else "not run",
        date=datetime.date.today().isoformat(),
    )
    write_markdown(args.out / "benchmarks.md", summary, env, chart)
    if args.json is not None:
        args.json.write_text(json.dumps({"ours": ours, "official": theirs}))
    for name, measured, met in summary.targets:
        print(f"{'ok ' if met else 'n/a' if met is None else 'MISS'} {name}: {measured}")
    print(f"bench: wrote {args.out / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
