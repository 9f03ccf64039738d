"""How often, and how patiently, the reason stage calls a remote reasoner.

A :class:`RateLimiter` spaces call starts evenly so that a requests-per-minute quota is never
exceeded, whatever the number of threads; :func:`backoff_delay` is the wait before a retry:
exponential with full jitter, never shorter than the server's own retry hint up to the cap (a
server that asks for an hour does not hold the run for an hour). Both sleep on a
``threading.Event`` so that a run that is stopping wakes every waiting thread at once.
"""

from __future__ import annotations

import random
import threading
import time


class RateLimiter:
    """At most ``per_minute`` starts per minute (0: no limit), spaced evenly across threads."""

    def __init__(self, per_minute: float, clock=time.monotonic) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._next = clock()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> bool:
        """Block until this thread may start a call; False when ``stop`` was set meanwhile."""
        with self._lock:
            start = max(self._clock(), self._next)
            self._next = start + self.interval
        delay = start - self._clock()
        if delay > 0:
            return not stop.wait(delay)
        return not stop.is_set()


def backoff_delay(attempt: int, first: float, cap: float, hint: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1 for the first retry): a uniform draw from
    ``[0, min(cap, first * 2**(attempt-1))]`` ("full jitter", so that many clients rate-limited at
    once do not retry in step), raised to the server's ``hint`` when it asked for longer, and
    never past ``cap`` whatever the hint."""
    ceiling = min(cap, first * 2 ** (attempt - 1))
    delay = (rng or random).uniform(0, ceiling)
    return max(delay, min(hint or 0.0, cap))
