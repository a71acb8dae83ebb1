"""Every numeric sandbox option is checked up front (finite, in range): one line on stderr and
exit status 2, for ``ctrader-twisted sandbox`` and ``twistd -n ctrader-sandbox`` alike (real
processes), and :class:`~ctrader_twisted.sandbox.SandboxConfig` refuses the same values."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.sandbox import ConfigError, SandboxConfig
from ctrader_twisted.sandbox.config import FIELDS
from ctrader_twisted.sandbox.tap import EXIT_USAGE, Options, _Number, run_sandbox

BIN = Path(sys.executable).parent
#: Seconds one child may take (bounds every wait).
WAIT = 60.0
#: (option, bad value, words the line must contain)
REAL_PROCESS_CASES = [
    ("--tick-interval", "nan", "--tick-interval must be a finite number"),
    ("--idle-timeout", "-1", "--idle-timeout must be a finite number from 0"),
    ("--heartbeat-interval", "inf", "--heartbeat-interval must be a finite number"),
    ("--max-connections", "-1", "--max-connections must be from 0"),
    ("--app-auth-timeout", "nan", "--app-auth-timeout must be a finite number"),
    ("--rate-limit", "1e3", "--rate-limit must be a whole number (got '1e3')"),
]


def _numeric_options() -> list[tuple[str, type[int] | type[float]]]:
    out = []
    for entry in Options.optParameters:
        if len(entry) == 5 and isinstance(entry[4], _Number):
            out.append((str(entry[0]), entry[4].kind))
    return out


class InProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.state = Path(tempfile.mkdtemp(prefix="ctrader-sandbox-options-"))
        self.addCleanup(shutil.rmtree, self.state, True)

    def _line(self, *argv: str) -> tuple[int, list[str]]:
        self.stderr.seek(0)
        self.stderr.truncate()
        out = io.StringIO()
        code = run_sandbox([*argv, "--state-dir", str(self.state)], out)
        self.assertEqual(out.getvalue(), "")
        return code, self.stderr.getvalue().splitlines()

    def test_every_numeric_option_refuses_nonsense(self) -> None:
        options = _numeric_options()
        self.assertGreaterEqual(len(options), 18, options)
        for name, kind in options:
            bad = ["nan", "inf", "-inf", "x", ""] if kind is float else ["x", "1.5", "nan"]
            if name != "seed":
                bad.append("-1")
            for value in bad:
                code, lines = self._line(f"--{name}={value}")
                self.assertEqual((code, len(lines)), (EXIT_USAGE, 1), (name, value, lines))
                self.assertTrue(lines[0].startswith(f"error: --{name} "), lines)

    def test_every_config_field_has_an_option(self) -> None:
        names = {str(entry[0]) for entry in Options.optParameters} | {"always-open"}
        missing = {f for f in FIELDS if f.replace("_", "-") not in names}
        # Not command-line knobs: the version text and the page sizes of answers.
        pages = {"trendbar_chunk", "trendbar_minutes_budget", "tick_chunk", "list_chunk"}
        self.assertEqual(missing, {"version", "depth_levels", *pages})

    def test_upper_bounds(self) -> None:
        for argv in (["--tick-interval", "61"], ["--max-frame", str(2**31)]):
            code, lines = self._line(*argv)
            self.assertEqual((code, len(lines)), (EXIT_USAGE, 1), lines)

    def test_config_refuses_the_same(self) -> None:
        for field, value in [
            ("tick_interval", math.nan),
            ("tick_interval", 0.0),
            ("idle_timeout", -1.0),
            ("heartbeat_interval", math.inf),
            ("app_auth_timeout", -0.5),
            ("max_connections", -1),
            ("pre_auth_max_frame", 0),
            ("work_slice_minutes", 0),
            ("response_delay", math.nan),
            ("max_frame", True),
        ]:
            with self.assertRaises(ConfigError) as raised:
                SandboxConfig(**{field: value})  # type: ignore[arg-type]
            self.assertEqual(raised.exception.field, field)
        SandboxConfig(tick_interval=0.0001)  # documented: clamped to 1 ms
        SandboxConfig(idle_timeout=0, app_auth_timeout=0, max_connections=0)


class RealProcessTests(SynchronousTestCase):
    """Both entry points as child processes: one stderr line, status 2, no traceback."""

    def _run_all(self, commands: list[list[str]]) -> list[tuple[int, str, str]]:
        cwd = tempfile.mkdtemp(prefix="ctrader-sandbox-options-")
        self.addCleanup(shutil.rmtree, cwd, True)
        children = [
            subprocess.Popen(  # noqa: S603 - our own entry points
                argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for argv in commands
        ]
        results = []
        for child in children:
            try:
                out, err = child.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate(timeout=WAIT)
            results.append((child.returncode, out, err))
        return results

    def test_both_entry_points(self) -> None:
        state = tempfile.mkdtemp(prefix="ctrader-sandbox-options-state-")
        self.addCleanup(shutil.rmtree, state, True)
        commands, expected = [], []
        for option, value, words in REAL_PROCESS_CASES:
            tail = [f"{option}={value}", "--state-dir", state, "--port", "0"]
            commands.append([str(BIN / "ctrader-twisted"), "sandbox", *tail])
            expected.append(("error: ", words, " (see ctrader-twisted sandbox --help)"))
            commands.append([str(BIN / "twistd"), "-n", "ctrader-sandbox", *tail])
            expected.append(("ctrader-sandbox: error: ", words, ""))
        for (code, out, err), (prefix, words, suffix) in zip(
            self._run_all(commands), expected, strict=True
        ):
            lines = err.splitlines()
            self.assertEqual((code, len(lines), out), (EXIT_USAGE, 1, ""), (lines, out))
            self.assertTrue(lines[0].startswith(prefix + words), lines)
            self.assertTrue(lines[0].endswith(suffix), lines)
            self.assertNotIn("Traceback", err)
