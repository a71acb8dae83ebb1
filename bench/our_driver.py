"""Drive our :class:`ctrader_twisted.Client` against the bench server.

Runs as ``python -m bench.our_driver CONFIG_JSON`` in the project's environment, in a process of
its own (the server is another process).  Progress goes to stderr; the result is one JSON
object on stdout, in the same shape as :mod:`bench.official_driver`'s.

The client connects over verified TLS (the sandbox's CA file) with default settings: default
request timeout, default rate limits, default reconnect backoff.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

from bench._common import emit_result, measure_events, now, percentile, progress
from bench._control import ControlClient, connect_control
from bench.ceiling import measure_ceiling
from ctrader_twisted import Client, tls_endpoint
from ctrader_twisted import messages as m
from ctrader_twisted.errors import OpenApiError, RequestTimeout

__all__ = ["main", "run"]

Config = dict[str, Any]


#: Round trips are sent in groups that stay under the 50/s limit, then wait out the window,
#: so that the figure is the latency of a request and not a wait imposed by the rate limit.
RTT_GROUP = 45


async def measure_rtt(reactor: Any, client: Client, count: int) -> dict[str, object]:
    """Sequential ``ProtoOAVersionReq`` round trips, at most 45 in any second."""
    samples = []
    request = client.request
    group_started = now()
    for index in range(count):
        if index and index % RTT_GROUP == 0:
            rest = group_started + 1.05 - now()
            if rest > 0:
                await _sleep(reactor, rest)
            group_started = now()
        started = now()
        await request(m.ProtoOAVersionReq())
        samples.append(now() - started)
    return {
        "count": count,
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
    }


async def _sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def measure_restore(
    reactor: Any, client: Client, control: ControlClient, config: Config
) -> dict[str, object]:
    """Server-side drop -> first spot event after the client restored its session."""
    account = config["account_id"]
    await client.subscribe_spots(account, [1])
    times: list[float] = []
    waiter: list[Deferred[float]] = []
    baseline = [client.reconnect_count]

    def on_spot(_event: m.ProtoOASpotEvent) -> None:
        # Events still in flight from before the drop arrive on the old connection; only an
        # event on a newer connection proves the session was restored.
        if waiter and client.reconnect_count > baseline[0]:
            waiter.pop().callback(now())

    remove = client.on(m.ProtoOASpotEvent, on_spot)
    try:
        for _ in range(config["restore_runs"]):
            await _sleep(reactor, 0.3)
            baseline[0] = client.reconnect_count
            restored: Deferred[float] = Deferred()
            waiter.append(restored)
            dropped_at = now()
            await control.command("drop")
            seen_at = await restored.addTimeout(30, reactor)
            times.append(seen_at - dropped_at)
            progress(f"ours: restored in {times[-1] * 1000:.0f} ms")
    finally:
        remove()
    await client.unsubscribe_spots(account, [1])
    return {"runs_s": times, "restore_s": sorted(times)[len(times) // 2] if times else None}


def _burst_requests(config: Config) -> list[Any]:
    to_ms = int(time.time() * 1000)
    ordinary: list[Any] = [m.ProtoOAVersionReq() for _ in range(config["burst_ordinary"])]
    historical = [
        m.ProtoOAGetTrendbarsReq(
            ctidTraderAccountId=config["account_id"],
            symbolId=1,
            period=m.ProtoOATrendbarPeriod.M1,
            fromTimestamp=to_ms - 3_600_000,
            toTimestamp=to_ms,
        )
        for _ in range(config["burst_historical"])
    ]
    return ordinary + historical


async def measure_burst(
    reactor: Any, client: Client, control: ControlClient, config: Config
) -> dict[str, object]:
    """300 ordinary + 30 historical requests issued at once, default timeouts."""
    await _sleep(reactor, 1.1)  # start with full rate-limit windows on both sides
    requests = _burst_requests(config)
    outcome = {"ok": 0, "rejected": 0, "timed_out": 0, "other": 0}
    before = await control.command("stats")
    started = now()
    finished: list[float] = []

    def on_result(_response: object) -> None:
        outcome["ok"] += 1
        finished.append(now() - started)

    def on_failure(failure: Failure) -> None:
        if failure.check(RequestTimeout):
            outcome["timed_out"] += 1
        elif failure.check(OpenApiError):
            outcome["rejected"] += 1
        else:
            outcome["other"] += 1
        finished.append(now() - started)

    pending = [client.request(request).addCallbacks(on_result, on_failure) for request in requests]
    deadline = started + config["burst_deadline"]
    while len(finished) < len(pending) and now() < deadline:
        await _sleep(reactor, 0.01)
    wall = max(finished) if finished else None
    for deferred in pending:
        deferred.cancel()
    after = await control.command("stats")
    seen = _request_delta(before, after)
    progress(f"ours: burst {outcome}, wall {wall}")
    return {
        "total": len(requests),
        **outcome,
        "unfinished": len(requests) - len(finished),
        "wall_s": wall,
        "server_requests_seen": sum(seen.values()),
        "server_requests_by_type": seen,
    }


def _request_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Requests the server received during the burst, by message name."""
    was = before.get("requests_by_payload_type", {})
    now_ = after.get("requests_by_payload_type", {})
    seen = {}
    for cls in (m.ProtoOAVersionReq, m.ProtoOAGetTrendbarsReq):
        key = str(m.payload_type_of(cls()))
        seen[cls.__name__] = int(now_.get(key, 0)) - int(was.get(key, 0))
    return seen


async def main(reactor: Any, config: Config) -> None:
    control = await connect_control(reactor, config["control_port"])
    endpoint = tls_endpoint(reactor, config["host"], config["port"], ca_file=config["ca_file"])
    client = Client(
        endpoint,
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        reactor=reactor,
        **config.get("client_options", {}),
    )
    client.startService()
    await client.when_ready()
    await client.authorize_account(config["account_id"], config["access_token"])
    result: dict[str, object] = {"client": "ours"}
    progress("ours: round trips")
    result["rtt"] = await measure_rtt(reactor, client, config["rtt_count"])

    def install(listener: Any) -> None:
        if listener is None:
            remove_listener[0]()
        else:
            remove_listener[0] = client.on(m.ProtoOASpotEvent, listener)

    remove_listener = [lambda: None]
    progress("ours: events")
    result["events"] = await measure_events(reactor, control, install, config, measure_ceiling)
    progress("ours: restore")
    result["restore"] = await measure_restore(reactor, client, control, config)
    progress("ours: burst")
    result["burst"] = await measure_burst(reactor, client, control, config)
    emit_result(result)
    control.close()
    await client.stopService()


def run() -> None:
    """Entry point: ``python -m bench.our_driver CONFIG_JSON``."""
    config = json.loads(sys.argv[1])
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, config)))


if __name__ == "__main__":
    run()
