"""Cold start: what ``ctrader-twisted`` and ``import ctrader_twisted`` load (issue 16 item 5).

Each check runs a fresh interpreter and reads its ``sys.modules`` at exit, so the result does
not depend on what this test process has imported.  Timing is not asserted here (it varies
with the machine's load); ``python -m bench.cold_start`` measures it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IReactorProcess
from twisted.trial.unittest import SynchronousTestCase, TestCase

import ctrader_twisted
from ctrader_twisted._cli_reactor import CliReactor
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)

from .process_support import CollectingProcess

reactor: CliReactor = global_reactor  # type: ignore[assignment]

#: Runs the console script's ``main`` and prints the loaded modules to stderr at exit.
_CLI = """\
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
from ctrader_twisted.cli import main
sys.exit(main())
"""
_IMPORT = "import json, sys; {code}; print(json.dumps(sorted(sys.modules)))"

#: Never needed by a command that neither runs nor uses the sandbox nor OAuth over HTTP.
_HEAVY = ("ctrader_twisted.sandbox", "treq", "rich")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRADER_")}
    return {**env, "HOME": str(home), "CTRADER_CONFIG": str(home / "none.ini")}


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in prefixes or name.startswith(prefixes)]


def _modules_in(stderr: str) -> list[str]:
    for line in stderr.splitlines():
        if line.startswith("MODULES "):
            modules: list[str] = json.loads(line[len("MODULES ") :])
            return modules
    raise AssertionError(f"no module list in: {stderr!r}")


class HelpTests(SynchronousTestCase):
    def _cli(self, *args: str) -> tuple[int, str, list[str]]:
        home = Path(self.mktemp()).absolute()
        home.mkdir(parents=True)
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
            [sys.executable, "-c", _CLI, *args],
            capture_output=True,
            text=True,
            env=_env(home),
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, _modules_in(done.stderr)

    def test_help_loads_neither_twisted_nor_the_sandbox(self) -> None:
        for args in (["--help"], ["--version"], ["bars", "--help"], ["auth", "--help"]):
            code, out, modules = self._cli(*args)
            self.assertEqual(code, 0, args)
            self.assertTrue(out, args)
            self.assertEqual(_loaded(modules, (*_HEAVY, "twisted", "OpenSSL")), [], args)

    def test_usage_error_loads_nothing_heavy(self) -> None:
        code, _, modules = self._cli("bars", "EURUSD", "--timeout", "nan")
        self.assertEqual(code, 2)
        self.assertEqual(_loaded(modules, _HEAVY), [])


class ImportTests(SynchronousTestCase):
    def _modules(self, code: str) -> list[str]:
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
            [sys.executable, "-c", _IMPORT.format(code=code)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        modules: list[str] = json.loads(done.stdout)
        return modules

    def test_package_import_is_light(self) -> None:
        modules = self._modules("import ctrader_twisted")
        self.assertEqual(_loaded(modules, (*_HEAVY, "twisted", "google")), [])

    def test_public_names_load_on_use(self) -> None:
        modules = self._modules("from ctrader_twisted import Client, tls_endpoint, DEMO_HOST")
        self.assertIn("ctrader_twisted.client", modules)
        self.assertEqual(_loaded(modules, _HEAVY), [])

    def test_public_names_are_the_submodules_objects(self) -> None:
        from ctrader_twisted import DEMO_HOST, LIVE_HOST, PORT, Client, client, tls, tls_endpoint

        self.assertIs(Client, client.Client)
        self.assertIs(tls_endpoint, tls.tls_endpoint)
        self.assertEqual((DEMO_HOST, LIVE_HOST, PORT), (tls.DEMO_HOST, tls.LIVE_HOST, tls.PORT))
        self.assertLessEqual(set(ctrader_twisted.__all__), set(dir(ctrader_twisted)))
        for name in ctrader_twisted.__all__:
            self.assertTrue(hasattr(ctrader_twisted, name), name)
        with self.assertRaises(AttributeError):
            ctrader_twisted.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


class CommandTests(TestCase):
    """A command against a real server (a sandbox used as a demo server): no sandbox code."""

    timeout = 60

    async def _sandbox(self) -> RunningSandbox:
        config = SandboxConfig(always_open=True)
        running = await start_sandbox(reactor, config, port=0, state_dir=self.mktemp())
        self.addCleanup(running.stop)
        return running

    async def test_symbols_json_without_the_sandbox(self) -> None:
        running = await self._sandbox()
        home = Path(self.mktemp()).absolute()
        home.mkdir()
        env = {
            **_env(home),
            "CTRADER_CLIENT_ID": DEFAULT_CLIENT_ID,
            "CTRADER_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "CTRADER_ACCESS_TOKEN": DEFAULT_ACCESS_TOKEN,
        }
        where = ["--env", "demo", "--host", "localhost", "--port", str(running.port)]
        args = ["symbols", "EUR", "--json", *where, "--ca-file", str(running.ca_file)]
        protocol = CollectingProcess()
        spawn: IReactorProcess = global_reactor  # type: ignore[assignment]
        spawn.spawnProcess(
            protocol, sys.executable, [sys.executable, "-c", _CLI, *args], env=env, path=str(home)
        )
        protocol.ended.addTimeout(50, reactor)
        status = await protocol.ended
        err = protocol.err.decode()
        self.assertEqual(status, 0, err)
        self.assertIn(b'"name":"EURUSD"', protocol.out)
        modules = _modules_in(err)
        self.assertIn("ctrader_twisted.client", modules)
        self.assertEqual(_loaded(modules, _HEAVY), [])
