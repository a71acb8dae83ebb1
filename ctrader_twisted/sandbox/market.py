"""The deterministic price walk every sandbox price comes from.

Prices are a pure function of ``(seed, symbol, time)``, so any past (or future) range can be
generated on demand and always comes out the same:

* the mid price at the start of each minute is a sum of value-noise layers (per minute, 10 min,
  1 h, 8 h, 2 days, 2 weeks) around the symbol's centre price;
* each minute's one-minute bar is closed-form: it opens at that minute's anchor, closes at the
  next minute's anchor, and its high and low stretch past those by hashed excursions;
* each minute holds one tick per ``tick_interval`` slot; the ticks are generated from a
  per-minute seed so that they open, close and touch the high and low of the bar exactly.

So trendbars, tick data and live spots always agree.  Prices are integers in 1/100000 of a
price unit (the wire unit), rounded to the symbol's digits; they are bid prices, and the ask is
the bid plus a per-minute spread.
"""

from __future__ import annotations

import math
import random
from typing import Final, NamedTuple

from .catalogue import SymbolSpec, is_open

__all__ = ["MinuteBar", "PriceWalk", "mix64"]

_MASK: Final = (1 << 64) - 1
#: (length in minutes, relative amplitude) of each noise layer, for volatility 1.
_LAYERS: Final = (
    (10, 0.00035),
    (60, 0.0008),
    (480, 0.002),
    (2880, 0.005),
    (20160, 0.012),
)
_JITTER: Final = 0.00012
_EXCURSION: Final = 0.00015
_CACHE_LIMIT: Final = 4096
#: Least reach of a minute bar beyond its open and close, and least tick noise, in points.
_MIN_REACH: Final = 2
_MIN_NOISE: Final = 3.0
#: Minutes of ticks kept (at 1 ms ticks, about 2 MiB each).
_TICK_CACHE: Final = 64


def mix64(a: int, b: int, c: int, d: int) -> int:
    """Hash four integers to a well-mixed 64-bit integer (a splitmix64 finalizer)."""
    x = (a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + c * 0x165667B19E3779F9 + d) & _MASK
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def _signed_unit(x: int) -> float:
    """Map a 64-bit hash to [-1, 1)."""
    return (x >> 11) / float(1 << 52) - 1.0


class MinuteBar(NamedTuple):
    """One minute of bid prices (1/100000 units) and its tick count."""

    minute: int
    open: int
    high: int
    low: int
    close: int
    volume: int


class PriceWalk:
    """Prices of every symbol for a seed.

    :param seed: the walk's seed.
    :param tick_ms: spacing of ticks within a minute, in milliseconds (1..60000).
    :param always_open: ignore the symbols' trading hours.
    """

    def __init__(self, seed: int, tick_ms: int, *, always_open: bool = False) -> None:
        self.seed = seed
        self.tick_ms = max(1, min(60_000, tick_ms))
        #: Ticks per minute.
        self.slots = -(-60_000 // self.tick_ms)
        self.always_open = always_open
        self._noise: dict[tuple[int, int, int], float] = {}
        self._ticks: dict[tuple[int, int], _MinuteTicks] = {}
        #: symbol id -> the bar in progress of the minute last asked for.
        self._running: dict[int, _RunningBar] = {}

    # Time and schedule

    def is_open(self, spec: SymbolSpec, minute: int) -> bool:
        """Whether ``spec`` trades during ``minute`` (minutes since the epoch)."""
        return self.always_open or is_open(spec, minute * 60)

    def slot_time(self, minute: int, slot: int) -> int:
        """Timestamp (ms) of tick ``slot`` of ``minute``."""
        return minute * 60_000 + slot * self.tick_ms

    def slot_of(self, ms: int) -> tuple[int, int]:
        """The (minute, slot) of the tick in effect at ``ms``."""
        minute, offset = divmod(ms, 60_000)
        return minute, min(self.slots - 1, offset // self.tick_ms)

    # Prices

    def _layer(self, symbol_id: int, layer: int, index: int) -> float:
        key = (symbol_id, layer, index)
        value = self._noise.get(key)
        if value is None:
            if len(self._noise) > _CACHE_LIMIT * 8:
                self._noise.clear()
            value = _signed_unit(mix64(self.seed, symbol_id, layer, index))
            self._noise[key] = value
        return value

    def anchor(self, spec: SymbolSpec, minute: int) -> int:
        """Bid at the start of ``minute``, rounded to the symbol's point."""
        return self.anchors(spec, minute, 1)[0]

    def anchors(self, spec: SymbolSpec, first: int, count: int) -> list[int]:
        """Bids at the start of ``count`` consecutive minutes from ``first``."""
        seed, sid = self.seed, spec.symbol_id
        end = first + count
        rel = [_JITTER * _signed_unit(mix64(seed, sid, 0, m)) for m in range(first, end)]
        for layer, (length, amplitude) in enumerate(_LAYERS, start=1):
            minute = first
            while minute < end:
                index = minute // length
                left = self._layer(sid, layer, index)
                diff = self._layer(sid, layer, index + 1) - left
                base = index * length
                stop = min(end, base + length)
                for m in range(minute, stop):
                    frac = (m - base) / length
                    rel[m - first] += amplitude * (left + diff * frac * frac * (3.0 - 2.0 * frac))
                minute = stop
        scale, vol, point = spec.price * 100_000 / spec.point, spec.volatility, spec.point
        return [max(1, round(scale * math.exp(vol * r))) * point for r in rel]

    def spread(self, spec: SymbolSpec, minute: int) -> int:
        """Ask minus bid during ``minute``, in 1/100000 units."""
        widen = mix64(self.seed, spec.symbol_id, 1000, minute) % 4
        return (spec.spread + spec.spread * widen // 8) * spec.point

    def minute_bar(self, spec: SymbolSpec, minute: int) -> MinuteBar:
        """The complete one-minute bid bar of ``minute`` (whether or not the market is open)."""
        return self.bar_between(
            spec, minute, self.anchor(spec, minute), self.anchor(spec, minute + 1)
        )

    def bar_between(self, spec: SymbolSpec, minute: int, open_: int, close: int) -> MinuteBar:
        """The bar of ``minute`` given its two anchors (for callers walking many minutes)."""
        high, low = max(open_, close), min(open_, close)
        if self.slots >= 4:
            x = mix64(self.seed, spec.symbol_id, 2000, minute)
            reach = spec.price * 100_000 * _EXCURSION * spec.volatility
            point = spec.point
            # At least _MIN_REACH points either side: a minute never trades at one price.
            high += (_MIN_REACH + int(reach * ((x & 0xFFFF) / 65536.0) ** 2 / point)) * point
            low -= (_MIN_REACH + int(reach * (((x >> 16) & 0xFFFF) / 65536.0) ** 2 / point)) * point
            low = max(point, low)
        return MinuteBar(minute, open_, high, low, close, self.slots)

    def minute_ticks(self, spec: SymbolSpec, minute: int) -> list[int]:
        """The bid of every tick slot of ``minute``; cached for recent minutes."""
        return self._minute(spec, minute).upto(self.slots - 1)

    def tick(self, spec: SymbolSpec, minute: int, slot: int) -> int:
        """The bid of tick ``slot`` of ``minute`` (only the slots up to it are generated)."""
        return self._minute(spec, minute).upto(slot)[slot]

    def _minute(self, spec: SymbolSpec, minute: int) -> _MinuteTicks:
        """The (partly generated) ticks of ``minute``, most recently used kept longest."""
        key = (spec.symbol_id, minute)
        cache = self._ticks
        ticks = cache.pop(key, None)
        if ticks is None:
            if len(cache) >= _TICK_CACHE:
                del cache[next(iter(cache))]
            ticks = _MinuteTicks(self.seed, spec, self.minute_bar(spec, minute))
        cache[key] = ticks
        return ticks

    def partial_bar(self, spec: SymbolSpec, minute: int, upto_slot: int) -> MinuteBar:
        """The bar of ``minute`` made of its ticks up to and including ``upto_slot``.

        The bar in progress is kept per symbol and extended by the ticks since the last call,
        so following the clock costs O(1) per tick however many slots a minute has.
        """
        if upto_slot >= self.slots - 1:
            return self.minute_bar(spec, minute)
        upto_slot = max(0, upto_slot)
        ticks = self._minute(spec, minute).upto(upto_slot)
        running = self._running.get(spec.symbol_id)
        if running is None or running.minute != minute or running.slot > upto_slot:
            first = ticks[0]
            fresh = _RunningBar(minute, 0, first, first, first)
            if running is None or running.minute != minute:
                self._running[spec.symbol_id] = fresh
            running = fresh  # (an earlier slot than the one followed: computed on its own)
        if running.slot < upto_slot:
            later = ticks[running.slot + 1 : upto_slot + 1]
            running.high = max(running.high, max(later))
            running.low = min(running.low, min(later))
            running.slot = upto_slot
        return MinuteBar(
            minute, running.open, running.high, running.low, ticks[upto_slot], upto_slot + 1
        )

    def last_open_minute(self, spec: SymbolSpec, minute: int, limit: int = 20_160) -> int:
        """The latest minute at or before ``minute`` when ``spec`` traded (``minute`` itself
        if nothing is found within ``limit`` minutes)."""
        for back in range(limit):
            if self.is_open(spec, minute - back):
                return minute - back
        return minute

    def quote_at(self, spec: SymbolSpec, ms: int) -> tuple[int, int]:
        """(bid, ask) in effect at ``ms``; the last traded prices while the market is closed."""
        minute, slot = self.slot_of(ms)
        if not self.is_open(spec, minute):
            minute = self.last_open_minute(spec, minute)
            slot = self.slots - 1
        bid = self.tick(spec, minute, slot)
        return bid, bid + self.spread(spec, minute)


class _RunningBar:
    """The bar in progress of one symbol's minute, up to and including tick ``slot``."""

    __slots__ = ("high", "low", "minute", "open", "slot")

    def __init__(self, minute: int, slot: int, open_: int, high: int, low: int) -> None:
        self.minute = minute
        self.slot = slot
        self.open = open_
        self.high = high
        self.low = low


class _MinuteTicks:
    """The ticks of one minute, generated in slot order only as far as they are asked for.

    The random draws are taken in slot order, so generating the minute piece by piece gives
    exactly the ticks of generating it at once; a live feed pays for each tick as the clock
    reaches it instead of for the whole minute at its first tick.  The ticks open, close and
    touch the high and low of the bar exactly.
    """

    __slots__ = ("_bar", "_noise", "_point", "_points", "_rng", "_segment", "ticks")

    def __init__(self, seed: int, spec: SymbolSpec, bar: MinuteBar) -> None:
        n = bar.volume
        rng = random.Random(mix64(seed, spec.symbol_id, 3000, bar.minute))
        keys = {0: bar.open, n - 1: bar.close}
        if n >= 4:
            high_at, low_at = rng.sample(range(1, n - 1), 2)
            keys[high_at] = bar.high
            keys[low_at] = bar.low
        self._rng = rng
        self._bar = bar
        self._points = sorted(keys.items())
        self._point = spec.point
        # Enough noise that consecutive ticks usually differ by a point or more, as a liquid
        # market's quotes do (only changed prices become spot events).
        self._noise = max((bar.high - bar.low) / 4.0, _MIN_NOISE * spec.point)
        self._segment = 0
        #: The ticks generated so far, from slot 0.
        self.ticks: list[int] = []

    def upto(self, slot: int) -> list[int]:
        """The ticks, generated at least up to ``slot`` (or to the end of the minute)."""
        ticks, bar = self.ticks, self._bar
        slot = min(slot, bar.volume - 1)
        points, last = self._points, len(self._points) - 1
        while len(ticks) <= slot:
            if self._segment >= last:
                ticks.append(bar.close)  # the minute's last slot
                continue
            (i0, p0), (i1, p1) = points[self._segment], points[self._segment + 1]
            if len(ticks) == i0:
                ticks.append(p0)
            stop = min(i1, slot + 1)
            if len(ticks) < stop:
                ticks.extend(self._between(len(ticks), stop, i0, p0, i1, p1))
            if len(ticks) == i1:
                self._segment += 1
        return ticks

    def _between(self, begin: int, end: int, i0: int, p0: int, i1: int, p1: int) -> list[int]:
        """Ticks ``begin..end-1`` of the stretch from key point ``(i0, p0)`` to ``(i1, p1)``."""
        random_ = self._rng.random
        noise, point, span = self._noise, self._point, i1 - i0
        high, low, rise = self._bar.high, self._bar.low, p1 - p0
        out = []
        for i in range(begin, end):
            price = round((p0 + rise * (i - i0) / span + noise * (random_() - 0.5)) / point) * point
            out.append(min(high, max(low, price)))
        return out
