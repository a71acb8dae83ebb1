"""Suite-wide checks.

Every log event the library emits during the whole run (client, CLI, OAuth, recorder and
sandbox alike) is searched for the sandbox's default secrets, which nearly every client
scenario in the suite uses.  A hit fails the run at the end, naming the test and the event.
``tests/test_secrets.py`` checks the same per scenario with secrets of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
)

_SECRETS = (DEFAULT_CLIENT_SECRET, DEFAULT_ACCESS_TOKEN, DEFAULT_REFRESH_TOKEN)
_LEAKS: list[str] = []
_CURRENT = ["(collection)"]


def _texts(event: LogEvent) -> Iterator[str]:
    yield formatEvent(event)
    yield repr({k: v for k, v in event.items() if k not in ("log_logger", "log_source")})
    failure = event.get("log_failure")
    if failure is not None:
        yield failure.getTraceback()


def _observe(event: LogEvent) -> None:
    if not str(event.get("log_namespace", "")).startswith("ctrader_twisted"):
        return
    for text in _texts(event):
        for secret in _SECRETS:
            if secret in text:
                shown = formatEvent(event)[:200].replace(secret, "<secret>")
                _LEAKS.append(f"{_CURRENT[0]}: {secret[:3]}... in {shown!r}")
                return


def pytest_configure(config: pytest.Config) -> None:
    globalLogPublisher.addObserver(_observe)


def pytest_unconfigure(config: pytest.Config) -> None:
    globalLogPublisher.removeObserver(_observe)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _CURRENT[0] = item.nodeid
    return (yield)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _LEAKS:
        print(f"\n{len(_LEAKS)} log events carried a secret:")
        for leak in _LEAKS[:20]:
            print("  " + leak)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _trial_mktemp_under_basetemp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """trial's ``TestCase.mktemp`` makes its folders relative to the working directory (trial's
    own runner first moves into ``_trial_temp``); under pytest that is the checkout, which then
    collects ``tests.test_*/`` folders.  Give each test's ``mktemp`` pytest's temporary base."""
    instance = request.instance
    if isinstance(instance, SynchronousTestCase):

        def mktemp() -> str:
            return str(tmp_path_factory.mktemp("trial") / "temp")

        instance.mktemp = mktemp  # type: ignore[method-assign]
