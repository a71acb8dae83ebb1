"""How fast the sandbox ticks, and how far its fan-out scales (issue 16, sandbox goal).

Two scenarios, each with the sandbox in its own process and the clients in others, all TLS on
127.0.0.1:

``ticks``
    ``tick_interval=0.001``, markets always open, one client subscribed to every symbol (16)
    with timestamps and live M1 bars.  Reports the ticks the sandbox ran per second (goal:
    at least 900), how long a tick took (median, p99, longest), the spot events the client
    got and their tick-to-client delay.  The measured window is placed across a minute
    boundary, where a new minute of ticks begins.

``fanout``
    ``N`` clients (``--clients``, default ``100,500,1000,2000``) spread over several client
    processes (at most 250 connections each), each subscribed with timestamps to one symbol
    (client ``i`` to symbol ``1 + i % 16``), at ``--fanout-interval`` (default 0.1 s).  Reports
    the tick-to-client delay of every spot event (wall clock at arrival minus the event's
    ``timestamp``, which is the sandbox's time at the start of the tick; whole milliseconds,
    so figures err up to 1 ms high): median, p99 (goal: under 100 ms at 2,000 clients) and
    the longest, with the events received and the sandbox's tick durations.

Run ``python -m bench.sandbox_scale`` (add ``--json`` for one JSON object).  The module runs
against whichever ``ctrader_twisted`` it imports, so the same file measures an older commit
from that commit's checkout (copy it to ``bench/`` there and run it from there).  Every wait
is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["main"]

SYMBOL_COUNT = 16
#: Connections per client process.
PER_PROCESS = 250
#: Connections a client process opens at once (the listen backlog is 50).
CONNECT_WINDOW = 16


# Shared


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _summary(values: list[float]) -> dict[str, float]:
    values.sort()
    return {
        "count": len(values),
        "p50": round(_percentile(values, 0.5), 3),
        "p99": round(_percentile(values, 0.99), 3),
        "max": round(values[-1], 3) if values else math.nan,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Where a child writes its JSON lines once Twisted's ``StandardIO`` owns its standard output
#: (which it makes non-blocking: only its transport may write there then).
_OUTPUT: list[Any] = []


def _emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj) + "\n"
    if _OUTPUT:
        _OUTPUT[0].write(line.encode())
    else:
        sys.stdout.write(line)
        sys.stdout.flush()


# The sandbox process


def _serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    from ctrader_twisted.sandbox import SandboxConfig, start_sandbox
    from ctrader_twisted.sandbox.live import MarketFeed

    reactor: Any = _reactor
    profiler = cProfile.Profile()
    durations: list[float] = []
    state = {"counting": False, "mark": 0.0, "cpu": 0.0}
    original = MarketFeed.tick

    def tick(self: MarketFeed, *args: Any) -> None:
        begin = time.perf_counter()
        original(self, *args)
        if state["counting"]:
            durations.append(time.perf_counter() - begin)

    MarketFeed.tick = tick  # type: ignore[method-assign]
    config = SandboxConfig(
        tick_interval=args.tick_interval,
        always_open=True,
        idle_timeout=0,
        app_auth_timeout=0,
        max_connections=0,
    )

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command = line.decode().strip()
            if command == "mark":
                if args.profile:
                    profiler.enable()
                durations.clear()
                state.update(counting=True, mark=time.perf_counter(), cpu=_cpu_seconds())
                _emit({"marked": True})
            elif command == "report":
                if args.profile:
                    profiler.disable()
                    stats = pstats.Stats(profiler, stream=sys.stderr)
                    stats.sort_stats("tottime").print_stats(25)
                elapsed = time.perf_counter() - state["mark"]
                cpu = _cpu_seconds() - state["cpu"]
                state["counting"] = False
                ms = [d * 1000 for d in durations]
                stats = sandbox.factory.stats
                _emit(
                    {
                        "ticks": len(ms),
                        "elapsed": round(elapsed, 3),
                        "ticks_per_s": round(len(ms) / elapsed, 1),
                        "tick_ms": _summary(ms),
                        "cpu_share": round(cpu / elapsed, 3),
                        "spot_events_sent": stats.spot_events_sent,
                        "market_events_dropped": stats.market_events_dropped,
                        "connections_open": stats.connections_open,
                    }
                )

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    sandbox: Any = None
    d = start_sandbox(reactor, config, state_dir=args.state_dir)

    def keep(running: Any) -> None:
        nonlocal sandbox
        sandbox = running
        _emit({"port": running.port, "ca_file": str(running.ca_file)})
        _OUTPUT.append(stdio.StandardIO(Control()))

    d.addCallback(keep)
    d.addErrback(lambda f: (sys.stderr.write(f.getTraceback()), reactor.stop()))
    reactor.run()


# A client process


def _clients(args: argparse.Namespace) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.protocol import Factory
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.protocols.basic import LineReceiver

    from ctrader_twisted import messages as m
    from ctrader_twisted.protocol import OpenApiProtocol
    from ctrader_twisted.sandbox import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
    )

    reactor: Any = _reactor
    account = 5000001
    trust = Certificate.loadPEM(Path(args.ca_file).read_bytes())
    tls = optionsForClientTLS("localhost", trustRoot=trust)
    symbols = [int(s) for s in args.symbols.split(",")]
    delays: list[float] = []
    stamps: set[int] = set()
    state = {"measuring": False, "events": 0, "ready": 0, "failed": 0, "lost": 0}
    spot_type = m.payload_type_of(m.ProtoOASpotEvent)
    wall = time.time

    class Handler:
        def __init__(self, index: int) -> None:
            self.index = index
            self.step = 0

        def connection_made(self, protocol: OpenApiProtocol) -> None:
            self.protocol = protocol
            protocol.send(
                m.ProtoOAApplicationAuthReq(
                    clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
                )
            )

        def envelope_received(self, protocol: OpenApiProtocol, envelope: m.Envelope) -> None:
            message = envelope.message
            if envelope.payload_type == spot_type:
                if state["measuring"] and message.HasField("timestamp"):
                    delays.append(wall() * 1000 - message.timestamp)
                    stamps.add(message.timestamp)
                    state["events"] += 1
                return
            if isinstance(message, m.ProtoOAApplicationAuthRes):
                protocol.send(
                    m.ProtoOAAccountAuthReq(
                        ctidTraderAccountId=account, accessToken=DEFAULT_ACCESS_TOKEN
                    )
                )
            elif isinstance(message, m.ProtoOAAccountAuthRes):
                ids = symbols if args.all_symbols else [symbols[self.index % len(symbols)]]
                self.pending_bars = list(ids) if args.bars else []
                protocol.send(
                    m.ProtoOASubscribeSpotsReq(
                        ctidTraderAccountId=account, symbolId=ids, subscribeToSpotTimestamp=True
                    )
                )
            elif isinstance(
                message, m.ProtoOASubscribeSpotsRes | m.ProtoOASubscribeLiveTrendbarRes
            ):
                if self.pending_bars:
                    self._next_bar(protocol)
                else:
                    self._ready()
            elif isinstance(message, m.ProtoOAErrorRes | m.ProtoErrorRes):
                sys.stderr.write(f"client {self.index}: {message}\n")
                state["failed"] += 1
                connect_next()

        def _next_bar(self, protocol: OpenApiProtocol) -> None:
            sid = self.pending_bars.pop(0)
            protocol.send(
                m.ProtoOASubscribeLiveTrendbarReq(
                    ctidTraderAccountId=account, symbolId=sid, period=m.ProtoOATrendbarPeriod.M1
                )
            )

        def _ready(self) -> None:
            state["ready"] += 1
            if state["ready"] + state["failed"] == args.count:
                _emit({"ready": state["ready"], "failed": state["failed"]})
            connect_next()

        def decode_failed(self, protocol: OpenApiProtocol, error: Exception) -> None:
            pass

        def connection_lost(self, protocol: OpenApiProtocol, reason: object) -> None:
            state["lost"] += 1

    protocols: list[OpenApiProtocol] = []
    started = [0]

    def connect_next() -> None:
        if started[0] >= args.count:
            return
        index = args.first + started[0]
        started[0] += 1
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", args.port))
        factory = Factory.forProtocol(lambda: OpenApiProtocol(Handler(index), reactor))  # type: ignore[arg-type]
        d = endpoint.connect(factory)
        d.addCallback(protocols.append)

        def failed(f: Any) -> None:
            sys.stderr.write(f"client {index}: {f.getErrorMessage()}\n")
            state["failed"] += 1
            if state["ready"] + state["failed"] == args.count:
                _emit({"ready": state["ready"], "failed": state["failed"]})
            connect_next()

        d.addErrback(failed)

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command = line.decode().strip()
            if command == "start":
                delays.clear()
                stamps.clear()
                state.update(measuring=True, events=0, cpu=_cpu_seconds(), t=time.monotonic())
            elif command == "stop":
                state["measuring"] = False
                elapsed = time.monotonic() - state["t"]
                _emit(
                    {
                        "events": state["events"],
                        "distinct_ticks": len(stamps),
                        "elapsed": round(elapsed, 3),
                        "cpu_share": round((_cpu_seconds() - state["cpu"]) / elapsed, 3),
                        "lost": state["lost"],
                        "delays": [round(d, 2) for d in delays],
                    }
                )

        def connectionLost(self, reason: object = None) -> None:
            for protocol in protocols:
                protocol.close(abort=True)
            reactor.callLater(0.2, reactor.stop)

    _OUTPUT.append(stdio.StandardIO(Control()))
    for _ in range(min(CONNECT_WINDOW, args.count)):
        connect_next()
    reactor.run()


# The orchestrator


class _Child:
    """A child process speaking JSON lines on stdout, driven by lines on stdin."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sandbox_scale", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stdout is not None
        self._stdout: IO[str] = self.process.stdout

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.process.args} in {timeout} s")
            ready, _, _ = select.select([self._stdout], [], [], left)
            if ready:
                line = self._stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.process.args} ended ({self.process.poll()})")
                return dict(json.loads(line))

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)


def _run(
    tick_interval: float,
    clients: int,
    *,
    all_symbols: bool,
    bars: bool,
    duration: float,
    warmup: float,
    across_minute: bool,
    log: IO[str],
    profile: bool = False,
) -> dict[str, Any]:
    state_dir = tempfile.mkdtemp(prefix="sandbox-scale-")
    children: list[_Child] = []
    try:
        argv = ["_serve", "--tick-interval", str(tick_interval), "--state-dir", state_dir]
        server = _Child(argv + (["--profile"] if profile else []))
        children.append(server)
        where = server.read(60)
        symbols = ",".join(str(s) for s in range(1, SYMBOL_COUNT + 1))
        procs = max(1, math.ceil(clients / PER_PROCESS))
        workers = []
        for p in range(procs):
            first = p * clients // procs
            count = (p + 1) * clients // procs - first
            argv = ["_clients", "--port", str(where["port"]), "--ca-file", where["ca_file"]]
            argv += ["--first", str(first), "--count", str(count), "--symbols", symbols]
            argv += ["--all-symbols"] if all_symbols else []
            argv += ["--bars"] if bars else []
            workers.append(_Child(argv))
        children.extend(workers)
        connected = 0
        for worker in workers:
            ready = worker.read(30 + clients * 0.05)
            connected += int(ready["ready"])
        log.write(f"  {connected} of {clients} clients subscribed\n")
        wait = warmup
        if across_minute:
            # place the window so that a minute boundary falls in its middle
            now = time.time() + warmup
            boundary = math.floor(now / 60) * 60 + 60
            start = max(now, boundary - duration / 2)
            wait = start - time.time()
        time.sleep(wait)
        server.send("mark")
        server.read(10)
        for worker in workers:
            worker.send("start")
        time.sleep(duration)
        for worker in workers:
            worker.send("stop")
        server.send("report")
        served = server.read(30)
        delays: list[float] = []
        events = distinct = 0
        client_cpu = 0.0
        lost = 0
        for worker in workers:
            got = worker.read(60)
            delays.extend(got["delays"])
            events += got["events"]
            distinct = max(distinct, got["distinct_ticks"])
            client_cpu += got["cpu_share"]
            lost += got["lost"]
        elapsed = served["elapsed"]
        return {
            "tick_interval": tick_interval,
            "clients": clients,
            "connected": connected,
            "client_processes": procs,
            "duration": duration,
            "sandbox": served,
            "events": events,
            "events_per_s": round(events / elapsed, 1),
            "distinct_ticks_per_client_process_per_s": round(distinct / elapsed, 1),
            "delay_ms": _summary(delays),
            "client_cpu_share": round(client_cpu, 3),
            "connections_lost": lost,
        }
    finally:
        for child in reversed(children):
            child.stop()


def _orchestrate(args: argparse.Namespace) -> None:
    log = sys.stderr
    results: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    import ctrader_twisted

    results["ctrader_twisted"] = str(Path(ctrader_twisted.__file__).parent)
    if args.scenario in ("ticks", "all"):
        log.write("ticks: tick_interval=0.001, 16 symbols with live M1 bars, one client\n")
        run = _run(
            0.001,
            1,
            all_symbols=True,
            bars=True,
            duration=args.duration,
            warmup=args.warmup,
            across_minute=True,
            log=log,
        )
        results["ticks"] = run
        sandbox = run["sandbox"]
        log.write(
            f"  {sandbox['ticks_per_s']} ticks/s; tick ms p50 {sandbox['tick_ms']['p50']} "
            f"p99 {sandbox['tick_ms']['p99']} max {sandbox['tick_ms']['max']}; sandbox CPU "
            f"{sandbox['cpu_share']:.0%}; client got {run['events_per_s']} events/s, "
            f"delay p99 {run['delay_ms']['p99']} ms\n"
        )
    if args.scenario in ("fanout", "all"):
        results["fanout"] = []
        for n in [int(c) for c in args.clients.split(",")]:
            log.write(f"fanout: {n} clients, tick_interval={args.fanout_interval}\n")
            run = _run(
                args.fanout_interval,
                n,
                all_symbols=False,
                bars=False,
                duration=args.duration,
                warmup=args.warmup,
                across_minute=False,
                log=log,
                profile=args.profile,
            )
            results["fanout"].append(run)
            sandbox = run["sandbox"]
            log.write(
                f"  delay ms p50 {run['delay_ms']['p50']} p99 {run['delay_ms']['p99']} max "
                f"{run['delay_ms']['max']}; {run['events_per_s']} events/s; tick ms p99 "
                f"{sandbox['tick_ms']['p99']}; sandbox CPU {sandbox['cpu_share']:.0%}, "
                f"clients CPU {run['client_cpu_share']:.0%}\n"
            )
    if args.json:
        print(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_scale", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("_serve")
    serve.add_argument("--tick-interval", type=float, required=True)
    serve.add_argument("--state-dir", required=True)
    serve.add_argument("--profile", action="store_true")
    clients = sub.add_parser("_clients")
    clients.add_argument("--port", type=int, required=True)
    clients.add_argument("--ca-file", required=True)
    clients.add_argument("--first", type=int, required=True)
    clients.add_argument("--count", type=int, required=True)
    clients.add_argument("--symbols", required=True)
    clients.add_argument("--all-symbols", action="store_true")
    clients.add_argument("--bars", action="store_true")
    parser.add_argument("--scenario", choices=("ticks", "fanout", "all"), default="all")
    parser.add_argument("--clients", default="100,500,1000,2000")
    parser.add_argument("--fanout-interval", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="profile the sandbox (fanout), on its stderr"
    )
    args = parser.parse_args(argv)
    if args.command == "_serve":
        _serve(args)
    elif args.command == "_clients":
        _clients(args)
    else:
        _orchestrate(args)


if __name__ == "__main__":
    main()
