"""Generate ``ctrader_twisted/_requests_typed.py``: one ``@overload`` of ``request`` per request.

Each overload pairs a request class with its answer class from ``messages.RESPONSE_TYPES``, so
that ``client.request(m.ProtoOAVersionReq())`` is typed ``Deferred[ProtoOAVersionRes]``.

Usage: ``python tools/gen_request_overloads.py`` rewrites the file; ``--check`` only compares
and exits 1 if the committed file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "ctrader_twisted" / "_requests_typed.py"

HEADER = '''\
"""Per-request typing of ``Client.request`` (generated: do not edit).

Written by ``tools/gen_request_overloads.py`` from ``messages.RESPONSE_TYPES``; regenerate after
a schema change.  Each overload maps one request class to the class of its answer.
"""

from __future__ import annotations

from typing import Any, overload

from google.protobuf.message import Message
from twisted.internet.defer import Deferred

from . import messages as m

__all__ = ["TypedRequests"]


class TypedRequests:
    """Mixin giving :meth:`request` one typed signature per request class."""
'''

OVERLOAD = """
    @overload
    def request(
        self,
        message: m.{req},
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[m.{res}]: ...
"""

FOOTER = '''
    def request(
        self,
        message: Message,
        *,
        timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> Deferred[Any]:  # the overloads above are the public signature
        """Send ``message`` and return a Deferred for its answer.

        :param message: a request (any ``Proto...Req``); account-scoped requests name their
            account in ``ctidTraderAccountId``.
        :param timeout: seconds to wait for the answer once the frame is written
            (default: the client's ``request_timeout``).
        :param send_timeout: seconds the request may wait to be written, while the client
            is not ready or the rate limit holds it back (default: the client's
            ``send_timeout``).
        :returns: a Deferred that fires with the answer: the paired response message, or
            for a trading request the first ``ProtoOAExecutionEvent`` carrying its
            clientMsgId.  It fails with
            :class:`~ctrader_twisted.errors.OpenApiError` (or a subclass such as
            :class:`~ctrader_twisted.errors.OrderError`) when the server refuses it;
            :class:`~ctrader_twisted.errors.RequestTimeout` when a bound runs out
            (``sent`` says which one); :class:`~ctrader_twisted.errors.ConnectionLost`
            when the connection closes after the frame was written;
            :class:`~ctrader_twisted.errors.NotConnected` for a trading request made
            while the client is not ready, for any request while the client is stopped;
            :class:`~ctrader_twisted.errors.ApplicationAuthError` once the application
            credentials were refused.  Cancelling it withdraws the request.
        :raises TypeError: if ``message`` is not a request.
        :raises google.protobuf.message.EncodeError: if a required field is not set.
        """
        return self._submit_request(message, timeout, send_timeout)

    def _submit_request(
        self, message: Message, timeout: float | None, send_timeout: float | None
    ) -> Deferred[Message]:
        raise NotImplementedError
'''


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from ctrader_twisted import messages as m

    pairs = sorted((req.__name__, res.__name__) for req, res in m.RESPONSE_TYPES.items())
    body = "".join(OVERLOAD.format(req=req, res=res) for req, res in pairs)
    return HEADER + body + FOOTER


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run tools/gen_request_overloads.py")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
