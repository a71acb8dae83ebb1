"""The sandbox's price walk moves like a liquid market: quotes change most ticks and never
stand still for long (only changed prices become spot events, so a flat walk is a silent
stream), and every tick stays inside its minute's bar."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ctrader_twisted.sandbox.catalogue import SYMBOLS_BY_NAME
from ctrader_twisted.sandbox.market import PriceWalk

START = 29_000_000  # a minute in 2025
MINUTES = 240


class WalkLivelinessTests(SynchronousTestCase):
    def test_quotes_keep_moving(self) -> None:
        for seed in (1, 2, 9):
            walk = PriceWalk(seed, 1000, always_open=True)
            for name in ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD"):
                spec = SYMBOLS_BY_NAME[name]
                longest = run = changes = 0
                previous: tuple[int, int] | None = None
                for minute in range(START, START + MINUTES):
                    spread = walk.spread(spec, minute)
                    for bid in walk.minute_ticks(spec, minute):
                        quote = (bid, bid + spread)
                        run = run + 1 if quote == previous else 0
                        changes += quote != previous
                        longest = max(longest, run)
                        previous = quote
                where = f"{name} seed {seed}"
                self.assertLess(longest, 20, f"{where}: {longest} s without a price change")
                self.assertGreater(changes / (MINUTES * 60), 0.6, where)

    def test_ticks_stay_inside_their_bar(self) -> None:
        walk = PriceWalk(4, 250, always_open=True)
        spec = SYMBOLS_BY_NAME["EURUSD"]
        for minute in range(START, START + 60):
            bar = walk.minute_bar(spec, minute)
            ticks = walk.minute_ticks(spec, minute)
            self.assertEqual((ticks[0], ticks[-1]), (bar.open, bar.close))
            self.assertEqual((max(ticks), min(ticks)), (bar.high, bar.low))
            self.assertGreater(bar.high, bar.low)
