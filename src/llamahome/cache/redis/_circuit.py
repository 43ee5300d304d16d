"""A circuit breaker: stop calling a backend that keeps failing, and probe it again after a cooldown.

The network tier asks :meth:`CircuitBreaker.allow` before every call to Redis. While the breaker is *closed*
every call goes through; after ``failure_threshold`` consecutive failures it *opens* and refuses calls
(the tier answers with a miss at once instead of waiting out another timeout); once ``cooldown`` seconds
have passed it lets one trial call through (*half-open*): success closes it, failure opens it again for
another cooldown. The clock is injectable so tests are exact.

    breaker = CircuitBreaker(failure_threshold=5, cooldown=5.0)
    if breaker.allow():
        try:
            call()
        except ConnectionError:
            breaker.record_failure()
        else:
            breaker.record_success()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """Counts consecutive failures and refuses calls for ``cooldown`` seconds once there are too many.

    Thread-safe; nothing in it blocks or sleeps, so async code may share it too.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1; use 1 to open on the first failure.")
        if cooldown < 0:
            raise ValueError("cooldown must be zero or more seconds.")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._trial_started = 0.0
        #: How many times the breaker opened, and how many calls it refused (for stats and logs).
        self.opened = 0
        self.rejected = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (an open breaker whose cooldown has passed)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    def allow(self) -> bool:
        """True if a call may go to the backend now; an open breaker lets one trial through after the cooldown."""
        if self._state == CLOSED:  # the hot path takes no lock; a stale read only lets one extra call through
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            now = self._clock()
            # A trial whose outcome never came back (the caller was cancelled, say) must not keep the breaker
            # open for good: after another cooldown a new trial may go.
            trial_lost = self._trial_in_flight and now - self._trial_started >= self.cooldown
            if now - self._opened_at >= self.cooldown and (not self._trial_in_flight or trial_lost):
                self._state = HALF_OPEN
                self._trial_in_flight = True
                self._trial_started = now
                return True
            self.rejected += 1
            return False

    def record_success(self) -> bool:
        """A call went through: close the breaker and forget past failures; True if it was open until now."""
        if self._state == CLOSED and self._failures == 0:
            return False
        with self._lock:
            was_open = self._state != CLOSED
            self._state = CLOSED
            self._failures = 0
            self._trial_in_flight = False
            return was_open

    def record_failure(self) -> bool:
        """A call failed; returns True if this failure opened the breaker."""
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                self._state = OPEN
                self._opened_at = self._clock()
                self.opened += 1
                return True
            if self._state == OPEN:
                # a call that was let through before the breaker opened failed late: restart the cooldown
                self._opened_at = self._clock()
            return False

    def reset(self) -> None:
        """Close the breaker by hand (after the operator fixed Redis, say)."""
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures}, opened={self.opened})"
