"""The circuit breaker the Redis tier asks before every call (exact, on an injected clock)."""

from __future__ import annotations

from typing import Any

import pytest

from llamahome.cache.redis._circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown(clock: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=clock)
    assert breaker.state == CLOSED
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert breaker.state == OPEN and breaker.opened == 1
    assert breaker.allow() is False and breaker.rejected == 1
    clock.advance(4.999)
    assert breaker.allow() is False
    clock.advance(0.001)
    assert breaker.state == HALF_OPEN
    assert breaker.allow() is True  # the one trial
    assert breaker.allow() is False  # others wait for the trial's outcome
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.failures == 0
    assert all(breaker.allow() for _ in range(10))


def test_breaker_failed_trial_reopens_for_a_full_cooldown(clock: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    assert breaker.record_failure() is True
    clock.advance(2.0)
    assert breaker.allow() is True
    assert breaker.record_failure() is True
    assert breaker.state == OPEN and breaker.opened == 2
    clock.advance(1.9)
    assert breaker.allow() is False
    clock.advance(0.1)
    assert breaker.allow() is True


def test_breaker_success_resets_the_consecutive_count(clock: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED and breaker.failures == 2


def test_breaker_lets_a_new_trial_go_when_one_never_reported(clock: Any) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow() is True  # this trial's caller is cancelled and never reports back
    clock.advance(0.5)
    assert breaker.allow() is False
    clock.advance(0.5)
    assert breaker.allow() is True


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="zero or more"):
        CircuitBreaker(cooldown=-1)
