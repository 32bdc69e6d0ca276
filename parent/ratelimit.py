"""Per-client rate limiting: a sans-IO sliding-window counter. Side: parent.

No clock and no I/O here: the caller passes ``now`` (monotonic seconds), so tests are
exact. Each client key keeps two counters, the current fixed window and the previous
one; the estimate of requests in the sliding window ending now is::

    previous * (1 - elapsed / window) + current

(the "sliding window counter" approximation). It smooths the burst a plain fixed window
allows at its boundary (up to twice the limit) in O(1) memory per client, where an
exact sliding log would keep one timestamp per request.

Memory is bounded: entries idle for two windows carry no information and are evicted
as new requests arrive, and at most ``max_clients`` entries are kept (the least
recently seen is dropped first). Dropping a busy client's entry forgets its count,
which favours availability over strictness under a flood of distinct addresses; the
alternative, refusing every new client once full, would let that flood lock everyone
out.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]

# Float slack so that "wait exactly Retry-After seconds" is always enough: the estimate
# and the retry time are computed with different roundings of the same fraction.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The verdict on one request: allowed, or refused with a retry delay in whole seconds."""

    allowed: bool
    retry_after: int = 0


@dataclass(slots=True)
class _Entry:
    window_start: float
    current: int
    previous: int
    last_seen: float


class RateLimiter:
    """At most ``limit`` requests per ``window_seconds`` per key (sliding-window estimate)."""

    def __init__(self, *, limit: int, window_seconds: float, max_clients: int = 100_000) -> None:
        if limit < 1 or window_seconds <= 0 or max_clients < 1:
            raise ValueError("limit, window_seconds and max_clients must be positive")
        self._limit = limit
        self._window = window_seconds
        self._max_clients = max_clients
        # Ordered by last use: the front holds the least recently seen keys.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: str, *, now: float) -> Decision:
        """Count one request from ``key`` at ``now`` if it is within the limit."""
        self._evict_idle(now)
        entry = self._entries.get(key)
        if entry is None:
            while len(self._entries) >= self._max_clients:
                self._entries.popitem(last=False)
            entry = _Entry(
                window_start=self._window_start(now), current=0, previous=0, last_seen=now
            )
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
            self._roll(entry, now)
        entry.last_seen = now
        elapsed = (now - entry.window_start) / self._window
        estimate = entry.previous * (1 - elapsed) + entry.current
        if estimate + 1 <= self._limit + _EPSILON:
            entry.current += 1
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after=self._retry_after(entry, now))

    def _window_start(self, now: float) -> float:
        # Windows are aligned to multiples of the window length, shared by all keys.
        return math.floor(now / self._window) * self._window

    def _roll(self, entry: _Entry, now: float) -> None:
        start = self._window_start(now)
        if start == entry.window_start:
            return
        # The window just ended becomes "previous"; older counts no longer matter.
        entry.previous = entry.current if start - entry.window_start == self._window else 0
        entry.current = 0
        entry.window_start = start

    def _retry_after(self, entry: _Entry, now: float) -> int:
        """Whole seconds until one more request would be allowed (at least 1)."""
        # Allowed once previous * (1 - f) + current + 1 <= limit, f = elapsed fraction.
        if entry.previous > 0 and entry.current + 1 <= self._limit:
            # Still possible in this window, as the previous window's weight decays.
            fraction = 1 - (self._limit - entry.current - 1) / entry.previous
            wait = entry.window_start + fraction * self._window - now
        else:
            # Only the next window helps, where this window's count becomes "previous".
            fraction = max(0.0, 1 - (self._limit - 1) / entry.current) if entry.current else 0.0
            wait = entry.window_start + (1 + fraction) * self._window - now
        return max(1, math.ceil(wait - _EPSILON))

    def _evict_idle(self, now: float) -> None:
        # An entry unseen for two windows has previous = current = 0 from now on.
        horizon = now - 2 * self._window
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.last_seen > horizon:
                break
            del self._entries[key]
