"""The built distribution and a scratch virtual environment holding only the wheel.

``tests/test_packaging.py`` and ``tests/test_downstream_typing.py`` look at the project as a user
who ran ``pip install ctrader-twisted`` sees it: the wheel with its runtime dependencies (no test
extras, no source tree on ``sys.path``) plus mypy, as a user type-checking their own code has it.

The sdist and wheel are built once per test session (from the sdist, as a release is).  The
environment is kept under ``build/wheelenv/<key>`` between sessions, keyed by the interpreter, the
runtime requirements, the mypy pin and any ``PIP_CONSTRAINT`` file, so only its first creation
downloads anything; later sessions reinstall just the fresh wheel (``--no-deps``) and ``pip check``
that its declared dependencies are all there.  A lock file per environment keeps concurrent
sessions apart.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_ROOT = ROOT / "build" / "wheelenv"
# Creating the environment downloads the runtime dependencies and mypy (once per key).
INSTALL_TIMEOUT = 600
COMMAND_TIMEOUT = 180


@dataclass(frozen=True)
class Dist:
    """The wheel and sdist of one build."""

    wheel: Path
    sdist: Path


def run(
    args: Sequence[str | Path],
    *,
    timeout: float = COMMAND_TIMEOUT,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured; fails loudly with that output."""
    result = subprocess.run(  # noqa: S603 - the interpreters and scripts this suite installs
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


@functools.cache
def built() -> Dist:
    """Build sdist and wheel (once per process) into a temporary folder removed at exit."""
    out = Path(tempfile.mkdtemp(prefix="ctrader-dist-"))
    atexit.register(shutil.rmtree, out, True)
    # No isolation: hatchling comes with the test extra, so the build needs no download.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT])
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel=wheel, sdist=sdist)


def _mypy_pin() -> str:
    match = re.search(r'"(mypy==[^";]+)"', (ROOT / "pyproject.toml").read_text())
    assert match is not None, "pyproject.toml's test extra pins mypy"
    return match.group(1)


def _key() -> str:
    parts = [sys.version, sys.executable, _mypy_pin()]
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    parts.append(deps.group(1) if deps else text)
    constraint = os.environ.get("PIP_CONSTRAINT", "")
    for name in constraint.split():
        path = Path(name)
        parts.append(path.read_text() if path.is_file() else name)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def installed() -> Iterator[Path]:
    """The scratch environment with this session's wheel installed; held locked while in use."""
    dist = built()
    ENV_ROOT.mkdir(parents=True, exist_ok=True)
    key = _key()
    venv = ENV_ROOT / key
    python = venv / "bin" / "python"
    with open(ENV_ROOT / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ready = venv / ".ready"
            if not ready.exists():
                shutil.rmtree(venv, ignore_errors=True)
                run([sys.executable, "-m", "venv", venv])
                pip: list[str | Path] = [python, "-m", "pip", "install", "--quiet"]
                run([*pip, dist.wheel, _mypy_pin()], timeout=INSTALL_TIMEOUT)
                ready.write_text(_sha256(dist.wheel))
            elif ready.read_text() != _sha256(dist.wheel):
                reinstall: list[str | Path] = [
                    python,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-deps",
                ]
                run([*reinstall, "--force-reinstall", dist.wheel])
                ready.write_text(_sha256(dist.wheel))
            run([python, "-m", "pip", "check"])
            yield venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def clean_env(venv: Path) -> dict[str, str]:
    """Environment variables for commands in the scratch venv: its ``bin`` first on ``PATH`` and
    no ``PYTHON*`` variable, so nothing from the source tree or the test venv leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


if __name__ == "__main__":
    # `python -m tests.wheelenv` (make wheelenv) prepares the environment ahead of the tests.
    with installed() as prepared:
        print(f"scratch environment ready: {prepared.relative_to(ROOT)}")
