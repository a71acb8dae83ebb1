"""The sandbox end to end: our Client in memory (iosim) and over loopback TLS, a standard
client that knows nothing of our code, and the twistd plugin."""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf.message import Message
from twisted.application.service import IService, IServiceMaker
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.plugin import getPlugins
from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ctrader_twisted import messages as m
from ctrader_twisted.errors import OrderError
from ctrader_twisted.messages import OpenApiCommonMessages_pb2 as common
from ctrader_twisted.messages import OpenApiMessages_pb2 as oa
from ctrader_twisted.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from ctrader_twisted.sandbox.tap import Options, SandboxService, makeService
from ctrader_twisted.testing import MemorySandbox, tls_client

A = 5000001
ORDER_ACCEPTED = m.ProtoOAExecutionType.ORDER_ACCEPTED
reactor: IReactorCore = global_reactor  # type: ignore[assignment]


class MemoryClientTests(SynchronousTestCase):
    """ctrader_twisted.testing.MemorySandbox with the project's Client, no sockets."""

    def test_authorize_stream_trade(self) -> None:
        sandbox = MemorySandbox(SandboxConfig(seed=2))
        client = sandbox.client()
        client.startService()
        sandbox.result(client.when_ready())
        sandbox.result(client.authorize_account(A, DEFAULT_ACCESS_TOKEN))
        spots: list[oa.ProtoOASpotEvent] = []
        client.on(oa.ProtoOASpotEvent, spots.append)
        sandbox.result(client.subscribe_spots(A, [1]))
        sandbox.advance(5)
        self.assertGreaterEqual(len(spots), 2)
        order = oa.ProtoOANewOrderReq(
            ctidTraderAccountId=A, symbolId=1, orderType=1, tradeSide=1, volume=100_000
        )
        event = sandbox.result(client.request(order))
        self.assertEqual(event.executionType, ORDER_ACCEPTED)
        order.volume = 1
        with self.assertRaises(OrderError) as caught:
            sandbox.result(client.request(order))
        self.assertEqual(caught.exception.code, "TRADING_BAD_VOLUME")
        sandbox.result(client.stopService())
        sandbox.flush()
        self.assertEqual(sandbox.clock.getDelayedCalls(), [])

    def test_client_reconnects_after_drop(self) -> None:
        sandbox = MemorySandbox()
        client = sandbox.client()
        client.startService()
        sandbox.result(client.when_ready())
        sandbox.result(client.authorize_account(A, DEFAULT_ACCESS_TOKEN))
        sandbox.drop_all()
        sandbox.advance(5)
        self.assertTrue(client.is_ready)
        self.assertEqual(client.reconnect_count, 1)
        self.assertEqual(client.authorized_accounts, frozenset({A}))
        sandbox.result(client.stopService())


def _state_dir(case: TestCase) -> str:
    """A temporary folder for generated certificates, removed after the test."""
    path = tempfile.mkdtemp(prefix="ctrader-sandbox-test-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


async def _first(deferred: Deferred[Message], seconds: float) -> Message:
    deferred.addTimeout(seconds, reactor)  # type: ignore[arg-type]
    return await deferred


class TLSClientTests(TestCase):
    """The project's Client against a sandbox on a real loopback TLS port."""

    timeout = 30

    def setUp(self) -> Deferred[None]:
        config = SandboxConfig(tick_interval=0.05, always_open=True)

        def started(running: RunningSandbox) -> None:
            self.running = running
            self.addCleanup(running.stop)

        return start_sandbox(reactor, config, state_dir=_state_dir(self)).addCallback(started)  # type: ignore[arg-type]

    def test_client_end_to_end(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._client_end_to_end())

    async def _client_end_to_end(self) -> None:
        client = tls_client(self.running, reactor)  # type: ignore[arg-type]
        client.startService()
        try:
            await client.when_ready()
            await client.authorize_account(A, DEFAULT_ACCESS_TOKEN)
            spot: Deferred[Message] = Deferred()
            remove = client.on(oa.ProtoOASpotEvent, lambda e: spot.called or spot.callback(e))
            await client.subscribe_spots(A, [1])
            first = await _first(spot, 5)
            remove()
            self.assertEqual(first.symbolId, 1)  # type: ignore[attr-defined]
            order = oa.ProtoOANewOrderReq(
                ctidTraderAccountId=A, symbolId=1, orderType=1, tradeSide=2, volume=200_000
            )
            accepted = await client.request(order)
            self.assertEqual(accepted.executionType, ORDER_ACCEPTED)
            position_id = accepted.order.positionId or 0
            reconcile = await client.request(oa.ProtoOAReconcileReq(ctidTraderAccountId=A))
            (position,) = reconcile.position
            position_id = position.positionId
            close = oa.ProtoOAClosePositionReq(
                ctidTraderAccountId=A, positionId=position_id, volume=200_000
            )
            await client.request(close)
            reconcile = await client.request(oa.ProtoOAReconcileReq(ctidTraderAccountId=A))
            self.assertEqual(list(reconcile.position), [])
        finally:
            await client.stopService()
        self.assertGreaterEqual(self.running.factory.stats.connections_total, 1)


class StandardClient(Int32StringReceiver):
    """A client written the way the official SDKs work: ProtoMessage frames, nothing else."""

    MAX_LENGTH = 15_000_000

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[Deferred[Message], type[Message]]] = {}
        self.spots: list[oa.ProtoOASpotEvent] = []
        self.spot_waiter: Deferred[None] | None = None
        self.ids = itertools.count(1)
        self.connected_d: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    def ask(self, payload_type: int, message: Message, answer: type[Message]) -> Deferred[Message]:
        cmid = f"std-{next(self.ids)}"
        done: Deferred[Message] = Deferred()
        self.waiting[cmid] = (done, answer)
        frame = common.ProtoMessage(
            payloadType=payload_type, payload=message.SerializeToString(), clientMsgId=cmid
        )
        self.sendString(frame.SerializeToString())
        done.addTimeout(10, reactor)  # type: ignore[arg-type]
        return done

    def stringReceived(self, data: bytes) -> None:
        frame = common.ProtoMessage.FromString(data)
        if frame.payloadType == 2131:
            self.spots.append(oa.ProtoOASpotEvent.FromString(frame.payload))
            if self.spot_waiter is not None and len(self.spots) >= 3:
                waiter, self.spot_waiter = self.spot_waiter, None
                waiter.callback(None)
            return
        entry = self.waiting.get(frame.clientMsgId)
        if entry is None:
            return
        done, answer = entry
        if frame.payloadType in (50, 2142, 2132):
            del self.waiting[frame.clientMsgId]
            done.errback(RuntimeError(f"error frame {frame.payloadType}: {frame.payload!r}"))
        elif frame.payloadType == answer().payloadType:
            del self.waiting[frame.clientMsgId]
            done.callback(answer.FromString(frame.payload))


class StandardClientTests(TestCase):
    timeout = 30

    def setUp(self) -> Deferred[None]:
        config = SandboxConfig(tick_interval=0.05, always_open=True)

        def started(running: RunningSandbox) -> None:
            self.running = running
            self.addCleanup(running.stop)

        return start_sandbox(reactor, config, state_dir=_state_dir(self)).addCallback(started)  # type: ignore[arg-type]

    def test_standard_client(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._standard_client())

    async def _standard_client(self) -> None:
        endpoint = self.running.endpoint(reactor)  # type: ignore[arg-type]
        proto = await endpoint.connect(Factory.forProtocol(StandardClient))
        assert isinstance(proto, StandardClient)
        self.addCleanup(proto.transport.loseConnection)  # type: ignore[union-attr]
        await proto.connected_d
        await proto.ask(
            2100,
            oa.ProtoOAApplicationAuthReq(
                clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
            ),
            oa.ProtoOAApplicationAuthRes,
        )
        accounts = await proto.ask(
            2149,
            oa.ProtoOAGetAccountListByAccessTokenReq(accessToken=DEFAULT_ACCESS_TOKEN),
            oa.ProtoOAGetAccountListByAccessTokenRes,
        )
        account = accounts.ctidTraderAccount[0].ctidTraderAccountId  # type: ignore[attr-defined]
        auth = oa.ProtoOAAccountAuthReq(
            ctidTraderAccountId=account, accessToken=DEFAULT_ACCESS_TOKEN
        )
        await proto.ask(2102, auth, oa.ProtoOAAccountAuthRes)
        symbols = await proto.ask(
            2114, oa.ProtoOASymbolsListReq(ctidTraderAccountId=account), oa.ProtoOASymbolsListRes
        )
        eurusd = {s.symbolName: s.symbolId for s in symbols.symbol}["EURUSD"]  # type: ignore[attr-defined]
        proto.spot_waiter = Deferred()
        sub = oa.ProtoOASubscribeSpotsReq(ctidTraderAccountId=account, symbolId=[eurusd])
        await proto.ask(2127, sub, oa.ProtoOASubscribeSpotsRes)
        await proto.spot_waiter.addTimeout(10, reactor)  # type: ignore[arg-type]
        new = oa.ProtoOANewOrderReq(
            ctidTraderAccountId=account, symbolId=eurusd, orderType=1, tradeSide=1, volume=100_000
        )
        accepted = await proto.ask(2106, new, oa.ProtoOAExecutionEvent)
        self.assertEqual(accepted.executionType, ORDER_ACCEPTED)  # type: ignore[attr-defined]
        reconcile = await proto.ask(
            2124, oa.ProtoOAReconcileReq(ctidTraderAccountId=account), oa.ProtoOAReconcileRes
        )
        position = reconcile.position[0]  # type: ignore[attr-defined]
        close = oa.ProtoOAClosePositionReq(
            ctidTraderAccountId=account, positionId=position.positionId, volume=100_000
        )
        closing = await proto.ask(2111, close, oa.ProtoOAExecutionEvent)
        self.assertTrue(closing.order.closingOrder)  # type: ignore[attr-defined]
        await deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        self.assertTrue(proto.spots[0].HasField("bid") and proto.spots[0].HasField("ask"))


class PluginTests(TestCase):
    timeout = 60

    def test_twistd_lists_the_plugin(self) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        result = subprocess.run(  # noqa: S603
            [str(twistd), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        self.assertIn("ctrader-sandbox", result.stdout)

    def test_plugin_makes_a_service_from_options(self) -> None:
        (maker,) = [p for p in getPlugins(IServiceMaker) if p.tapname == "ctrader-sandbox"]
        options = maker.options()
        options.parseOptions(
            [
                "--seed",
                "9",
                "--client-id",
                "me",
                "--client-secret",
                "s3",
                "--access-token",
                "tok",
                "--tick-interval",
                "0.5",
                "--rate-limit-mode",
                "blocked",
                "--drop-after-messages",
                "7",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--always-open",
            ]
        )
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        assert isinstance(service, SandboxService)
        config = service.config
        self.assertEqual(
            (config.seed, config.client_id, config.client_secret, config.access_token),
            (9, "me", "s3", "tok"),
        )
        self.assertEqual((config.tick_interval, config.rate_limit_mode), (0.5, "blocked"))
        self.assertEqual((config.drop_after_messages, config.always_open), (7, True))
        self.assertFalse(service.running)

    def test_bad_options(self) -> None:
        options = Options()
        with self.assertRaises(Exception):
            options.parseOptions(["--rate-limit-mode", "nope"])

    def test_service_starts_and_answers(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._service_starts())

    async def _service_starts(self) -> None:
        options = Options()
        options.parseOptions(["--port", "0", "--state-dir", _state_dir(self), "--seed", "4"])
        out = io.StringIO()
        service = SandboxService(options, reactor, out)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        for _ in range(100):
            if service.listening is not None:
                break
            await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
        assert service.listening is not None
        assert service.ca_file is not None
        self.assertIn(str(service.ca_file), out.getvalue())
        self.assertIn(DEFAULT_CLIENT_SECRET, out.getvalue())
        port = service.listening.getHost().port  # type: ignore[attr-defined]
        running = RunningSandbox(
            "localhost", port, service.ca_file, service.factory, service.listening
        )
        proto = await running.endpoint(reactor).connect(Factory.forProtocol(StandardClient))  # type: ignore[arg-type]
        assert isinstance(proto, StandardClient)
        await proto.connected_d
        await proto.ask(
            2100,
            oa.ProtoOAApplicationAuthReq(
                clientId=DEFAULT_CLIENT_ID, clientSecret=DEFAULT_CLIENT_SECRET
            ),
            oa.ProtoOAApplicationAuthRes,
        )
        version = await proto.ask(2104, oa.ProtoOAVersionReq(), oa.ProtoOAVersionRes)
        self.assertTrue(version.version)  # type: ignore[attr-defined]
        proto.transport.loseConnection()  # type: ignore[union-attr]
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
