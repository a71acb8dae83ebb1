"""Every code block of README.md and docs/*.md, run as written against a sandbox.

Conventions for code blocks in the documentation (check them here before adding a block):

* Every block is fenced and names its language.  ``python``, ``sh`` and ``console`` blocks are
  run; ``text`` (output, messages, paths), ``ini`` and ``json`` blocks are data and are only
  parsed (ini and json).  Indented code blocks, fences without a language and other languages
  fail this test, so a new block is always either run or consciously marked.  Fences whose
  language is in braces (``{toctree}``) are MyST directives for the Sphinx site, not code.
* ``<!-- docs: illustrative: REASON -->`` on the line above a block means it is not run; the
  reason is required (real credentials or servers, a browser, installing from the network, or
  a command run by another test, named in the reason).
* ``python`` blocks that call ``task.react(...)`` are scripts: each runs in its own process
  and must exit with 0.  A block that defines a trial ``TestCase`` subclass is a test module,
  run with trial.  Any other ``python`` block is a fragment: the fragments of one page run in
  order in one namespace (top-level ``await`` allowed) inside a live session, where
  ``m`` (``ctrader_twisted.messages``), ``client`` (ready), ``reactor``, ``account_id``
  (authorized), ``access_token``, ``symbol_id``, ``start``/``end`` (the last two hours) and
  ``store``/``store_batch`` (collect what they get) exist.  A fragment line
  ``expression  # VALUE`` whose comment evaluates to a literal (``# 1000``,
  ``# Decimal("10.00")``) must give that value, and ``expression  # SomeError: ...`` must
  raise it.
* Python is pointed at the test's sandbox by text substitution only: the sandbox port 5035
  becomes the test sandbox's port, ``tls_endpoint(reactor, DEMO_HOST[, PORT])`` connects to
  the sandbox with its CA file, and ``client_id="..."`` / ``client_secret="..."`` become the
  sandbox's credentials.
* ``sh`` blocks: one command per line (``\\`` continues a line, ``#`` starts a comment), run in a
  fresh folder shared by the block, with the virtual environment's ``bin`` first on ``PATH``
  (so ``. .venv/bin/activate`` is a no-op here), ``HOME`` a temporary folder, and
  ``$CTRADER_SANDBOX_STATE`` / ``$CTRADER_CONFIG`` naming the test sandbox's state folder and
  a config whose ``[sandbox]`` section has its port, so ``--env sandbox`` commands reach it.
  Commands must exit with 0 within 60 s.  Daemons (``ctrader-twisted sandbox``/``record``,
  ``twistd ... ctrader-sandbox``/``ctrader-record``) get a bounded run: started together with
  the block, they must come up (log that they listen or record) and stay up while the other
  commands run, then stop cleanly on SIGINT, as after Ctrl-C.  Sandboxes listen on a free
  port instead of the one written.  ``<!-- docs: alternatives -->`` marks a block whose lines
  are alternatives: each daemon then runs in a folder of its own (no shared pidfile or
  database).
* ``console`` blocks show ``$ command`` lines with their output; the commands run like ``sh``
  ones, and JSON output lines must have the same keys (and time formats) as shown.

Everything shares one sandbox process (``ctrader-twisted sandbox --always-open``, so the trading
examples also run at weekends), and every wait is bounded.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrader_twisted.sandbox import DEFAULT_ACCESS_TOKEN, DEFAULT_CLIENT_SECRET

from .docs_support import (
    FRAGMENT_HELPERS,
    FRAGMENT_PREFIX,
    ROOT,
    Block,
    Command,
    DocsConventionError,
    checked_tree,
    console_session,
    daemon_argv,
    discover,
    point_at_sandbox,
    shell_commands,
)

BIN = Path(sys.executable).parent
BLOCKS = discover()
COMMAND_TIMEOUT = 60.0
#: Four ticks a second: quotes come quickly, and an hour of ticks is 15 pages (3 s) of history.
FAST_TICKS = ("--tick-interval", "0.25")
#: How long a daemon has to come up, and how long it must then stay up.
DAEMON_START = 30.0
DAEMON_STAY = 0.5
DAEMON_READY = {
    "sandbox": re.compile(r"listening on \S+:\d+|\(TLS\) starting on \d+"),
    "record": re.compile(r"Recording \d+ symbol"),
}
#: What a script must print, beyond exiting with 0 (by document and heading).
SCRIPT_OUTPUT = {
    ("README.md", "## Using the client"): re.compile(r"^Quote\(.*symbol_id=1,", re.M),
    ("docs/client.md", "## Connect"): re.compile(r"^91\b", re.M),
    ("docs/client.md", "## From asyncio code"): re.compile(r"^91\b", re.M),
}


def _kind(block: Block) -> str:
    try:
        return block.kind
    except DocsConventionError:
        return "invalid"


@dataclass
class Sandbox:
    port: int
    state: Path
    config: Path
    home: Path

    @property
    def ca_file(self) -> Path:
        return self.state / "sandbox-ca.pem"

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CTRADER_", "XDG_", "PYTHONWARNINGS"))
        }
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.home),
            PYTHONPATH=str(ROOT),
            CTRADER_SANDBOX_STATE=str(self.state),
            CTRADER_CONFIG=str(self.config),
            DOCS_SANDBOX_PORT=str(self.port),
        )
        return env


class _Running:
    """A process whose merged output is collected by a thread, so waits stay bounded."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.process = subprocess.Popen(  # noqa: S603
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails after ``timeout`` or an exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.output)
            if match:
                return match
            if self.process.poll() is not None:
                self._reader.join(5)
                match = pattern.search(self.output)
                if match:
                    return match
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{' '.join(self.argv)}: no {pattern.pattern!r} within {timeout} s "
            f"(exit status {self.process.poll()}):\n{self.output}"
        )

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (Ctrl-C), then the exit status; killed and failed if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{' '.join(self.argv)} still running {timeout} s after SIGINT:\n{self.output}"
            ) from None
        finally:
            self._reader.join(5)
        return code


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    base = tmp_path_factory.mktemp("docs")
    state, home = base / "state", base / "home"
    home.mkdir()
    config = base / "config.ini"
    running = Sandbox(0, state, config, home)
    env = running.env()
    process = _Running(
        [str(BIN / "ctrader-twisted"), "sandbox", "--port", "0", "--always-open", *FAST_TICKS],
        env,
        base,
    )
    try:
        match = process.wait_for(re.compile(r"listening on \S+:(\d+)"), 30)
        running.port = int(match.group(1))
        config.write_text(f"[sandbox]\nport = {running.port}\n", encoding="utf-8")
        yield running
    finally:
        process.stop()


# --- the conventions ----------------------------------------------------------------------------


def test_discovery_finds_every_block_and_rejects_unmarked_ones(tmp_path: Path) -> None:
    assert len(BLOCKS) >= 30
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n```bash\nls\n```\n\n```\nplain\n```\n\n    indented\n\n"
        "<!-- docs: illustrative: needs a real account -->\n```sh\nctrader-twisted auth\n```\n\n"
        "<!-- docs: illustrative -->\n```sh\nx\n```\n\n<!-- docs: sometimes -->\n```sh\nx\n```\n\n"
        "```python\nx = 1\n```\n\n```python\ntask.react(main)\n```\n",
        encoding="utf-8",
    )
    kinds = [_kind(block) for block in discover((page,))]
    assert kinds == [
        "invalid",
        "invalid",
        "invalid",
        "illustrative",
        "invalid",
        "invalid",
        "fragment",
        "script",
    ]


def test_shell_parsing() -> None:
    commands = shell_commands(
        "ctrader-twisted --help     # a comment\n\n"
        "twistd --pidfile=r.pid -n ctrader-record -s EURUSD \\\n    -p M1\n"
        ". .venv/bin/activate\nctrader-twisted sandbox --port 6035\n"
    )
    assert [c.argv[-1] for c in commands] == ["--help", "M1", ".venv/bin/activate", "6035"]
    assert [c.daemon for c in commands] == [None, "record", None, "sandbox"]
    assert commands[2].is_activation
    assert daemon_argv(commands[3], 7000)[-2:] == ["--port", "0"]
    listen = Command(("twistd", "-n", "ctrader-sandbox", "--listen", "ssl:5035:x=1"), "")
    assert daemon_argv(listen, 7000)[-1] == "ssl:0:x=1"
    assert daemon_argv(Command(("twistd", "-n", "ctrader-sandbox"), ""), 7000)[-1] == "0"
    assert Command(("ctrader-twisted", "record", "--help"), "").daemon is None


def test_result_comments_are_checked() -> None:
    def run(code: str) -> None:
        compiled = compile(checked_tree(code, "page.md:1"), "page.md:1", "exec")
        exec(compiled, dict(FRAGMENT_HELPERS))  # noqa: S102 - the test's own snippets

    run('from decimal import Decimal\n1 + 1  # 2\nDecimal("1.50")  # Decimal("1.50")\n')
    run("int('x')  # ValueError: invalid literal\nprint(1)  # prints one\n")
    with pytest.raises(AssertionError, match="the document says 3"):
        run("1 + 1  # 3\n")
    with pytest.raises(AssertionError, match=r"says 2, the code gives 2\.0"):
        run("4 / 2  # 2\n")
    with pytest.raises(AssertionError, match="nothing was raised"):
        run("int('1')  # ValueError: not a number\n")


# --- every block --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    kind = _kind(block)
    if kind == "invalid":
        pytest.fail(str(_convention_error(block)))
    if kind in ("illustrative", "directive"):
        return
    if kind == "data":
        _check_data(block)
        return
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    if kind == "script":
        _run_script(block, sandbox, tmp_path)
    elif kind == "testcase":
        _run_testcase(block, sandbox, tmp_path)
    elif kind == "fragment":
        _check_fragment(block, sandbox, request)
    elif kind == "shell":
        _run_shell(block, sandbox, tmp_path)
    elif kind == "console":
        _run_console(block, sandbox, tmp_path)
    else:  # pragma: no cover - every kind is handled above
        pytest.fail(f"unhandled kind {kind}")


def _convention_error(block: Block) -> Exception:
    try:
        block.kind  # noqa: B018 - raises the explanation
    except DocsConventionError as error:
        return error
    return AssertionError("no error")  # pragma: no cover


def _check_data(block: Block) -> None:
    if block.language == "json":
        json.loads(block.code)
    elif block.language == "ini":
        configparser.ConfigParser().read_string(block.code)


def _run(argv: list[str], sandbox: Sandbox, cwd: Path, timeout: float = COMMAND_TIMEOUT) -> str:
    try:
        done = subprocess.run(  # noqa: S603
            argv,
            env=sandbox.env(),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"{argv} did not finish in {timeout} s:\n{expired.output}") from None
    output = done.stdout
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{output}"
    assert "Traceback" not in output, output
    return output


def _python(block: Block, sandbox: Sandbox) -> str:
    return point_at_sandbox(block.code, sandbox.port, sandbox.ca_file)


def _run_script(block: Block, sandbox: Sandbox, folder: Path) -> None:
    script = folder / "example.py"
    script.write_text(_python(block, sandbox), encoding="utf-8")
    output = _run([sys.executable, str(script)], sandbox, folder)
    expected = SCRIPT_OUTPUT.get((block.name, block.heading))
    if expected is not None:
        assert expected.search(output), output
    for secret in (DEFAULT_CLIENT_SECRET, DEFAULT_ACCESS_TOKEN):
        assert secret not in output, output


def _run_testcase(block: Block, sandbox: Sandbox, folder: Path) -> None:
    (folder / "test_docs_example.py").write_text(_python(block, sandbox), encoding="utf-8")
    output = _run(
        [
            sys.executable,
            "-m",
            "twisted.trial",
            "--temp-directory",
            "_trial_temp",
            "test_docs_example",
        ],
        sandbox,
        folder,
    )
    assert re.search(r"^PASSED \(successes=\d+\)", output, re.M), output


_FRAGMENT_RESULTS: dict[Path, dict[str, str]] = {}


def _check_fragment(block: Block, sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    results = _FRAGMENT_RESULTS.get(block.document)
    if results is None:
        results = _FRAGMENT_RESULTS[block.document] = _run_fragments(block.document, sandbox)
    outcome = results.get(block.where, "NOT REPORTED")
    assert outcome == "OK", f"{block.where}: {outcome}"


def _run_fragments(document: Path, sandbox: Sandbox) -> dict[str, str]:
    fragments = [
        {"where": block.where, "code": _python(block, sandbox)}
        for block in BLOCKS
        if block.document == document and _kind(block) == "fragment"
    ]
    folder = sandbox.home / f"fragments-{document.stem}"
    folder.mkdir()
    listing = folder / "fragments.json"
    listing.write_text(json.dumps(fragments), encoding="utf-8")
    argv = [sys.executable, str(ROOT / "tests" / "docs_support.py"), str(listing)]
    try:
        done = subprocess.run(  # noqa: S603
            argv,
            env=sandbox.env(),
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT * 2,
            check=False,
        )
        output = done.stdout
    except subprocess.TimeoutExpired as expired:
        output = f"timed out:\n{expired.output}"
    results: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        if line.startswith(FRAGMENT_PREFIX):
            _, status, where = line.split(" ", 2)
            current = where
            results[where] = status
        elif current is not None and results[current] != "OK" and line.startswith("    "):
            results[current] += "\n" + line
    for fragment in fragments:
        results.setdefault(fragment["where"], f"not reported; the runner said:\n{output}")
    return results


def _start_daemon(command: Command, sandbox: Sandbox, cwd: Path) -> _Running:
    if "key.pem" in command.text or "cert.pem" in command.text:
        server = sandbox.state / "sandbox-server.pem"
        shutil.copy(server, cwd / "key.pem")
        shutil.copy(server, cwd / "cert.pem")
    return _Running(daemon_argv(command, sandbox.port), sandbox.env(), cwd)


def _finish(daemon: _Running, command: Command) -> None:
    status = daemon.process.poll()
    code = daemon.stop()
    output = daemon.output
    assert status is None, f"{command.text} stopped by itself with {status}:\n{output}"
    assert code in (0, -signal.SIGINT), f"{command.text} ended with {code} after SIGINT:\n{output}"
    assert "Traceback" not in output, output


def _run_shell(block: Block, sandbox: Sandbox, folder: Path) -> None:
    commands = shell_commands(block.code)
    daemons = [command for command in commands if command.daemon]
    others = [command for command in commands if not command.daemon]
    if block.marker == "alternatives":
        folders = [folder / f"alternative-{index}" for index in range(len(daemons))]
        for cwd in folders:
            cwd.mkdir()
    else:
        folders = [folder] * len(daemons)
    started = [
        _start_daemon(command, sandbox, cwd) for command, cwd in zip(daemons, folders, strict=True)
    ]
    try:
        for daemon, command in zip(started, daemons, strict=True):
            daemon.wait_for(DAEMON_READY[command.daemon or ""], DAEMON_START)
        for command in others:
            if command.is_activation:
                assert (BIN / "activate").exists()
                continue
            _run(list(command.argv), sandbox, folder)
        time.sleep(DAEMON_STAY)
        for daemon, command in zip(started, daemons, strict=True):
            _finish(daemon, command)
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()


_TIME = re.compile(r"^\d{4}-\d\d-\d\dT")


def _shape(value: object) -> object:
    """A JSON value's type, or a time's format (milliseconds, present or not, are one format:
    whole seconds print without them)."""
    if isinstance(value, str) and _TIME.match(value):
        return re.sub(r"\d", "0", re.sub(r"\.\d{3}Z$", "Z", value))
    return type(value).__name__


def _run_console(block: Block, sandbox: Sandbox, folder: Path) -> None:
    for command, shown in console_session(block.code):
        assert not command.daemon, f"{block.where}: daemons go in sh blocks"
        output = _run(list(command.argv), sandbox, folder)
        got = [line for line in output.splitlines() if line.startswith("{")]
        for expected_line in shown:
            if not expected_line.startswith("{"):
                continue
            expected = json.loads(expected_line)
            same_type = [
                json.loads(line)
                for line in got
                if json.loads(line).get("type") == expected.get("type")
            ]
            assert same_type, f"{command.text}: no {expected.get('type')} line in:\n{output}"
            actual = same_type[0]
            assert sorted(actual) == sorted(expected), (expected_line, actual)
            assert {k: _shape(v) for k, v in actual.items()} == {
                k: _shape(v) for k, v in expected.items()
            }, (expected_line, actual)


# --- the examples fail visibly and in bounded time without a server --------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("document", "heading"),
    [("README.md", "## Using the client"), ("docs/client.md", "## Connect")],
)
def test_example_without_a_server_fails_visibly_and_in_time(
    document: str, heading: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    (block,) = [
        block
        for block in BLOCKS
        if block.name == document and block.heading == heading and _kind(block) == "script"
    ]
    dead = Sandbox(_closed_port(), sandbox.state, sandbox.config, sandbox.home)
    code = _python(block, dead)
    code, count = re.subn(r"\.addTimeout\((\d+), reactor\)", ".addTimeout(2, reactor)", code)
    assert count == 1, "the example no longer bounds when_ready() with addTimeout"
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        [sys.executable, str(script)],
        env=dead.env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 20
    assert done.returncode != 0, done.stdout + done.stderr
    assert re.search(r"attempt 1 failed.*refused", done.stderr), done.stderr
    assert "TimeoutError" in done.stderr, done.stderr


def test_readme_puts_the_commands_on_path_before_using_them() -> None:
    """After ``make demo`` the tools are only in ``.venv/bin``: the README activates it before
    its first bare ``ctrader-twisted`` or ``twistd`` command."""
    activated = False
    for block in BLOCKS:
        if block.name != "README.md" or block.language != "sh" or _kind(block) != "shell":
            continue
        for command in shell_commands(block.code):
            if command.is_activation:
                activated = True
            elif command.argv[0] in ("ctrader-twisted", "twistd"):
                assert activated, f"{block.where}: {command.text} before . .venv/bin/activate"
                return
    pytest.fail("README.md runs no ctrader-twisted or twistd command")


def test_readme_links_work_on_an_index_page() -> None:
    """The README is the package's long description: on an index page, relative links
    (``docs/client.md``) lead nowhere, so every link is absolute."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse((ROOT / "README.md").read_text(encoding="utf-8"))
    links = [
        str(child.attrs.get("href", child.attrs.get("src", "")))
        for token in tokens
        for child in token.children or []
        if child.type in ("link_open", "image")
    ]
    relative = [link for link in links if not re.match(r"https?://", link)]
    assert not relative, f"relative links in README.md: {relative}"
