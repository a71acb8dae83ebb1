"""Set up what the benchmarks need beyond the project's own environment.

- The official SDK in its own virtual environment, ``bench/.venv-official``: its exact pins
  (Twisted 24.3.0, protobuf 3.20.1, pyOpenSSL 24.1.0, ...) clash with ours.
- matplotlib for the chart, installed into the running (project) environment on first use.
  It is a bench-only tool, never a runtime dependency of the library.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

__all__ = [
    "BENCH_DIR",
    "MATPLOTLIB",
    "OFFICIAL_PACKAGE",
    "OFFICIAL_VENV",
    "ensure_matplotlib",
    "ensure_official_venv",
    "official_python",
]

BENCH_DIR = Path(__file__).resolve().parent
OFFICIAL_VENV = BENCH_DIR / ".venv-official"
#: The SDK release compared against (the newest on PyPI when this bench was written).
OFFICIAL_PACKAGE = "ctrader-open-api==0.9.2"
MATPLOTLIB = "matplotlib==3.11.2"
_PIP_INSTALL = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check")


def official_python() -> Path:
    """The official SDK environment's interpreter."""
    return OFFICIAL_VENV / "bin" / "python"


def ensure_official_venv() -> Path:
    """Create ``bench/.venv-official`` with the SDK unless it is already there.

    :returns: the path of that environment's ``python``.
    :raises subprocess.CalledProcessError: if ``pip install`` fails.
    """
    python = official_python()
    stamp = OFFICIAL_VENV / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == OFFICIAL_PACKAGE:
        return python
    print(f"bench: installing {OFFICIAL_PACKAGE} into {OFFICIAL_VENV}", file=sys.stderr)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(OFFICIAL_VENV)
    subprocess.run(
        [str(python), *_PIP_INSTALL, OFFICIAL_PACKAGE],
        check=True,
    )
    stamp.write_text(OFFICIAL_PACKAGE + "\n")
    return python


def ensure_matplotlib() -> None:
    """Install matplotlib into this environment if it cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"bench: installing {MATPLOTLIB} for the chart", file=sys.stderr)
        subprocess.run(
            [sys.executable, *_PIP_INSTALL, MATPLOTLIB],
            check=True,
        )
