"""Per-key token buckets (pure: the clock is injected, nothing sleeps), fair upstream slots
(:class:`FairSlots`), and the rate-limit storage port (:class:`LimitStore`) with its in-process
implementation (:class:`MemoryLimits`; the Redis one is :mod:`fsm_voice.broker.redis_limits`)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import attrs

from fsm_voice.errors import ConfigError

__all__ = [
    "FairSlots",
    "LimitStore",
    "LimitsUnavailable",
    "MemoryLimits",
    "RateLimiter",
    "RatePolicy",
]


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


class FairSlots:
    """``total`` slots shared fairly by keys (clients): a key holds at most ``per_key`` at once,
    and a freed slot goes to the waiting key holding the fewest (ties: the longest waiting), so
    one client's burst cannot queue ahead of everyone else (first come, first served would).

    ``async with slots.hold(key):`` or :meth:`acquire` / :meth:`release`. A cancelled waiter
    (e.g. by a queue timeout) leaves nothing behind.
    """

    def __init__(self, total: int, per_key: int | None = None) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ConfigError.invalid("total", total, "a positive int")
        per = total if per_key is None else per_key
        if isinstance(per, bool) or not isinstance(per, int) or not 0 < per <= total:
            raise ConfigError.invalid("per_key", per_key, f"an int in [1, {total}]")
        self.total = total
        self.per_key = per
        self._free = total
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()

    def held(self, key: str) -> int:
        """Slots ``key`` holds now."""
        return self._held.get(key, 0)

    @property
    def free(self) -> int:
        return self._free

    def waiting(self, key: str | None = None) -> int:
        """Waiters of ``key`` (or of every key)."""
        if key is not None:
            return len(self._waiting.get(key, ()))
        return sum(len(q) for q in self._waiting.values())

    def _grant(self, key: str) -> None:
        self._free -= 1
        self._held[key] = self._held.get(key, 0) + 1

    async def acquire(self, key: str) -> None:
        # A free slot with waiters means every waiter is at its per-key cap.
        if self._free > 0 and self.held(key) < self.per_key:
            self._grant(key)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._seq), fut)
        self._waiting.setdefault(key, deque()).append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(key)  # granted, but the waiter was cancelled before it resumed
            else:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.remove(entry)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self, key: str) -> None:
        count = self._held.get(key, 0)
        if count <= 0:
            raise RuntimeError(f"release() without acquire() for {key!r}")
        if count == 1:
            del self._held[key]
        else:
            self._held[key] = count - 1
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self._free > 0:
            eligible = [k for k in self._waiting if self.held(k) < self.per_key]
            if not eligible:
                return
            key = min(eligible, key=lambda k: (self.held(k), self._waiting[k][0][0]))
            queue = self._waiting[key]
            _, fut = queue.popleft()
            if not queue:
                del self._waiting[key]
            self._grant(key)
            fut.set_result(None)


class LimitsUnavailable(Exception):
    """The rate-limit store cannot answer (e.g. Redis unreachable). The broker fails closed on
    it (503 + ``Retry-After``) unless configured to fail open. ``reason``: ``"unavailable"``,
    or ``"authentication"`` when the store refused the broker's credentials."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class LimitStore(Protocol):
    """Where the broker keeps its limits: named token buckets (``name`` picks the family, e.g.
    ``"client"``, ``key`` the bucket in it) and per-client concurrent-session leases. Every
    method may raise :class:`LimitsUnavailable`."""

    @property
    def description(self) -> str:
        """Where the limits live, for logs (no secrets)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(
        self, name: str, key: str, policy: RatePolicy, cost: float = 1.0
    ) -> float | None:
        """Take ``cost`` tokens: None when allowed, else the seconds to wait (nothing taken)."""
        ...

    async def hold_session(self, client: str, lease: str, limit: int, ttl: float) -> bool:
        """Take (or renew) the session lease ``lease`` of ``client`` for ``ttl`` seconds if it
        holds fewer than ``limit`` live leases (a renewal always succeeds); False when full."""
        ...

    async def release_session(self, client: str, lease: str) -> None:
        """Give back a lease (unknown leases are ignored)."""
        ...

    async def sessions(self, client: str) -> int:
        """Live leases of ``client``."""
        ...


class MemoryLimits:
    """:class:`LimitStore` in this process (the default: one broker process). Nothing here is
    shared with another process."""

    description = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[tuple[str, RatePolicy], RateLimiter] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def limiter(self, name: str, policy: RatePolicy) -> RateLimiter:
        """The bucket family ``name`` under ``policy`` (created on first use)."""
        limiter = self._buckets.get((name, policy))
        if limiter is None:
            limiter = RateLimiter(policy, clock=self._clock, max_keys=self._max_keys)
            self._buckets[(name, policy)] = limiter
        return limiter

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(
        self, name: str, key: str, policy: RatePolicy, cost: float = 1.0
    ) -> float | None:
        return self.limiter(name, policy).acquire(key, cost)

    def _live(self, client: str) -> dict[str, float]:
        now = self._clock()
        leases = self._leases.get(client, {})
        live = {lease: until for lease, until in leases.items() if until > now}
        if live:
            self._leases[client] = live
        else:
            self._leases.pop(client, None)
        return live

    async def hold_session(self, client: str, lease: str, limit: int, ttl: float) -> bool:
        live = self._live(client)
        if lease not in live and len(live) >= limit:
            return False
        self._leases.setdefault(client, {})[lease] = self._clock() + ttl
        return True

    async def release_session(self, client: str, lease: str) -> None:
        self._live(client).pop(lease, None)
        if not self._leases.get(client):
            self._leases.pop(client, None)

    async def sessions(self, client: str) -> int:
        return len(self._live(client))

    async def __aenter__(self) -> MemoryLimits:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
