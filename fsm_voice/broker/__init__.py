"""Token broker: a small service that holds the real API key and hands short-lived ``ek_``
client secrets to authenticated app clients (rate-limited, audited). See
:mod:`fsm_voice.broker.app`. Replicas share rate limits in Redis
(:mod:`fsm_voice.broker.redis_limits`) and a hash-chained audit log in PostgreSQL
(:mod:`fsm_voice.broker.audit_pg`); both need the ``broker-scale`` extra. With
``BrokerConfig(proxy=ProxyConfig(...))`` it also creates Live/Realtime sessions for its clients
and caps them server-side (:mod:`fsm_voice.broker.proxy`)."""

from .app import (
    DEFAULT_UPSTREAM,
    HEALTH_PATH,
    TOKEN_PATH,
    BrokerConfig,
    ClientRegistry,
    TokenBroker,
    hash_secret,
)
from .audit import AuditEntry, AuditLog, AuditStore, VerifyResult, verify_rows, verify_sqlite
from .proxy import ClientProxy, ProxyConfig, SessionLimits
from .ratelimit import LimitStore, LimitsUnavailable, MemoryLimits, RateLimiter, RatePolicy

__all__ = [
    "DEFAULT_UPSTREAM",
    "HEALTH_PATH",
    "TOKEN_PATH",
    "AuditEntry",
    "AuditLog",
    "AuditStore",
    "BrokerConfig",
    "ClientProxy",
    "ClientRegistry",
    "LimitStore",
    "LimitsUnavailable",
    "MemoryLimits",
    "ProxyConfig",
    "RateLimiter",
    "RatePolicy",
    "SessionLimits",
    "TokenBroker",
    "VerifyResult",
    "hash_secret",
    "verify_rows",
    "verify_sqlite",
]
