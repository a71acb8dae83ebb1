"""The client's token bucket and lanes, without a client: timing rules and queue order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted._ratelimit import Lane, RateLimiter


class RateLimiterTests(SynchronousTestCase):
    def test_free_under_the_limit(self) -> None:
        limiter = RateLimiter(3, 1.0, 0.05)
        self.assertTrue(all(limiter.try_acquire(10.0) for _ in range(3)))
        self.assertFalse(limiter.try_acquire(10.0))

    def test_token_returns_after_window_and_margin(self) -> None:
        limiter = RateLimiter(1, 1.0, 0.05)
        self.assertTrue(limiter.try_acquire(0.0))
        self.assertAlmostEqual(limiter.next_free(0.0), 1.05, places=5)
        self.assertFalse(limiter.try_acquire(1.0))
        self.assertFalse(limiter.try_acquire(1.049))
        self.assertTrue(limiter.try_acquire(limiter.next_free(0.0)))

    def test_late_answer_moves_the_token_return(self) -> None:
        limiter = RateLimiter(1, 1.0, 0.05)
        slot = limiter.try_acquire(0.0)
        assert slot is not None
        slot.answered(0.01)  # answered within the margin: no change
        self.assertAlmostEqual(limiter.next_free(0.0), 1.05, places=5)
        slot.answered(0.3)  # the server was slow: it may have counted the request at 0.3
        self.assertAlmostEqual(limiter.next_free(0.0), 1.3, places=5)
        self.assertIsNone(limiter.try_acquire(1.2))
        self.assertIsNotNone(limiter.try_acquire(1.3))

    def test_next_free_is_now_when_a_token_is_free(self) -> None:
        limiter = RateLimiter(2, 1.0, 0.05)
        limiter.try_acquire(0.0)
        self.assertEqual(limiter.next_free(0.5), 0.5)

    def test_unlimited(self) -> None:
        limiter = RateLimiter(0)
        self.assertTrue(all(limiter.try_acquire(0.0) for _ in range(1000)))
        self.assertEqual(limiter.next_free(3.0), 3.0)

    def test_hold(self) -> None:
        limiter = RateLimiter(5, 1.0, 0.05)
        limiter.hold(2.0)
        self.assertFalse(limiter.try_acquire(1.9))
        self.assertAlmostEqual(limiter.next_free(1.0), 2.0, places=5)
        limiter.hold(1.5)  # a shorter hold does not shorten the current one
        self.assertFalse(limiter.try_acquire(1.9))
        self.assertTrue(limiter.try_acquire(2.0))

    def test_hold_and_full_bucket_wait_for_the_later(self) -> None:
        limiter = RateLimiter(1, 1.0, 0.0)
        limiter.try_acquire(0.0)
        limiter.hold(0.5)
        self.assertAlmostEqual(limiter.next_free(0.0), 1.0, places=5)
        limiter.hold(3.0)
        self.assertAlmostEqual(limiter.next_free(0.0), 3.0, places=5)

    def test_reset(self) -> None:
        limiter = RateLimiter(1, 1.0, 0.05)
        limiter.try_acquire(0.0)
        limiter.hold(9.0)
        limiter.reset()
        self.assertTrue(limiter.try_acquire(0.1))


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    margin=st.sampled_from([0.0, 0.02, 0.05]),
    gaps=st.lists(st.floats(0.0, 0.7, allow_nan=False), min_size=1, max_size=60),
)
def test_never_more_than_limit_in_a_window_plus_margin(
    limit: int, margin: float, gaps: list[float]
) -> None:
    """Acquire at next_free() after each gap; no ``window + margin`` interval ever holds more
    than ``limit`` acquisitions, and each waits no longer than it must."""
    limiter = RateLimiter(limit, 1.0, margin)
    now = 0.0
    granted: list[float] = []
    for gap in gaps:
        now = limiter.next_free(now + gap)
        assert limiter.try_acquire(now)
        granted.append(now)
    for index in range(limit, len(granted)):
        assert granted[index] - granted[index - limit] >= 1.0 + margin - 1e-6
        if granted[index] > granted[index - 1] + gaps[index]:  # it waited: exactly its slot
            assert abs(granted[index] - (granted[index - limit] + 1.0 + margin)) < 1e-6


class LaneTests(SynchronousTestCase):
    def test_requeued_items_go_first_in_their_order(self) -> None:
        lane: Lane[str] = Lane(RateLimiter(1))
        for item in ("c", "d"):
            lane.append(item)
        lane.requeue("a")
        lane.requeue("b")
        self.assertEqual(list(lane), ["a", "b", "c", "d"])
        self.assertEqual(len(lane), 4)
        self.assertEqual([lane.popleft() for _ in range(4)], ["a", "b", "c", "d"])
        self.assertFalse(lane)
        self.assertRaises(IndexError, lane.popleft)

    def test_remove_and_clear(self) -> None:
        lane: Lane[str] = Lane(RateLimiter(1))
        lane.append("x")
        lane.requeue("y")
        self.assertTrue(lane.remove("y"))
        self.assertFalse(lane.remove("y"))
        lane.append("z")
        self.assertEqual(lane.clear(), ["x", "z"])
        self.assertEqual(len(lane), 0)
