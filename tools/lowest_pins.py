"""Print pip constraints that pin every runtime dependency to its declared lower bound.

``.ci/run`` installs the test suite with these constraints (``PIP_CONSTRAINT``) to prove that the
lower bounds in ``pyproject.toml`` are true: the library works with the oldest release of each
direct dependency it accepts, as ``uv pip install --resolution lowest-direct`` would choose.
Dependencies of those dependencies resolve as usual.

Usage: ``python tools/lowest_pins.py [pyproject.toml] > constraints.txt``.  Exits 1, naming it,
when a runtime dependency has no ``>=`` lower bound.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The [project] table's dependencies array; tomllib is 3.11+ and the tools run on 3.10 too.
_ARRAY = re.compile(r"^dependencies\s*=\s*\[(.*?)^\]", re.MULTILINE | re.DOTALL)
_STRING = re.compile(r'^\s*"([^"]+)"', re.MULTILINE)
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(.*)$")
_LOWER = re.compile(r">=\s*([0-9][^,;\s]*)")


def runtime_requirements(pyproject: str) -> list[str]:
    """The requirement strings of ``[project] dependencies`` in a ``pyproject.toml`` text."""
    match = _ARRAY.search(pyproject)
    if match is None:
        raise ValueError("pyproject.toml has no dependencies array")
    return _STRING.findall(match.group(1))


def lowest_pins(requirements: list[str]) -> list[str]:
    """One ``name==lower-bound`` line per requirement (extras dropped: constraints take none)."""
    pins = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement.strip())
        lower = _LOWER.search(match.group(2)) if match else None
        if match is None or lower is None:
            raise ValueError(f"no lower bound in {requirement!r}")
        pins.append(f"{match.group(1).lower()}=={lower.group(1)}")
    return pins


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "pyproject.toml"
    try:
        pins = lowest_pins(runtime_requirements(path.read_text()))
    except ValueError as error:
        print(f"lowest_pins: {error}", file=sys.stderr)
        return 1
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
