"""Client rate limits on a Clock: no delay under the limit, exact pacing over it (window plus
the safety margin), refused requests queued again first in line, bounded retries, trading
requests never sent twice."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ctrader_twisted import messages as m
from ctrader_twisted.client import DEFAULT_RATE_MARGIN
from ctrader_twisted.errors import RateLimited

from .fakeserver import FakeConnection
from .test_client import ClientTestCase, Harness

HISTORY = m.ProtoOAGetTrendbarsReq(
    ctidTraderAccountId=1, symbolId=1, period=1, fromTimestamp=0, toTimestamp=1
)
ORDER = m.ProtoOANewOrderReq(
    ctidTraderAccountId=1001, symbolId=1, orderType=1, tradeSide=1, volume=100000
)


class RateLimitTestCase(ClientTestCase):
    def fresh(self, **options: Any) -> Harness:
        """A ready client whose buckets are full again (the app auth spent a token)."""
        options.setdefault("heartbeat_interval", 0)
        options.setdefault("dead_link_timeout", 0)
        options.setdefault("reconnect_reset_after", 0)  # no backoff-reset timer to count
        h = self.ready(**options)
        h.advance(1.0 + options.get("rate_margin", DEFAULT_RATE_MARGIN))
        return h

    def count(self, h: Harness, name: str = "ProtoOAVersionReq") -> int:
        return h.server.names().count(name)


class PacingTests(RateLimitTestCase):
    def test_default_margin(self) -> None:
        self.assertEqual(DEFAULT_RATE_MARGIN, 0.05)

    def test_no_delay_under_the_limit(self) -> None:
        h = self.fresh(rate_limit=5)
        answers = [h.client.request(m.ProtoOAVersionReq()) for _ in range(5)]
        h.flush()  # moves bytes only: no clock advance
        self.assertEqual(self.count(h), 5)
        for answer in answers:
            self.successResultOf(answer)
        self.assertEqual(h.clock.getDelayedCalls(), [])  # no pacer, no send bounds

    def test_exact_pacing_with_the_margin(self) -> None:
        h = self.fresh(rate_limit=2)
        start = h.clock.seconds()
        answers = [h.client.request(m.ProtoOAVersionReq()) for _ in range(5)]
        h.flush()
        self.assertEqual(self.count(h), 2)
        # one pacer timer, plus the send bound of each of the 3 held requests
        self.assertEqual(len(h.clock.getDelayedCalls()), 4)
        h.advance(1.0)  # the server's window alone would allow more: the margin holds them
        self.assertEqual(self.count(h), 2)
        h.advance(0.049)
        self.assertEqual(self.count(h), 2)
        h.advance(0.001)
        self.assertEqual(self.count(h), 4)
        self.assertAlmostEqual(h.clock.seconds() - start, 1.05)
        h.advance(1.049)
        self.assertEqual(self.count(h), 4)
        h.advance(0.001)
        self.assertEqual(self.count(h), 5)
        for answer in answers:
            self.successResultOf(answer)

    def test_margin_zero_paces_at_the_window(self) -> None:
        h = self.fresh(rate_limit=2, rate_margin=0.0)
        for _ in range(3):
            h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(0.999)
        self.assertEqual(self.count(h), 2)
        h.advance(0.001)
        self.assertEqual(self.count(h), 3)

    def test_configured_margin(self) -> None:
        h = self.fresh(rate_limit=1, rate_margin=0.2)
        for _ in range(2):
            h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(1.199)
        self.assertEqual(self.count(h), 1)
        h.advance(0.001)
        self.assertEqual(self.count(h), 2)

    def test_late_answer_delays_the_next_slot(self) -> None:
        """The server may count a request as late as it answers it: its token comes back one
        window after the answer when that is later than the write plus the margin."""
        h = self.fresh(rate_limit=1)
        h.server.silent.add(m.ProtoOAVersionReq)
        first = h.client.request(m.ProtoOAVersionReq())
        second = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        cid = h.server.received[-1][0]
        h.advance(0.3)
        h.server.current.send(m.ProtoOAVersionRes(version="slow"), cid)
        h.flush()
        self.successResultOf(first)
        h.advance(1.0 - 0.001)  # 1.05 s after the write has passed, 1 s after the answer not
        self.assertEqual(self.count(h), 1)
        h.advance(0.001)
        self.assertEqual(self.count(h), 2)
        second.cancel()
        self.failureResultOf(second)

    def test_historical_bucket_is_separate(self) -> None:
        h = self.fresh(historical_rate_limit=1)
        h.server.silent.add(m.ProtoOAGetTrendbarsReq)
        first = h.client.request(HISTORY)
        second = h.client.request(HISTORY)
        version = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.successResultOf(version)
        self.assertEqual(self.count(h, "ProtoOAGetTrendbarsReq"), 1)
        h.advance(1.05)
        self.assertEqual(self.count(h, "ProtoOAGetTrendbarsReq"), 2)
        for d in (first, second):
            d.cancel()
            self.failureResultOf(d)

    def test_burst_over_both_limits(self) -> None:
        """12 ordinary and 3 historical at once, limits 5 and 1: three windows of pacing."""
        h = self.fresh(rate_limit=5, historical_rate_limit=1)
        h.server.handlers[m.ProtoOAGetTrendbarsReq] = lambda conn, cid, msg: conn.send(
            m.ProtoOAGetTrendbarsRes(ctidTraderAccountId=1, period=1), cid
        )
        answers = [h.client.request(m.ProtoOAVersionReq()) for _ in range(12)]
        answers += [h.client.request(HISTORY) for _ in range(3)]
        h.flush()
        seen = [(self.count(h), self.count(h, "ProtoOAGetTrendbarsReq"))]
        for _ in range(2):
            h.advance(1.05)
            seen.append((self.count(h), self.count(h, "ProtoOAGetTrendbarsReq")))
        self.assertEqual(seen, [(5, 1), (10, 2), (12, 3)])
        for answer in answers:
            self.successResultOf(answer)


class RefusalTests(RateLimitTestCase):
    def refuse(self, h: Harness, times: int, code: str = "REQUEST_FREQUENCY_EXCEEDED") -> list[str]:
        """Refuse the first ``times`` ProtoOAVersionReq; return the ids of every one seen."""
        seen: list[str] = []

        def handler(conn: FakeConnection, cid: str | None, message: Any) -> None:
            assert cid is not None
            seen.append(cid)
            if len(seen) <= times:
                conn.error(cid, code)
            else:
                conn.send(m.ProtoOAVersionRes(version=str(len(seen))), cid)

        h.server.handlers[m.ProtoOAVersionReq] = handler
        return seen

    def test_refused_request_is_queued_again_first_in_line(self) -> None:
        h = self.fresh(rate_limit=2)
        h.server.silent.add(m.ProtoOAAssetListReq)
        seen = self.refuse(h, 1)
        refused = h.client.request(m.ProtoOAVersionReq())
        first = h.client.request(m.ProtoOAAssetListReq(ctidTraderAccountId=1))
        later = h.client.request(m.ProtoOAAssetListReq(ctidTraderAccountId=2))
        h.flush()
        self.assertEqual(h.server.names(), ["ProtoOAVersionReq", "ProtoOAAssetListReq"])
        self.assertNoResult(refused)
        # Without retryAfter the lane waits one window and the margin, then the refused
        # request goes before the one that was already waiting.
        h.advance(1.049)
        self.assertEqual(len(h.server.names()), 2)
        h.advance(0.001)
        self.assertEqual(h.server.names()[2:], ["ProtoOAVersionReq", "ProtoOAAssetListReq"])
        self.assertEqual(self.successResultOf(refused).version, "2")
        self.assertEqual(len(set(seen)), 2)  # a fresh clientMsgId for the second attempt
        for d in (first, later):
            d.cancel()
            self.failureResultOf(d)

    def test_retry_after_holds_the_lane(self) -> None:
        h = self.fresh()
        calls: list[str | None] = []

        def blocked_once(conn: FakeConnection, cid: str | None, message: Any) -> None:
            calls.append(cid)
            if len(calls) == 1:
                conn.error(cid, "BLOCKED_PAYLOAD_TYPE", retryAfter=2)
            else:
                conn.send(m.ProtoOAVersionRes(version="91"), cid)

        h.server.handlers[m.ProtoOAVersionReq] = blocked_once
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        other = h.client.request(m.ProtoOAVersionReq())  # same lane: held as well
        h.flush()
        h.advance(1.999)
        self.assertNoResult(answer)
        self.assertNoResult(other)
        self.assertEqual(len(calls), 1)
        h.advance(0.001)
        self.successResultOf(answer)
        self.successResultOf(other)
        self.assertEqual(len(calls), 3)
        self.assertNotEqual(calls[0], calls[1])

    def test_retry_after_does_not_hold_the_other_lane(self) -> None:
        h = self.fresh()
        h.server.handlers[m.ProtoOAVersionReq] = lambda conn, cid, msg: conn.error(
            cid, "BLOCKED_PAYLOAD_TYPE", retryAfter=5
        )
        h.server.silent.add(m.ProtoOAGetTrendbarsReq)
        blocked = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        history = h.client.request(HISTORY)
        h.flush()
        self.assertEqual(self.count(h, "ProtoOAGetTrendbarsReq"), 1)
        for d in (blocked, history):
            d.cancel()
            self.failureResultOf(d)

    def test_retries_are_bounded(self) -> None:
        h = self.fresh(rate_limit_retries=2)
        seen = self.refuse(h, 10)
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(1.05)
        self.assertNoResult(answer)
        h.advance(1.05)
        error = self.failureResultOf(answer, RateLimited).value
        self.assertEqual(error.code, "REQUEST_FREQUENCY_EXCEEDED")
        self.assertEqual(len(seen), 3)
        h.advance(10.0)
        self.assertEqual(len(seen), 3)

    def test_no_retries_when_disabled(self) -> None:
        h = self.fresh(rate_limit_retries=0)
        self.refuse(h, 1, "BLOCKED_PAYLOAD_TYPE")
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        self.failureResultOf(answer, RateLimited)

    def test_trading_requests_are_never_retried(self) -> None:
        h = self.fresh()
        h.server.handlers[m.ProtoOANewOrderReq] = lambda conn, cid, msg: conn.error(
            cid, "REQUEST_FREQUENCY_EXCEEDED"
        )
        answer = h.client.request(ORDER)
        h.flush()
        self.failureResultOf(answer, RateLimited)
        h.advance(10.0)
        self.assertEqual(self.count(h, "ProtoOANewOrderReq"), 1)

    def test_requeued_request_keeps_its_send_bound(self) -> None:
        h = self.fresh(send_timeout=0.5)
        self.refuse(h, 1, "BLOCKED_PAYLOAD_TYPE")
        answer = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.advance(0.5)  # held for a window, longer than the send bound
        self.assertFalse(self.failureResultOf(answer).value.sent)
        h.advance(2.0)
        self.assertEqual(self.count(h), 1)

    def test_requeued_request_carried_over_a_reconnect(self) -> None:
        h = self.fresh()
        seen = self.refuse(h, 1)
        answer: Deferred[Any] = h.client.request(m.ProtoOAVersionReq())
        h.flush()
        h.drop()
        self.assertNoResult(answer)
        h.advance(1.0)  # reconnected (0.5 s backoff), restored: the new bucket is full
        self.assertEqual(len(seen), 2)
        self.assertEqual(self.successResultOf(answer).version, "2")
