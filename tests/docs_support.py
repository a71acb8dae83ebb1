"""Helpers for ``tests/test_docs_examples.py``: find the code blocks of the documentation, decide
how each one is checked, and run Python fragments inside a live sandbox session.

The conventions are described in the docstring of ``tests/test_docs_examples.py``.  Run as a
script (``python tests/docs_support.py FRAGMENTS.json``), this module is the fragment runner: it
connects a client to the sandbox named by ``DOCS_SANDBOX_PORT`` (CA file from
``$CTRADER_SANDBOX_STATE``), authorizes account 5000001, then executes the fragments of one page
in order in one namespace, and prints one ``DOCS-FRAGMENT`` line per fragment.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
#: Every document whose code blocks are checked.
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_MARKER = re.compile(r"^\s*<!--\s*docs:\s*([a-z-]+)\s*(?::\s*(.*?))?\s*-->\s*$")
#: Languages of blocks that hold data or output, not commands: never run.
DATA_LANGUAGES = frozenset({"text", "ini", "json"})
#: Languages that are run (unless marked illustrative).
RUN_LANGUAGES = frozenset({"python", "sh", "console"})
MARKERS = frozenset({"illustrative", "alternatives"})


class DocsConventionError(Exception):
    """A block that breaks the conventions (no language, unknown marker, indented code...)."""


@dataclass(frozen=True)
class Block:
    """One code block of a document.

    :ivar document: the Markdown file.
    :ivar line: 1-based line of the opening fence.
    :ivar language: the fence's info string (first word), ``""`` when missing.
    :ivar code: the block's content.
    :ivar marker: the ``<!-- docs: ... -->`` keyword right above the block, if any.
    :ivar reason: the text after the marker's keyword.
    :ivar heading: the nearest heading above the block.
    :ivar indented: an indented (not fenced) code block.
    """

    document: Path
    line: int
    language: str
    code: str
    marker: str | None
    reason: str
    heading: str
    indented: bool = False

    @property
    def name(self) -> str:
        """The document's path relative to the repository (as given when outside it)."""
        try:
            return str(self.document.relative_to(ROOT))
        except ValueError:
            return str(self.document)

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"

    @property
    def kind(self) -> str:
        """How the block is checked: ``illustrative``, ``data``, ``script``, ``fragment``,
        ``testcase``, ``shell`` or ``console``; ``directive`` for a MyST directive such as
        ``{toctree}``, which is not code.

        :raises DocsConventionError: when the block follows none of the conventions.
        """
        if self.language.startswith("{"):
            return "directive"
        if self.indented:
            raise DocsConventionError(
                f"{self.where}: indented code block; use a fenced block with a language"
            )
        if self.marker is not None and self.marker not in MARKERS:
            raise DocsConventionError(f"{self.where}: unknown marker 'docs: {self.marker}'")
        if not self.language:
            raise DocsConventionError(
                f"{self.where}: fenced block without a language (python, sh, console, text, "
                "ini, json)"
            )
        if self.language not in DATA_LANGUAGES | RUN_LANGUAGES:
            raise DocsConventionError(f"{self.where}: unknown block language {self.language!r}")
        if self.marker == "illustrative":
            if not self.reason:
                raise DocsConventionError(f"{self.where}: say why the block is illustrative")
            return "illustrative"
        if self.language in DATA_LANGUAGES:
            return "data"
        if self.marker == "alternatives" and self.language != "sh":
            raise DocsConventionError(f"{self.where}: 'alternatives' applies to sh blocks only")
        if self.language == "sh":
            return "shell"
        if self.language == "console":
            return "console"
        if re.search(r"^class \w+\((\w+\.)?(Synchronous)?TestCase\):", self.code, re.M):
            return "testcase"
        if "task.react(" in self.code:
            return "script"
        return "fragment"


def discover(documents: tuple[Path, ...] = DOCUMENTS) -> list[Block]:
    """Every code block of ``documents``, in document order."""
    parser = MarkdownIt("commonmark")
    blocks: list[Block] = []
    for document in documents:
        text = document.read_text(encoding="utf-8")
        blocks.extend(_blocks(parser, document, text))
    return blocks


def _blocks(parser: MarkdownIt, document: Path, text: str) -> Iterator[Block]:
    lines = text.splitlines()
    heading = ""
    tokens = parser.parse(text)
    for token in tokens:
        if token.type == "heading_open" and token.map is not None:
            heading = lines[token.map[0]].strip()
        if token.type not in ("fence", "code_block") or token.map is None:
            continue
        start = token.map[0]
        marker = reason = None
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        if above >= 0 and (match := _MARKER.match(lines[above])):
            marker, reason = match.group(1), match.group(2) or ""
        yield Block(
            document=document,
            line=start + 1,
            language=token.info.strip().split(" ")[0] if token.type == "fence" else "",
            code=token.content,
            marker=marker,
            reason=reason or "",
            heading=heading,
            indented=token.type == "code_block",
        )


# --- shell blocks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command line of a ``sh`` or ``console`` block, split like a POSIX shell would."""

    argv: tuple[str, ...]
    text: str

    @property
    def is_activation(self) -> bool:
        """``. .venv/bin/activate``: the harness already runs with the venv's ``bin`` first on
        ``PATH``, which is all activating does."""
        return self.argv[:1] in ((".",), ("source",)) and self.argv[1:2] == (".venv/bin/activate",)

    @property
    def daemon(self) -> str | None:
        """``"sandbox"`` or ``"record"`` for commands that run until stopped, else ``None``."""
        if "--help" in self.argv:
            return None
        words = [word for word in self.argv if not word.startswith("-")]
        if self.argv[:1] == ("twistd",):
            for name, kind in (("ctrader-sandbox", "sandbox"), ("ctrader-record", "record")):
                if name in self.argv:
                    return kind
            return None
        if words[:2] == ["ctrader-twisted", "sandbox"]:
            return "sandbox"
        if words[:2] == ["ctrader-twisted", "record"]:
            return "record"
        return None


def shell_commands(code: str) -> list[Command]:
    """The commands of a ``sh`` block: ``\\`` continuations joined, comments and blank lines
    dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        argv = tuple(shlex.split(line, comments=True))
        if argv:
            commands.append(Command(argv, line.split(" #")[0].strip()))
    return commands


def console_session(code: str) -> list[tuple[Command, list[str]]]:
    """The ``$ `` commands of a ``console`` block, each with the output lines shown after it."""
    session: list[tuple[Command, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            session.append((Command(tuple(shlex.split(line[2:], comments=True)), line[2:]), []))
        elif session and line.strip():
            session[-1][1].append(line)
    return session


def daemon_argv(command: Command, sandbox_port: int) -> list[str]:
    """A daemon's arguments with its ports made safe for a test run: a sandbox listens on a free
    port (``--port 0``, ``ssl:0:``); a recorder pointed at a sandbox with ``--port`` uses the
    test's sandbox."""
    argv = list(command.argv)
    kind = command.daemon
    for index, word in enumerate(argv):
        if word == "--port" and index + 1 < len(argv):
            argv[index + 1] = "0" if kind == "sandbox" else str(sandbox_port)
        elif word.startswith("--port="):
            argv[index] = "--port=" + ("0" if kind == "sandbox" else str(sandbox_port))
        elif word.startswith(("ssl:", "tcp:")):
            argv[index] = re.sub(r"^(ssl|tcp):\d+", r"\1:0", word)
    if kind == "sandbox" and not any(
        word == "--port" or word.startswith(("--port=", "--listen")) for word in argv
    ):
        argv += ["--port", "0"]
    return argv


# --- Python blocks ------------------------------------------------------------------------------


def point_at_sandbox(code: str, port: int, ca_file: Path) -> str:
    """Point an example at the test's sandbox: the sandbox's default port becomes the test
    sandbox's port, ``DEMO_HOST`` endpoints connect to it with its CA file, and ``"..."``
    credentials become the sandbox's."""
    from ctrader_twisted.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    endpoint = f'tls_endpoint(reactor, "localhost", {port}, ca_file={str(ca_file)!r})'
    code = re.sub(r"tls_endpoint\(reactor, DEMO_HOST(, PORT)?\)", endpoint, code)
    code = code.replace('client_id="..."', f"client_id={DEFAULT_CLIENT_ID!r}")
    code = code.replace('client_secret="..."', f"client_secret={DEFAULT_CLIENT_SECRET!r}")
    return re.sub(r"\b5035\b", str(port), code)


def _comment_of(source_lines: list[str], node: ast.stmt) -> str | None:
    if node.end_lineno is None or node.end_lineno != node.lineno:
        return None
    line = source_lines[node.lineno - 1]
    rest = line[node.end_col_offset :] if node.end_col_offset is not None else ""
    match = re.match(r"\s*#\s*(.+?)\s*$", rest)
    return match.group(1) if match else None


_LITERALS = (int, float, Decimal, str, bool, tuple, list, type(None))


def checked_tree(code: str, where: str) -> ast.Module:
    """Parse a fragment and turn result comments into checks.

    An expression statement followed by a comment that evaluates (with ``Decimal`` in scope) to
    a literal value, as in ``units_to_volume(10)  # 1000``, must produce that value; one
    followed by ``# SomeError: ...`` must raise that exception.  Other comments are prose.
    """
    tree = ast.parse(code, where)
    source_lines = code.splitlines()
    body: list[ast.stmt] = []
    for node in tree.body:
        comment = _comment_of(source_lines, node)
        if not isinstance(node, ast.Expr) or comment is None:
            body.append(node)
            continue
        raised = re.match(r"([A-Z]\w*(Error|Exception))\b", comment)
        if raised and not _has_await(node.value):
            call = ast.Call(
                ast.Name("__docs_raises__", ast.Load()),
                [ast.Lambda(_no_args(), node.value), ast.Constant(raised.group(1))],
                [],
            )
        else:
            try:
                expected = eval(comment, {"Decimal": Decimal})  # noqa: S307 - doc text
            except Exception:
                body.append(node)
                continue
            if not isinstance(expected, _LITERALS):
                body.append(node)
                continue
            call = ast.Call(
                ast.Name("__docs_equals__", ast.Load()),
                [node.value, ast.Constant(comment)],
                [],
            )
        body.append(ast.copy_location(ast.Expr(call), node))
    tree.body = body
    return ast.fix_missing_locations(tree)


def _has_await(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Await) for child in ast.walk(node))


def _no_args() -> ast.arguments:
    return ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )


def _equals(value: object, expected_text: str) -> None:
    expected = eval(expected_text, {"Decimal": Decimal})  # noqa: S307 - doc text
    if value != expected or type(value) is not type(expected):
        raise AssertionError(f"the document says {expected_text}, the code gives {value!r}")


def _raises(thunk: Callable[[], object], name: str) -> None:
    try:
        thunk()
    except Exception as error:
        if name not in {cls.__name__ for cls in type(error).__mro__}:
            raise AssertionError(f"the document says {name}, the code raised {error!r}") from error
        return
    raise AssertionError(f"the document says {name}, but nothing was raised")


#: The functions the checks that :func:`checked_tree` adds call.
FRAGMENT_HELPERS: dict[str, object] = {"__docs_equals__": _equals, "__docs_raises__": _raises}


# --- the fragment runner (a separate process) --------------------------------------------------

FRAGMENT_PREFIX = "DOCS-FRAGMENT"
#: Names a fragment may use without defining them: a live session on the test's sandbox.
SESSION_NAMES = (
    "m",
    "reactor",
    "client",
    "account_id",
    "access_token",
    "symbol_id",
    "start",
    "end",
    "store",
    "store_batch",
)


async def _run_fragments(reactor: Any, fragments: list[dict[str, str]]) -> None:
    from datetime import datetime, timedelta, timezone

    from twisted.internet import defer

    from ctrader_twisted import Client, messages, tls_endpoint
    from ctrader_twisted.sandbox import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        default_state_dir,
    )

    port = int(os.environ["DOCS_SANDBOX_PORT"])
    endpoint = tls_endpoint(
        reactor, "localhost", port, ca_file=default_state_dir() / "sandbox-ca.pem"
    )
    client = Client(
        endpoint, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET, reactor=reactor
    )
    client.startService()
    stored: list[object] = []

    async def store(batch: object) -> None:
        stored.append(batch)

    now = datetime.now(timezone.utc)
    namespace: dict[str, Any] = {
        "__name__": "__docs__",
        "m": messages,
        "reactor": reactor,
        "client": client,
        "account_id": 5000001,
        "access_token": DEFAULT_ACCESS_TOKEN,
        "symbol_id": 1,
        "start": now - timedelta(hours=2),
        "end": now,
        "store": store,
        "store_batch": stored.append,
        **FRAGMENT_HELPERS,
    }
    assert set(SESSION_NAMES) <= namespace.keys()
    try:
        await client.when_ready().addTimeout(20, reactor)
        await client.authorize_account(5000001, DEFAULT_ACCESS_TOKEN)
        failed = False
        for fragment in fragments:
            where = fragment["where"]
            if failed:
                print(f"{FRAGMENT_PREFIX} SKIP {where}", flush=True)
                continue
            try:
                code = compile(
                    checked_tree(fragment["code"], where),
                    where,
                    "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                )
                result = eval(code, namespace)  # noqa: S307 - the documentation's own code
                if result is not None:
                    await defer.Deferred.fromCoroutine(result).addTimeout(60, reactor)
            except Exception:
                failed = True
                detail = traceback.format_exc().replace("\n", "\n    ")
                print(f"{FRAGMENT_PREFIX} FAIL {where}\n    {detail}", flush=True)
            else:
                print(f"{FRAGMENT_PREFIX} OK {where}", flush=True)
    finally:
        await client.stopService()


def main(argv: list[str]) -> None:
    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner, textFileLogObserver

    fragments = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_run_fragments(reactor, fragments)))


if __name__ == "__main__":
    main(sys.argv)
