"""A token bucket per channel, on the injected clock, so a large breach does not get the
sender blocked by its relay or provider.

The bucket never reads the wall clock and never sleeps by itself: it asks ``clock.now()`` and
calls the ``sleep`` it was given for exactly the time the next token needs. Tests pass a sleep
that advances a FakeClock and records what was asked; the daemon passes ``time.sleep``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from breachwatch.clock import Clock

_RESOLUTION = 1e-6  # datetimes carry microseconds: never ask for less than one


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    def __init__(
        self, rate: float, burst: int, clock: Clock, sleep: Callable[[float], None]
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock.now().timestamp()
        self._lock = threading.Lock()
        self.waited = 0.0  # total seconds of sleep requested, for progress and tests
        self.acquired = 0

    def _refill(self) -> None:
        now = self._clock.now().timestamp()
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def try_acquire(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - 1e-9:
                self._tokens = max(self._tokens - 1.0, 0.0)
                self.acquired += 1
                return True
            return False

    def wait_time(self) -> float:
        """Seconds until the next token, rounded up to the clock's resolution."""
        with self._lock:
            self._refill()
            missing = max(1.0 - self._tokens, 0.0)
        if missing <= 1e-9:
            return 0.0
        return math.ceil(missing / self.rate / _RESOLUTION) * _RESOLUTION

    def acquire(self) -> float:
        """Take one token, sleeping (through the given sleep) until there is one.
        Returns the seconds slept."""
        slept = 0.0
        while not self.try_acquire():
            delay = max(self.wait_time(), _RESOLUTION)
            self._sleep(delay)
            slept += delay
        self.waited += slept
        return slept

    def eta(self, pending: int) -> float:
        """Seconds the ``pending`` messages need at this rate (ignoring saved tokens)."""
        return pending / self.rate
