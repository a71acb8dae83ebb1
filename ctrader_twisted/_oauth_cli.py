"""Command-line flows for OAuth: ``ctrader-twisted auth`` and ``ctrader-twisted token``.

The CLI module registers these with :func:`add_auth_parser` and :func:`add_token_parser` (each
sets ``handler`` on the parsed namespace), or calls :func:`auth_main` / :func:`token_main` with
the remaining arguments.  The flows themselves (:func:`auth_flow`, :func:`token_flow`) take the
reactor and an output stream, so tests run them on a real reactor without a subprocess.

Secrets come from the environment (``CTRADER_CLIENT_ID``, ``CTRADER_CLIENT_SECRET``) or options;
nothing printed ever contains a secret in full.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import webbrowser
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeAlias, cast
from urllib.parse import urlsplit

from ctrader_twisted._cli_errors import CliError, ExitCode
from ctrader_twisted._cli_validate import validate_options
from ctrader_twisted._oauth_defaults import DEFAULT_BASE_URL, SCOPES
from ctrader_twisted._oauth_errors import OAuthConnectionError, OAuthError, OAuthTimeout
from ctrader_twisted.errors import CTraderError
from ctrader_twisted.tokens import TokenFileError, TokenStore, default_token_path

# Twisted and the OAuth client (treq) are imported when a flow runs, so that building the
# parser (``ctrader-twisted --help``) stays cheap.
if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTCP, IReactorThreads, IReactorTime

    from ctrader_twisted.oauth import OAuthClient

    class _Reactor(IReactorTCP, IReactorTime, IReactorThreads):
        """The reactor capabilities the flows need (typing only; real reactors are cast)."""


__all__ = [
    "CLIENT_ID_ENV",
    "CLIENT_SECRET_ENV",
    "DEFAULT_REDIRECT_URI",
    "add_auth_parser",
    "add_token_parser",
    "auth_flow",
    "auth_main",
    "exit_code",
    "token_flow",
    "token_main",
]

CLIENT_ID_ENV: Final = "CTRADER_CLIENT_ID"
CLIENT_SECRET_ENV: Final = "CTRADER_CLIENT_SECRET"  # noqa: S105 - a variable name
#: The redirect URI to register for the application when using ``ctrader-twisted auth``.
DEFAULT_REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
_REDIRECT_WAIT: Final = 300.0
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client-id",
        default=os.environ.get(CLIENT_ID_ENV, ""),
        help=f"application client id (default: ${CLIENT_ID_ENV})",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get(CLIENT_SECRET_ENV, ""),
        help=f"application secret (default: ${CLIENT_SECRET_ENV}; prefer the "
        "environment, command lines are visible to other users)",
    )
    parser.add_argument(
        "--token-file",
        default=str(default_token_path()),
        help="token JSON file (default: %(default)s)",
    )
    parser.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help="OAuth server (default: %(default)s)"
    )
    parser.add_argument(
        "--redirect-uri",
        default=DEFAULT_REDIRECT_URI,
        help="redirect URI registered for the application (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds per token-endpoint request (default: %(default)s)",
    )


def _build_auth_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common_options(parser)
    parser.add_argument(
        "--scope",
        choices=SCOPES,
        default="trading",
        help="trading (full access) or accounts (read-only); default %(default)s",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="only print the authorization URL"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=_REDIRECT_WAIT,
        help="seconds to wait for the redirect (default: %(default)s)",
    )
    parser.set_defaults(handler=auth_main_namespace)
    return parser


def _build_token_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _common_options(parser)
    parser.add_argument(
        "action",
        choices=("show", "refresh"),
        help="show the stored token (masked) or refresh it over HTTP",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (masked)")
    parser.set_defaults(handler=token_main_namespace)
    return parser


def add_auth_parser(
    subparsers: _Subparsers,
) -> argparse.ArgumentParser:
    """Add the ``auth`` subcommand; its namespace's ``handler(namespace) -> int`` runs it."""
    parser = subparsers.add_parser(
        "auth", help="authorize this application for your cTrader accounts (OAuth)"
    )
    return _build_auth_parser(parser)


def add_token_parser(
    subparsers: _Subparsers,
) -> argparse.ArgumentParser:
    """Add the ``token`` subcommand (``show`` / ``refresh``); ``handler`` as above."""
    parser = subparsers.add_parser("token", help="show or refresh the stored OAuth token")
    return _build_token_parser(parser)


def auth_main(argv: Sequence[str] | None = None) -> int:
    """``ctrader-twisted auth [options]``; returns the exit status."""
    parser = _build_auth_parser(argparse.ArgumentParser(prog="ctrader-twisted auth"))
    return auth_main_namespace(parser.parse_args(argv))


def token_main(argv: Sequence[str] | None = None) -> int:
    """``ctrader-twisted token show|refresh [options]``; returns the exit status."""
    parser = _build_token_parser(argparse.ArgumentParser(prog="ctrader-twisted token"))
    return token_main_namespace(parser.parse_args(argv))


def auth_main_namespace(options: argparse.Namespace) -> int:
    """Run ``auth`` from parsed options on the global reactor."""
    return _run(lambda reactor: auth_flow(reactor, options, sys.stdout, sys.stderr))


def token_main_namespace(options: argparse.Namespace) -> int:
    """Run ``token`` from parsed options on the global reactor."""
    return _run(lambda reactor: token_flow(reactor, options, sys.stdout, sys.stderr))


def _run(flow: Callable[[_Reactor], Deferred[int]]) -> int:
    from twisted.internet.task import react

    def exit_with(status: int) -> None:
        if status:
            raise SystemExit(status)

    try:
        react(lambda reactor: flow(cast("_Reactor", reactor)).addCallback(exit_with))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


def _oauth_client(reactor: _Reactor, options: argparse.Namespace) -> OAuthClient:
    from ctrader_twisted.oauth import OAuthClient

    if not options.client_id or not options.client_secret:
        raise OAuthError(
            "MISSING_CREDENTIALS",
            f"set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} (or --client-id/--client-secret)",
        )
    return OAuthClient(
        reactor,
        options.client_id,
        options.client_secret,
        options.redirect_uri,
        base_url=options.base_url,
        timeout=options.timeout,
    )


def auth_flow(
    reactor: _Reactor, options: argparse.Namespace, out: TextIO, err: TextIO | None = None
) -> Deferred[int]:
    """Authorize in the browser, catch the redirect, exchange the code and store the token.

    :param out: where results go.
    :param err: where the one-line error goes (default: ``out``).
    :returns: a Deferred that fires with the exit status (see :func:`exit_code`); it does not
        fail.
    """
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(_guard(_auth(reactor, options, out), err or out))


async def _auth(reactor: _Reactor, options: argparse.Namespace, out: TextIO) -> int:
    from twisted.internet.threads import deferToThreadPool

    from ctrader_twisted.oauth import RedirectCatcher, new_state

    validate_options(options)
    oauth = _oauth_client(reactor, options)
    target = urlsplit(options.redirect_uri)
    try:
        port = target.port or 80
    except ValueError:  # not a number, or beyond 65535
        port = 0
    if target.scheme != "http" or target.hostname not in ("127.0.0.1", "localhost") or not port:
        raise CliError("the redirect URI must be http://127.0.0.1:<port>/...", ExitCode.USAGE)
    state = new_state()
    catcher = RedirectCatcher(reactor, state, port=port, path=target.path or "/")
    catcher.listen()
    try:
        url = oauth.authorization_url(state, options.scope)
        out.write(f"Open this page to grant access (scope {options.scope}):\n\n  {url}\n\n")
        out.write(f"Waiting for the redirect to {options.redirect_uri} ...\n")
        out.flush()
        if not options.no_browser:
            await deferToThreadPool(reactor, reactor.getThreadPool(), webbrowser.open, url)
        waiting = catcher.wait()
        waiting.addTimeout(options.wait, reactor)
        result = await waiting
        token = await oauth.exchange_code(result.code)
    finally:
        await catcher.stop()
    store = TokenStore(options.token_file, reactor)
    await store.save(token)
    out.write(f"Token saved to {store.path} (mode 0600).\n")
    _print_token(out, token.describe(reactor.seconds()), json_output=False)
    return 0


def token_flow(
    reactor: _Reactor, options: argparse.Namespace, out: TextIO, err: TextIO | None = None
) -> Deferred[int]:
    """Show the stored token (masked) or refresh it over HTTP and store the new one.

    :param out: where results go.
    :param err: where the one-line error goes (default: ``out``).
    :returns: a Deferred that fires with the exit status (see :func:`exit_code`; no stored
        token is missing credentials, 3); it does not fail.
    """
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(_guard(_token(reactor, options, out), err or out))


async def _token(reactor: _Reactor, options: argparse.Namespace, out: TextIO) -> int:
    validate_options(options)
    store = TokenStore(options.token_file, reactor)
    token = await store.load()
    if token is None:
        raise CliError(f"no token in {store.path}; run 'ctrader-twisted auth' first", ExitCode.AUTH)
    if options.action == "refresh":
        token = await _oauth_client(reactor, options).refresh(token.refresh_token)
        await store.save(token)
        out.write(f"Token refreshed and saved to {store.path}.\n")
    _print_token(out, token.describe(reactor.seconds()), json_output=options.json)
    return 0


def _print_token(out: TextIO, summary: dict[str, str], *, json_output: bool) -> None:
    if json_output:
        out.write(json.dumps(summary, sort_keys=True) + "\n")
        return
    for key, value in summary.items():
        out.write(f"  {key:<14} {value}\n")


def exit_code(error: BaseException) -> ExitCode:
    """The exit status of ``auth`` and ``token`` for an error, as documented in docs/cli.md.

    Missing credentials or token and refusals by the OAuth server are authentication failures
    (3); an unreachable or silent OAuth server and a redirect that never came are connection
    failures (4); an unreadable token file and a bad redirect URI are usage errors (2).
    """
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if isinstance(error, CliError):
        return error.code
    if isinstance(error, OAuthConnectionError | OAuthTimeout | DeferredTimeout):
        return ExitCode.CONNECTION
    if isinstance(error, OAuthError):
        return ExitCode.AUTH
    if isinstance(error, TokenFileError):
        return ExitCode.USAGE
    return ExitCode.API_ERROR


async def _guard(flow: Coroutine[Any, Any, int], err: TextIO) -> int:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    try:
        return await flow
    except BrokenPipeError:  # ``ctrader-twisted token show | head -1``: nothing more to say
        return int(ExitCode.STDOUT_CLOSED)
    except DeferredTimeout:
        err.write("error: no redirect arrived in time; run the command again\n")
        code = ExitCode.CONNECTION
    except CTraderError as exc:
        err.write(f"error: {exc}\n")
        code = exit_code(exc)
    err.flush()
    return int(code)
