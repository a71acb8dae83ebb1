"""The project as a release: what the sdist and wheel hold, and the wheel installed on its own.

The wheel goes into a scratch environment with its runtime dependencies only (no test extras, no
source tree; see ``tests/wheelenv.py``), where ``twistd`` must find both plugins, the demo must
run and README's client example must run against a sandbox started from that same install.
Message classes must pickle under the names they are importable by.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted import messages as m
from tests import wheelenv

ROOT = wheelenv.ROOT
BANNER_TIMEOUT = 60.0
EXAMPLE_TIMEOUT = 120.0


# -- pickling -----------------------------------------------------------------------------------

PICKLED = [
    m.ProtoOATraderReq(ctidTraderAccountId=5000001),
    m.ProtoOASpotEvent(ctidTraderAccountId=5000001, symbolId=1, bid=108_512, ask=108_515),
    m.ProtoOANewOrderReq(
        ctidTraderAccountId=5000001,
        symbolId=1,
        orderType=m.ProtoOAOrderType.MARKET,
        tradeSide=m.ProtoOATradeSide.BUY,
        volume=100_000,
        label="pickled",
    ),
    m.ProtoOASymbolsListRes(
        ctidTraderAccountId=5000001,
        symbol=[m.ProtoOALightSymbol(symbolId=1, symbolName="EURUSD", enabled=True)],
    ),
    m.ProtoMessage(payloadType=m.ProtoOAPayloadType.PROTO_OA_VERSION_REQ, clientMsgId="x"),
    m.ProtoErrorRes(errorCode="CH_CLIENT_AUTH_FAILURE", description="bad secret"),
    m.ProtoOATrendbar(volume=12, period=m.ProtoOATrendbarPeriod.M1, low=1, deltaOpen=2),
]


@pytest.mark.parametrize("message", PICKLED, ids=lambda message: type(message).__name__)
def test_messages_pickle_round_trip(message: object) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copied = pickle.loads(pickle.dumps(message, protocol=protocol))  # noqa: S301 - our own bytes
        assert type(copied) is type(message)
        assert copied == message
    assert copy.deepcopy(message) == message


def test_message_classes_name_their_importable_module() -> None:
    for cls in m.ALL_MESSAGE_TYPES.values():
        assert cls.__module__.startswith("ctrader_twisted.messages."), cls
        module = sys.modules[cls.__module__]
        assert getattr(module, cls.__qualname__) is cls


# -- a clean checkout -------------------------------------------------------------------------


class TrialTempTests(SynchronousTestCase):
    def test_mktemp_leaves_the_checkout_alone(self) -> None:
        """trial's mktemp (relative to the working directory) left ``tests.test_*/`` folders in the
        checkout; tests/conftest.py moves them under pytest's temporary base."""
        path = Path(self.mktemp())
        self.assertTrue(path.is_absolute(), path)
        self.assertFalse(path.resolve().is_relative_to(ROOT), path)
        self.assertTrue(path.parent.is_dir())
        self.assertFalse(path.exists())
        self.assertNotEqual(self.mktemp(), str(path))


def test_make_demo_installs_the_runtime_only(tmp_path: Path) -> None:
    """``make demo`` used to install the whole test toolchain (and so failed on Python 3.10)."""
    venv = tmp_path / "venv"
    # Not make's own variables: under make test, a nested make would name its directory.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    command = ["make", "--no-print-directory", "-n", "demo", f"VENV={venv}", "PYTHON=python3"]
    result = wheelenv.run(command, cwd=ROOT, env=env)
    installs = [
        line.split(" pip install ", 1)[1].split()
        for line in result.stdout.splitlines()
        if " pip install " in line
    ]
    assert ["--quiet", "-e", "."] in installs, result.stdout
    assert all(
        args in (["--quiet", "-e", "."], ["--quiet", "--upgrade", "pip"]) for args in installs
    )
    assert result.stdout.rstrip().splitlines()[-1] == f"{venv}/bin/ctrader-twisted demo"


# -- the built distribution ---------------------------------------------------------------------


def test_sdist_has_the_project_files() -> None:
    with tarfile.open(wheelenv.built().sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for required in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
        "newsfragments/README.md",
        "protobuf/OpenApiMessages.proto",
        "tools/generate.py",
        "ctrader_twisted/py.typed",
        "twisted/plugins/ctrader_twisted_plugin.py",
    ):
        assert required in names, required
    assert not [n for n in names if n.startswith((".venv", "build/", "tests.test_"))]


def test_wheel_holds_the_package_and_license_only() -> None:
    with zipfile.ZipFile(wheelenv.built().wheel) as wheel:
        names = wheel.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"ctrader_twisted", "twisted", "ctrader_twisted-0.1.0.dist-info"}, tops
    assert "twisted/plugins/ctrader_twisted_plugin.py" in names
    assert "twisted/plugins/dropin.cache" not in names
    assert not [n for n in names if n.startswith("twisted/") and not n.startswith("twisted/p")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def test_twine_accepts_the_distribution() -> None:
    dist = wheelenv.built()
    result = wheelenv.run(
        [sys.executable, "-m", "twine", "check", "--strict", dist.wheel, dist.sdist]
    )
    assert result.stdout.count("PASSED") == 2, result.stdout


# -- the wheel installed on its own -------------------------------------------------------------


@pytest.fixture(scope="module")
def venv() -> Iterator[Path]:
    with wheelenv.installed() as path:
        yield path


def _run_installed(
    venv: Path, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = wheelenv.clean_env(venv)
    env.update(extra_env or {})
    return wheelenv.run(args, cwd=cwd, env=env, timeout=EXAMPLE_TIMEOUT)


def test_installed_package_is_not_the_source_tree(venv: Path, tmp_path: Path) -> None:
    code = "import ctrader_twisted, twisted.plugins.ctrader_twisted_plugin as p; print(p.__file__)"
    result = _run_installed(venv, [str(venv / "bin" / "python"), "-c", code], tmp_path)
    assert Path(result.stdout.strip()).is_relative_to(venv), result.stdout


def test_twistd_lists_both_plugins(venv: Path, tmp_path: Path) -> None:
    result = _run_installed(venv, [str(venv / "bin" / "twistd"), "--help"], tmp_path)
    commands = re.findall(r"^\s+(ctrader-[\w-]+)\s", result.stdout, re.MULTILINE)
    assert sorted(commands) == ["ctrader-record", "ctrader-sandbox"], result.stdout


def test_demo_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    state = {"CTRADER_SANDBOX_STATE": str(tmp_path / "state"), "HOME": str(tmp_path)}
    result = _run_installed(venv, [str(venv / "bin" / "ctrader-twisted"), "demo"], tmp_path, state)
    assert "EURUSD" in result.stdout, result.stdout


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "README.md has a Python example"
    return match.group(1)


class _Output:
    """A process's merged output, drained by a thread (so the child never blocks on a full pipe)
    and searched for a pattern with a bounded wait."""

    def __init__(self, process: subprocess.Popen[str], pattern: str) -> None:
        self.text = ""
        self.match: re.Match[str] | None = None
        self._pattern = re.compile(pattern)
        self._found = threading.Event()
        self._thread = threading.Thread(target=self._drain, args=(process,), daemon=True)
        self._thread.start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.text += line
            if self.match is None:
                self.match = self._pattern.search(self.text)
                if self.match is not None:
                    self._found.set()
        self._found.set()  # end of output: stop waiting either way

    def wait(self, timeout: float) -> re.Match[str]:
        self._found.wait(timeout)
        if self.match is None:
            raise AssertionError(f"no {self._pattern.pattern!r} within {timeout} s: {self.text!r}")
        return self.match


def test_readme_example_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    env = wheelenv.clean_env(venv)
    env.update({"CTRADER_SANDBOX_STATE": str(tmp_path / "state"), "HOME": str(tmp_path)})
    sandbox = subprocess.Popen(  # noqa: S603 - the wheel's console script
        [str(venv / "bin" / "ctrader-twisted"), "sandbox", "--port", "0", "--always-open"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _Output(sandbox, r"listening on 127\.0\.0\.1:(\d+)")
        port = int(output.wait(BANNER_TIMEOUT).group(1))
        code = _readme_example()
        # The example connects to the sandbox's usual port; this one listens where it could.
        assert "port=5035" in code, code
        (tmp_path / "example.py").write_text(code.replace("port=5035", f"port={port}", 1))
        result = subprocess.run(  # noqa: S603 - README's example, in the scratch environment
            [str(venv / "bin" / "python"), "example.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )
    finally:
        sandbox.send_signal(signal.SIGINT)
        try:
            sandbox.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sandbox.kill()
            sandbox.wait(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^Quote\(", result.stdout, re.MULTILINE), result.stdout + result.stderr
