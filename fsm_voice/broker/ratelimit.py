"""Per-key token buckets (pure: the clock is injected, nothing sleeps)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs

from fsm_voice.errors import ConfigError

__all__ = ["RateLimiter", "RatePolicy"]


def _positive(name: str) -> Callable[[object, attrs.Attribute[float], float], None]:
    def check(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError.invalid(name, value, "a positive number")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError.invalid(name, value, "a positive number")

    return check


@attrs.frozen
class RatePolicy:
    """A token bucket: bursts of at most ``capacity`` requests, refilled at
    ``refill_per_second`` tokens per second."""

    capacity: float = attrs.field(default=10.0, validator=_positive("capacity"))
    refill_per_second: float = attrs.field(default=1.0, validator=_positive("refill_per_second"))


@attrs.define
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per key. :meth:`acquire` takes a token or says how long to wait.

    ``clock`` is monotonic seconds. At most ``max_keys`` buckets are kept: the least recently
    used full ones are dropped first (a dropped bucket comes back full, which is what it was).
    """

    def __init__(
        self,
        policy: RatePolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if max_keys <= 0:
            raise ConfigError.invalid("max_keys", max_keys, "a positive int")
        self.policy = policy
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(
            self.policy.capacity, bucket.tokens + elapsed * self.policy.refill_per_second
        )
        bucket.updated = now

    def acquire(self, key: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens from ``key``'s bucket: None when allowed, else the seconds
        until enough tokens will be there (the request is refused, nothing is taken)."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.policy.capacity, now)
            self._evict(now)
        else:
            self._refill(bucket, now)
        self._buckets[key] = bucket  # most recently used last
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return None
        return (cost - bucket.tokens) / self.policy.refill_per_second

    def available(self, key: str) -> float:
        """Tokens in ``key``'s bucket now (a fresh key has ``capacity``)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.policy.capacity
        now = self._clock()
        elapsed = max(0.0, now - bucket.updated)
        return min(self.policy.capacity, bucket.tokens + elapsed * self.policy.refill_per_second)

    def _evict(self, now: float) -> None:
        if len(self._buckets) < self._max_keys:
            return
        for key in list(self._buckets):
            bucket = self._buckets[key]
            self._refill(bucket, now)
            if bucket.tokens >= self.policy.capacity:
                del self._buckets[key]
            if len(self._buckets) < self._max_keys:
                return
        while len(self._buckets) >= self._max_keys:  # all busy: drop the least recently used
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
