"""Client hot-path measurements: spot events per second and request round trips.

Run: ``.venv/bin/python -m bench.client_hot_path [--events 300000] [--round-trips 2000]``

1. *ceilings*: the bare loops of :mod:`bench.ceiling` over the same frames as the bench server's
   bursts: the client's way (one protobuf parse per frame) and the two-step way (envelope,
   then payload).
2. *client*: the same frames, in 16 KiB chunks (one TLS record each), through
   ``OpenApiProtocol.dataReceived`` and the client's dispatch to one ``on(ProtoOASpotEvent)``
   listener (framing + parse + dispatch), without TLS or sockets.
3. *round trip*: sequential ``ProtoOAVersionReq`` requests to a local fake server over loopback
   TLS (trustme certificates), reporting p50/p90/p99, with client-side pacing off (at the
   default 50/s, sequential requests beyond 50 per second would wait for the window).

All on one core; numbers vary with the machine and its load.  Each figure is the best of
``--repeat`` tries, taken in turns so that a burst of load elsewhere hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.ceiling import build_frames, measure_ceiling
from ctrader_twisted import Client, tls_endpoint
from ctrader_twisted import messages as m

CHUNK = 16 * 1024


def spot_stream(count: int) -> bytes:
    """``count`` frames of the bench server's bursts, back to back."""
    frames = build_frames()
    repeated = (frames * (count // len(frames) + 1))[:count]
    return b"".join(repeated)


def through_client(stream: bytes, count: int) -> float:
    clock = Clock()
    client = Client(_NoEndpoint(), client_id="bench", client_secret="bench", reactor=clock)  # noqa: S106
    received = [0]

    def on_spot(event: m.ProtoOASpotEvent) -> None:
        received[0] += 1

    client.on(m.ProtoOASpotEvent, on_spot)
    protocol = client._build_protocol()
    protocol.makeConnection(StringTransport())
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    data_received = protocol.dataReceived
    start = time.perf_counter()
    for chunk in chunks:
        data_received(chunk)
    elapsed = time.perf_counter() - start
    if received[0] != count:
        raise RuntimeError(f"delivered {received[0]} of {count}")
    return count / elapsed


class _NoEndpoint:
    def connect(self, factory: object) -> Any:
        raise RuntimeError("not used")


def round_trips(count: int) -> list[float]:
    import trustme
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from ctrader_twisted.testing import server_tls_options
    from tests.fakeserver import CLIENT_ID, CLIENT_SECRET, FakeServer

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server = FakeServer(reactor)
    options = server_tls_options(cert.private_key_and_cert_chain_pem.bytes())
    port = reactor.listenSSL(0, server.factory(), options, interface="127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "ca.pem"
        ca_file.write_bytes(ca.cert_pem.bytes())
        endpoint = tls_endpoint(reactor, "localhost", port.getHost().port, ca_file=ca_file)
    # rate_limit=0: measure the round trip itself, not the 50/s pacing the real server needs.
    client = Client(
        endpoint,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        reactor=reactor,
        rate_limit=0,
    )
    samples: list[float] = []

    async def run() -> None:
        client.startService()
        await client.when_ready()
        for _ in range(200):  # warm-up
            await client.request(m.ProtoOAVersionReq())
        for _ in range(count):
            start = time.perf_counter()
            await client.request(m.ProtoOAVersionReq())
            samples.append(time.perf_counter() - start)
        await client.stopService()
        await port.stopListening()

    done = ensureDeferred(run())
    done.addErrback(lambda failure: print(failure.getTraceback()))
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stream = spot_stream(args.events)
    one, two, full = 0.0, 0.0, 0.0
    for _ in range(args.repeat):
        ceilings = measure_ceiling(args.events)
        one = max(one, float(ceilings["rate"]))  # type: ignore[arg-type]
        two = max(two, float(ceilings["two_step_rate"]))  # type: ignore[arg-type]
        full = max(full, through_client(stream, args.events))
    print(f"ceiling, one parse : {one:12,.0f} events/s")
    print(f"ceiling, two-step  : {two:12,.0f} events/s")
    print(f"client on() path   : {full:12,.0f} events/s  ({full / one:.0%} of the ceiling)")
    if args.round_trips:
        samples = sorted(round_trips(args.round_trips))
        q = statistics.quantiles(samples, n=100)
        print(
            f"TLS round trip     : p50 {q[49] * 1e3:.3f} ms  p90 {q[89] * 1e3:.3f} ms  "
            f"p99 {q[98] * 1e3:.3f} ms  ({len(samples)} sequential requests)"
        )


if __name__ == "__main__":
    main()
