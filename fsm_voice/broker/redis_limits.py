"""Rate limits shared by every broker replica, in Redis (redis-py's asyncio client).

Each decision is one atomic Lua script on the server, timed by the server's clock (``TIME``), so
replicas on different machines share one bucket and one clock:

* token buckets: a hash ``{prefix}tb:{name}:{key}`` with the tokens and when they were counted,
  refilled and charged in the script (the same arithmetic as
  :class:`~fsm_voice.broker.ratelimit.RateLimiter`), expiring once it would be full again;
* concurrent sessions: a sorted set ``{prefix}sess:{client}`` of leases scored by expiry; the
  script drops expired leases and adds one only below the limit (a crashed replica's leases
  expire after their ``ttl``).

Any Redis failure (unreachable, timeout, error reply) raises
:class:`~fsm_voice.broker.ratelimit.LimitsUnavailable`; the broker turns that into a 503 unless
it was configured to fail open. Socket timeouts are short so a dead server is noticed quickly.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from fsm_voice.errors import ConfigError

from .ratelimit import LimitsUnavailable, RatePolicy

__all__ = ["RedisLimits"]

_BUCKET: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
    tokens = capacity
    ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = -1
if tokens >= cost then
    tokens = tokens - cost
else
    wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""

_HOLD: Final = """
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
        and redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + ttl), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) * 1000) + 1000)
return 1
"""

_COUNT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
return redis.call('ZCARD', KEYS[1])
"""


def _unavailable(exc: Exception) -> LimitsUnavailable:
    """A Redis failure as :class:`LimitsUnavailable`; a refused password says so."""
    from redis.exceptions import AuthenticationError

    text = str(exc)
    if isinstance(exc, AuthenticationError) or any(
        m in text for m in ("WRONGPASS", "NOAUTH", "invalid username-password", "Authentication")
    ):
        return LimitsUnavailable(
            "Redis refused authentication (check the password in --redis-password-env)",
            reason="authentication",
        )
    return LimitsUnavailable(f"Redis unavailable ({type(exc).__name__})")


def _check_url(url: str) -> str:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL without a password (pass that through
    ``password``, read from the environment: a URL ends up in logs and process lists)."""
    if not isinstance(url, str):
        raise ConfigError.invalid("redis_url", url, "a redis://, rediss:// or unix:// URL")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError.invalid("redis_url", url, "a redis://, rediss:// or unix:// URL")
    if parts.password is not None or "password=" in parts.query:
        raise ConfigError.invalid(
            "redis_url", "<redacted>", "a URL without a password (pass it separately)"
        )
    return url


class RedisLimits:
    """:class:`~fsm_voice.broker.ratelimit.LimitStore` in Redis at ``url``.

    ``prefix`` namespaces the keys (several brokers may share a server); ``timeout`` bounds each
    command and connection attempt (seconds).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        prefix: str = "fsm-voice:broker:",
        timeout: float = 0.5,
    ) -> None:
        self.url = _check_url(url)
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError.invalid("redis timeout", timeout, "a positive number of seconds")
        self.prefix = prefix
        self.timeout = float(timeout)
        self._password = password
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    @property
    def description(self) -> str:
        return f"redis {self.url}"

    def __repr__(self) -> str:
        return f"RedisLimits({self.url!r})"

    async def open(self) -> None:
        """Make the client; it connects on first use (the broker may start while Redis is
        down: requests fail closed until it is back)."""
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                "Redis rate limits need the 'redis' package: pip install 'fsm-voice[broker-scale]'"
            ) from None
        if self._client is not None:
            raise RuntimeError("RedisLimits already open")
        client = aioredis.Redis.from_url(
            self.url,
            password=self._password,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # one immediate retry on a broken connection (a pooled one from before a Redis
            # restart); no backoff and no retry on timeouts: an outage must answer 503 at once
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
        )
        self._scripts = {
            "bucket": client.register_script(_BUCKET),
            "hold": client.register_script(_HOLD),
            "count": client.register_script(_COUNT),
        }
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts = {}
        if client is not None:
            await client.aclose()

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if self._client is None:
            raise LimitsUnavailable("Redis rate limits are not open")
        from redis.exceptions import RedisError

        try:
            return await self._scripts[script](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def acquire(
        self, name: str, key: str, policy: RatePolicy, cost: float = 1.0
    ) -> float | None:
        wait = float(
            await self._run(
                "bucket",
                [f"{self.prefix}tb:{name}:{key}"],
                [repr(float(policy.capacity)), repr(float(policy.refill_per_second)), repr(cost)],
            )
        )
        return None if wait < 0 else wait

    async def hold_session(self, client: str, lease: str, limit: int, ttl: float) -> bool:
        held = await self._run(
            "hold", [f"{self.prefix}sess:{client}"], [lease, int(limit), repr(float(ttl))]
        )
        return int(held) == 1

    async def release_session(self, client: str, lease: str) -> None:
        if self._client is None:
            raise LimitsUnavailable("Redis rate limits are not open")
        from redis.exceptions import RedisError

        try:
            await self._client.zrem(f"{self.prefix}sess:{client}", lease)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def sessions(self, client: str) -> int:
        return int(await self._run("count", [f"{self.prefix}sess:{client}"], []))

    async def __aenter__(self) -> RedisLimits:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
