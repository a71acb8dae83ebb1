"""Drive the official SDK (``ctrader-open-api`` on PyPI) against the bench server.

Runs with the bench's separate virtual environment (``bench/.venv-official``: the SDK pins
Twisted 24.3 and protobuf 3.20.1 exactly), as ``python -m bench.official_driver CONFIG_JSON``
from the repository root.  It never imports ``ctrader_twisted``.  Progress goes to stderr; the
result is one JSON object on stdout.

The SDK is used the way its documentation and samples use it: ``Client(host, port,
TcpProtocol)``, callbacks set with ``setConnectedCallback`` / ``setMessageReceivedCallback``,
``client.send(message)`` returning a Deferred, ``Protobuf.extract`` to decode an event.  Its
``ssl:`` endpoint does not verify certificates, so it accepts the sandbox's certificate as is.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ctrader_open_api import Client, Protobuf, TcpProtocol
from ctrader_open_api.messages.OpenApiCommonMessages_pb2 import ProtoMessage
from ctrader_open_api.messages.OpenApiMessages_pb2 import (
    ProtoOAAccountAuthReq,
    ProtoOAApplicationAuthReq,
    ProtoOAGetTrendbarsReq,
    ProtoOASpotEvent,
    ProtoOASubscribeSpotsReq,
    ProtoOAVersionReq,
)
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import deferLater, react

from bench._common import (
    SPOT_EVENT_TYPE,
    emit_result,
    measure_events,
    now,
    percentile,
    progress,
)
from bench._control import ControlClient, connect_control

_ERROR_TYPES = frozenset({50, 2142})  # ProtoErrorRes, ProtoOAErrorRes
_M1 = 1  # ProtoOATrendbarPeriod.M1

Config = dict[str, Any]


class OfficialSession:
    """One SDK client plus the bookkeeping the measurements need."""

    def __init__(self, reactor: Any, config: Config) -> None:
        self.reactor = reactor
        self.config = config
        self.client = Client(config["host"], config["port"], TcpProtocol)
        self.client.setConnectedCallback(self._connected)
        self.client.setDisconnectedCallback(self._disconnected)
        self.client.setMessageReceivedCallback(self._received)
        self.on_spot: Callable[[ProtoOASpotEvent], None] | None = None
        self.connections = 0
        self.reauthorize = False
        self._connected_waiters: list[Deferred[None]] = []

    def start(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._connected_waiters.append(waiter)
        self.client.startService()
        return waiter

    def next_connection(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._connected_waiters.append(waiter)
        return waiter

    def send(self, message: Any, timeout: float = 5) -> Deferred[ProtoMessage]:
        return self.client.send(message, responseTimeoutInSeconds=timeout)

    async def authorize(self) -> None:
        """App auth then account auth, as the SDK's console sample does."""
        cfg = self.config
        app = ProtoOAApplicationAuthReq(
            clientId=cfg["client_id"], clientSecret=cfg["client_secret"]
        )
        await self.send(app)
        account = ProtoOAAccountAuthReq(
            ctidTraderAccountId=cfg["account_id"], accessToken=cfg["access_token"]
        )
        await self.send(account)

    def set_spot(self, listener: Callable[[ProtoOASpotEvent], None] | None) -> None:
        self.on_spot = listener

    def _connected(self, client: Any) -> None:
        self.connections += 1
        if self.reauthorize:
            # What the SDK's console sample does on every connection: re-send the auth requests.
            # Subscriptions are not restored (the SDK keeps no record of them).
            Deferred.fromCoroutine(self.authorize()).addErrback(lambda _: None)
        waiters, self._connected_waiters = self._connected_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _disconnected(self, client: Any, reason: Any) -> None:
        pass

    def _received(self, client: Any, message: ProtoMessage) -> None:
        if message.payloadType == SPOT_EVENT_TYPE and self.on_spot is not None:
            self.on_spot(Protobuf.extract(message))


async def measure_rtt(session: OfficialSession, count: int) -> dict[str, object]:
    """Sequential ``ProtoOAVersionReq`` round trips."""
    samples = []
    for _ in range(count):
        started = now()
        await session.send(ProtoOAVersionReq(), timeout=10)
        samples.append(now() - started)
    return {
        "count": count,
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
        "samples_ms": [s * 1000 for s in samples],
    }


async def measure_restore(
    session: OfficialSession, control: ControlClient, config: Config
) -> dict[str, object]:
    """Drop the connection server-side; see whether spot events come back."""
    account = config["account_id"]
    seen: list[float] = []
    session.on_spot = lambda _event: seen.append(now())
    await session.send(ProtoOASubscribeSpotsReq(ctidTraderAccountId=account, symbolId=[1]))
    await deferLater(session.reactor, 0.5, lambda: None)
    live_before = len(seen)
    session.reauthorize = True
    reconnected = session.next_connection()
    dropped_at = now()
    await control.command("drop")
    seen.clear()
    await reconnected.addTimeout(30, session.reactor)
    reconnect_s = now() - dropped_at
    await deferLater(session.reactor, config["restore_wait"], lambda: None)
    session.on_spot = None
    return {
        "live_events_before_drop": live_before,
        "reconnect_s": reconnect_s,
        "events_after_restore": len(seen),
        "restore_s": (seen[0] - dropped_at) if seen else None,
        "waited_s": config["restore_wait"],
    }


def _burst_requests(config: Config) -> list[Any]:
    account = config["account_id"]
    to_ms = int(time.time() * 1000)
    ordinary = [ProtoOAVersionReq() for _ in range(config["burst_ordinary"])]
    historical = [
        ProtoOAGetTrendbarsReq(
            ctidTraderAccountId=account,
            symbolId=1,
            period=_M1,
            fromTimestamp=to_ms - 3_600_000,
            toTimestamp=to_ms,
        )
        for _ in range(config["burst_historical"])
    ]
    return ordinary + historical


async def _burst_once(session: OfficialSession, config: Config, timeout: float, budget: float):
    requests = _burst_requests(config)
    outcome = {"ok": 0, "rejected": 0, "timed_out": 0, "other": 0}
    settled: list[float] = []
    started = now()

    def on_result(message: ProtoMessage) -> None:
        outcome["rejected" if message.payloadType in _ERROR_TYPES else "ok"] += 1
        settled.append(now() - started)

    def on_failure(failure: Any) -> None:
        kind = "timed_out" if failure.check(TimeoutError, CancelledError) else "other"
        outcome[kind] += 1
        settled.append(now() - started)

    pending = [session.send(r, timeout=timeout) for r in requests]
    for deferred in pending:
        deferred.addCallbacks(on_result, on_failure)
    deadline = started + budget
    while len(settled) < len(pending) and now() < deadline:
        await deferLater(session.reactor, 0.05, lambda: None)
    unfinished = len(pending) - len(settled)
    for deferred in pending:
        deferred.cancel()
    # The SDK's send queue lives on the TcpProtocol class and drains 5 entries a second even
    # when they were cancelled; empty it so the next measurement does not wait behind them.
    TcpProtocol._send_queue.clear()
    return outcome, settled, unfinished, now() - started


async def measure_burst(session: OfficialSession, config: Config) -> dict[str, object]:
    """300 ordinary + 30 historical requests at once: with the SDK's default 5 s timeout,
    then with a long timeout inside a wall-time budget (extrapolated)."""
    total = config["burst_ordinary"] + config["burst_historical"]
    outcome, _, _, wall = await _burst_once(session, config, 5, 60)
    result: dict[str, object] = {"total": total, "default_timeout": {**outcome, "wall_s": wall}}
    progress(f"official burst, default timeout: {outcome}")
    await deferLater(session.reactor, 1.5, lambda: None)
    budget = config["burst_budget"]
    outcome, _settled, unfinished, wall = await _burst_once(session, config, budget + 60, budget)
    completed = outcome["ok"] + outcome["rejected"]
    result["budget"] = {
        **outcome,
        "budget_s": budget,
        "completed": completed,
        "unfinished": unfinished,
        "extrapolated_wall_s": (total * budget / completed) if completed else None,
    }
    progress(f"official burst, {budget:.0f} s budget: {completed} of {total} completed")
    return result


def measure_ceiling(count: int) -> dict[str, object]:
    """The bare frame-and-parse loop with the SDK's own classes and protobuf runtime."""
    from google.protobuf.internal import api_implementation

    from bench._common import spot_fields

    bodies = []
    for i in range(1000):
        payload = ProtoOASpotEvent(**spot_fields(i)).SerializeToString()
        bodies.append(
            ProtoMessage(payloadType=SPOT_EVENT_TYPE, payload=payload).SerializeToString()
        )
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    repeats = max(1, count // len(bodies))
    started = now()
    checksum = 0
    for _ in range(repeats):
        offset = 0
        while offset < len(stream):
            length = int.from_bytes(stream[offset : offset + 4], "big")
            envelope = ProtoMessage.FromString(stream[offset + 4 : offset + 4 + length])
            checksum += ProtoOASpotEvent.FromString(envelope.payload).bid
            offset += 4 + length
    elapsed = now() - started
    return {
        "rate": repeats * len(bodies) / elapsed,
        "protobuf_backend": api_implementation.Type(),
    }


async def main(reactor: Any, config: Config) -> None:
    control = await connect_control(reactor, config["control_port"])
    session = OfficialSession(reactor, config)
    await session.start().addTimeout(30, reactor)
    await session.authorize()
    result: dict[str, object] = {"client": "official"}
    progress("official: round trips")
    result["rtt"] = await measure_rtt(session, config["rtt_count"])
    progress("official: events")
    result["events"] = await measure_events(
        session.reactor, control, session.set_spot, config, measure_ceiling
    )
    progress("official: restore")
    result["restore"] = await measure_restore(session, control, config)
    progress("official: burst")
    result["burst"] = await measure_burst(session, config)
    emit_result(result)
    control.close()
    session.client.stopService()


def run() -> None:
    """Entry point: ``python -m bench.official_driver CONFIG_JSON``."""
    config = json.loads(sys.argv[1])
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, config)))


if __name__ == "__main__":
    run()
