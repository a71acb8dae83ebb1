"""A user's ``mypy --strict`` sees the right types with nothing but the wheel installed.

The typed ``Client.request`` overloads and the message stubs rest on ``google.protobuf``'s types.
When those stubs are missing every message class is ``Any`` to mypy, so any request matches the
first overload (``ProtoOAAccountAuthReq``) and a misspelt field goes unflagged.  The wheel must
bring whatever mypy needs: this installs it without the test extras into a scratch environment
(``tests/wheelenv.py``) with mypy and checks a small program as a user would write it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests import wheelenv

USER_PROGRAM = """\
from twisted.internet.defer import Deferred

from ctrader_twisted import Client
from ctrader_twisted import messages as m


async def main(client: Client) -> None:
    trader = await client.request(m.ProtoOATraderReq(ctidTraderAccountId=1))
    reveal_type(trader)
    symbols = await client.request(m.ProtoOASymbolsListReq(ctidTraderAccountId=1))
    reveal_type(symbols)
    order = m.ProtoOANewOrderReq(ctidTraderAccountId=1, symbolId=1, volume=100)
    reveal_type(await client.request(order))
    bars = await client.request(m.ProtoOAGetTrendbarsReq(ctidTraderAccountId=1, symbolId=1))
    reveal_type(bars)
    version = await client.request(m.ProtoOAVersionReq())
    reveal_type(version)
    print(version.trader)  # deliberate: a ProtoOAVersionRes has no trader
    pending: Deferred[m.ProtoOAVersionRes] = client.request(m.ProtoOAVersionReq())
    print(pending, trader.trader.balance, len(symbols.symbol), bars.period)
"""

EXPECTED_REVEALS = {
    9: "ctrader_twisted.messages.OpenApiMessages_pb2.ProtoOATraderRes",
    11: "ctrader_twisted.messages.OpenApiMessages_pb2.ProtoOASymbolsListRes",
    13: "ctrader_twisted.messages.OpenApiMessages_pb2.ProtoOAExecutionEvent",
    15: "ctrader_twisted.messages.OpenApiMessages_pb2.ProtoOAGetTrendbarsRes",
    17: "ctrader_twisted.messages.OpenApiMessages_pb2.ProtoOAVersionRes",
}
ATTRIBUTE_ERROR_LINE = 18
_NOTE = re.compile(r'^user\.py:(\d+): note: Revealed type is "([^"]+)"$', re.MULTILINE)
_ERROR = re.compile(r"^user\.py:(\d+): error: (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("downstream")
    (work / "user.py").write_text(USER_PROGRAM)
    with wheelenv.installed() as venv:
        result = subprocess.run(  # noqa: S603 - the scratch environment's own mypy
            [
                venv / "bin" / "python",
                "-m",
                "mypy",
                "--strict",
                "--no-error-summary",
                "--cache-dir",
                venv / ".mypy_cache",
                "user.py",
            ],
            cwd=work,
            env=wheelenv.clean_env(venv),
            capture_output=True,
            text=True,
            timeout=wheelenv.COMMAND_TIMEOUT,
            check=False,
        )
    assert result.returncode in (0, 1), result.stderr  # 1: the deliberate error was found
    return result.stdout


def test_requests_reveal_their_response_class(mypy_output: str) -> None:
    revealed = {int(line): kind for line, kind in _NOTE.findall(mypy_output)}
    assert revealed == EXPECTED_REVEALS, mypy_output


def test_wrong_attribute_is_the_only_error(mypy_output: str) -> None:
    errors = [(int(line), text) for line, text in _ERROR.findall(mypy_output)]
    assert len(errors) == 1, mypy_output
    line, text = errors[0]
    assert line == ATTRIBUTE_ERROR_LINE, mypy_output
    assert '"ProtoOAVersionRes" has no attribute "trader"' in text, mypy_output


def test_program_lines_match_expectations() -> None:
    lines = USER_PROGRAM.splitlines()
    for number in EXPECTED_REVEALS:
        assert lines[number - 1].lstrip().startswith("reveal_type("), number
    assert "version.trader" in lines[ATTRIBUTE_ERROR_LINE - 1]


def test_wheel_is_typed_and_needs_no_extras(tmp_path: Path) -> None:
    """The wheel ships py.typed and the stubs, and declares the protobuf stubs it relies on."""
    import zipfile

    with zipfile.ZipFile(wheelenv.built().wheel) as wheel:
        names = set(wheel.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert "ctrader_twisted/py.typed" in names
    assert "ctrader_twisted/messages/OpenApiMessages_pb2.pyi" in names
    runtime = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("types-protobuf") for r in runtime), requires
