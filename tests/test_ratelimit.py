"""The sans-IO per-client rate limiter: limits, Retry-After, sliding weight, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parent.ratelimit import RateLimiter


def test_allows_the_limit_then_refuses_with_retry_after() -> None:
    """Exactly `limit` requests pass in a fresh window; the next gets a Retry-After."""
    limiter = RateLimiter(limit=3, window_seconds=60)
    assert [limiter.check("1.2.3.4", now=0.0).allowed for _ in range(3)] == [True] * 3
    refused = limiter.check("1.2.3.4", now=10.0)
    assert not refused.allowed
    # At t=60 the 3 requests become "previous" with weight 1: one more only once
    # 3 * (1 - f) + 1 <= 3, i.e. f >= 1/3, 20 s into the next window: 70 s from t=10.
    assert refused.retry_after == 70


def test_retry_after_is_honest() -> None:
    """Waiting exactly Retry-After seconds is enough; a second earlier is not."""
    limiter = RateLimiter(limit=5, window_seconds=100)
    for _ in range(5):
        limiter.check("k", now=0.0)
    refused = limiter.check("k", now=7.0)
    assert not refused.allowed
    assert not limiter.check("k", now=7.0 + refused.retry_after - 1).allowed
    assert limiter.check("k", now=7.0 + refused.retry_after).allowed


def test_refused_requests_are_not_counted() -> None:
    """Hammering while limited does not push the client's reset further away."""
    limiter = RateLimiter(limit=2, window_seconds=10)
    limiter.check("k", now=0.0)
    limiter.check("k", now=0.0)
    first = limiter.check("k", now=1.0)
    for _ in range(50):
        limiter.check("k", now=1.0)
    assert limiter.check("k", now=1.0).retry_after == first.retry_after


def test_clients_are_limited_independently() -> None:
    """One client's burst does not limit another address."""
    limiter = RateLimiter(limit=1, window_seconds=60)
    assert limiter.check("10.0.0.1", now=0.0).allowed
    assert not limiter.check("10.0.0.1", now=0.0).allowed
    assert limiter.check("10.0.0.2", now=0.0).allowed


def test_previous_window_weighs_on_the_next() -> None:
    """A full window just before a boundary still counts right after it (no 2x burst)."""
    limiter = RateLimiter(limit=10, window_seconds=60)
    for _ in range(10):
        assert limiter.check("k", now=59.0).allowed
    # One second into the next window the previous 10 still weigh 10 * 59/60.
    assert not limiter.check("k", now=61.0).allowed
    # Half way through, half of them weigh: 5 more fit.
    assert [limiter.check("k", now=90.0).allowed for _ in range(6)] == [True] * 5 + [False]


def test_idle_clients_are_evicted() -> None:
    """Entries unseen for two windows are dropped as new requests arrive."""
    limiter = RateLimiter(limit=5, window_seconds=10)
    for index in range(100):
        limiter.check(f"10.0.0.{index}", now=0.0)
    assert len(limiter) == 100
    limiter.check("10.9.9.9", now=25.0)
    assert len(limiter) == 1


def test_memory_is_bounded_by_max_clients() -> None:
    """Past max_clients the least recently seen client is forgotten first."""
    limiter = RateLimiter(limit=1, window_seconds=60, max_clients=3)
    for key in ("a", "b", "c"):
        limiter.check(key, now=0.0)
    limiter.check("a", now=1.0)  # refused, but "a" is now the most recently seen
    limiter.check("d", now=2.0)
    assert len(limiter) == 3
    assert limiter.check("b", now=3.0).allowed  # "b" was evicted: its count is gone
    assert not limiter.check("a", now=3.0).allowed  # "a" was kept


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0, "window_seconds": 1},
        {"limit": 1, "window_seconds": 0},
        {"limit": 1, "window_seconds": 1, "max_clients": 0},
    ],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    """A limiter that could never allow (or never bound memory) cannot be built."""
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=200),
)
def test_never_more_than_twice_the_limit_in_any_window(limit: int, gaps: list[float]) -> None:
    """Whatever the arrival pattern, no window-long interval admits more than 2 x limit,
    and no aligned window admits more than limit."""
    window = 60.0
    limiter = RateLimiter(limit=limit, window_seconds=window)
    now, allowed = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.check("k", now=now).allowed:
            allowed.append(now)
    for start in allowed:
        assert sum(1 for t in allowed if start <= t < start + window) <= 2 * limit
    for start in {int(t // window) for t in allowed}:
        assert sum(1 for t in allowed if int(t // window) == start) <= limit
